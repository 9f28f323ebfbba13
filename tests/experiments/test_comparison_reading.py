"""The comparison's reading (experiments/comparison.py): a difference inside the seed range is no difference,
and each paper's claim is read from the right table, in the right direction."""
from __future__ import annotations

import pytest

from experiments import comparison as cmp


def _result(bits: dict[str, float]) -> dict:
    """One model's eval.json entry for domain -> bits per byte."""
    worst = max(bits, key=bits.get)
    avg = sum(bits.values()) / len(bits)
    return {"domains": {d: {"bits_per_byte": v} for d, v in bits.items()},
            "average": {"bits_per_byte": avg}, "worst": {"domain": worst, "bits_per_byte": bits[worst]}}


def _runs(per_method: dict[str, list[dict[str, float]]], which: str) -> dict:
    return {m: {seed: {which: _result(b)} for seed, b in enumerate(seeds, 1)} for m, seeds in per_method.items()}


def test_summary_mean_and_range_over_seeds():
    runs = _runs({"a": [{"x": 1.0, "y": 3.0}, {"x": 1.2, "y": 2.0}]}, "final")
    s = cmp.summarize(runs, ["x", "y"], "final")["a"]
    assert s["x"]["mean"] == 1.1 and abs(s["x"]["range"] - 0.2) < 1e-12
    assert s["worst"]["values"] == [3.0, 2.0] and s["worst_domains"] == ["y", "y"]
    assert s["average"]["mean"] == (2.0 + 1.6) / 2


def test_a_difference_within_the_seed_range_is_no_difference():
    runs = _runs({"drpruning": [{"x": 2.0}, {"x": 2.4}], "sheared": [{"x": 2.3}, {"x": 2.5}]}, "final")
    summary = cmp.summarize(runs, ["x"], "final")
    sign, verdict = cmp.compare(summary, "drpruning", "sheared", "worst")
    assert sign == 0 and "no difference" in verdict and "0.400" in verdict  # range 0.4 > |2.2 - 2.4|
    runs = _runs({"drpruning": [{"x": 2.0}, {"x": 2.1}], "sheared": [{"x": 2.4}, {"x": 2.5}]}, "final")
    sign, verdict = cmp.compare(cmp.summarize(runs, ["x"], "final"), "drpruning", "sheared", "worst")
    assert sign == -1 and verdict.startswith("drpruning better than sheared by 0.400")
    assert "per seed drpruning - sheared: -0.400, -0.400 (2/2 lower)" in verdict  # same seeds: paired evidence
    # lower on every seed, but by less than the seed range: still no difference (the evidence is shown)
    runs = _runs({"dress": [{"x": 2.00}, {"x": 2.30}], "oneshot": [{"x": 2.05}, {"x": 2.35}]}, "final")
    sign, verdict = cmp.compare(cmp.summarize(runs, ["x"], "final"), "dress", "oneshot", "average")
    assert sign == 0 and "(2/2 lower)" in verdict


def test_one_seed_gives_no_verdict():
    # a run cut short by its time limit may hold one seed of a method: a range of 0 must not turn any
    # difference into a finding
    runs = _runs({"drpruning": [{"x": 2.0}], "uniform": [{"x": 2.5}, {"x": 2.6}]}, "final")
    sign, verdict = cmp.compare(cmp.summarize(runs, ["x"], "final"), "drpruning", "uniform", "worst")
    assert sign == 0
    assert verdict == "drpruning vs uniform: -0.550 bits/byte on one seed, no seed range to judge it by: no verdict"


def test_claims_read_each_table_in_the_papers_direction():
    # before recovery DReSS wins clearly; after recovery the direct cut wins; on unseen domains DRPruning
    # is within noise of uniform; claims whose methods did not run are left out
    cut = _runs({"dress": [{"x": 2.00}, {"x": 2.01}], "oneshot": [{"x": 2.10}, {"x": 2.11}]}, "cut")
    final = _runs({"dress": [{"x": 1.90}, {"x": 1.91}], "oneshot": [{"x": 1.80}, {"x": 1.81}]}, "final")
    unseen = _runs({"drpruning": [{"u": 3.0}, {"u": 3.5}], "uniform": [{"u": 3.2}, {"u": 3.3}]}, "unseen")
    summaries = {"cut": cmp.summarize(cut, ["x"], "cut"), "final": cmp.summarize(final, ["x"], "final"),
                 "unseen": cmp.summarize(unseen, ["u"], "unseen")}
    lines = cmp.claims(summaries)
    by_text = {line.split(": **")[0][2:]: line for line in lines}
    assert "**supported**" in by_text["DReSS: regularise-then-cut beats the direct cut (before recovery)"]
    assert "**contrary**" in by_text["DReSS: regularise-then-cut beats the direct cut (after the same recovery)"]
    assert "**not shown**" in by_text["DRPruning: a better worst unseen domain than uniform mixing"]
    assert not any("Sheared-LLaMA" in line for line in lines)  # sheared did not run
    assert len(lines) == 4


def test_weight_motion_tells_a_trend_from_noise():
    """results.md's "following the model or the sampling": weights moving steadily one way read straightness 1,
    weights jumping back and forth around a level read near 0, at the same size of step."""
    from experiments.comparison import motion_table, weight_motion

    trend = [{"phase": "cpt", "step": s, "weights": {"a": 0.5 * 1.2 ** s, "b": 1 - 0.5 * 1.2 ** s}}
             for s in range(4)]
    noise = [{"phase": "cpt", "step": s, "weights": {"a": 0.5 * 1.2 ** (s % 2), "b": 1 - 0.5 * 1.2 ** (s % 2)}}
             for s in range(5)]
    t, n = weight_motion(trend)["cpt"], weight_motion(noise)["cpt"]
    assert t["updates"] == 3 and t["straightness"] == pytest.approx(1.0)
    assert n["straightness"] < 0.3 and n["step"] > 0.1
    table = motion_table({"drpruning": {1: {"weights": trend}, 2: {"weights": trend}}, "uniform": {1: {}}})
    assert "| drpruning | cpt | 3 |" in table and "1.00 |" in table and "uniform" not in table
