"""`megadrp report` renders plots and a summary from a recorded metrics file (prune and cpt runs)."""
from __future__ import annotations

import json
import math

from megadrp.eval.report import main, write_report

DOMAINS = ["code", "legal", "literature"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, steps=40, prune=True, truncated_tail=False):
    """A metrics.jsonl as the trainer writes it: train records every step, eval records every 10 steps."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, steps + 1):
        w = [1 / 3 + 0.1 * math.sin(step / 7 + i) for i in range(3)]
        w = [x / sum(w) for x in w]
        rec = {"kind": "train", "step": step, "loss": 3.0 - step / 40, "lm_loss": 2.9 - step / 40,
               "lagrangian": 0.1 / step, "lr": 1e-4, "tokens_per_s": 1500.0 + step, "mfu": 0.31,
               "tokens_seen": step * 8192, "domain_weights": dict(zip(DOMAINS, w)),
               "domain_loss": {d: 2.5 + i * 0.3 - step / 50 for i, d in enumerate(DOMAINS)}}
        if prune:
            target = min(1.0, step / 20) * 0.5
            rec.update({"expected_sparsity": {"head": target * 0.9, "intermediate": target * 1.1, "layer": target / 2},
                        "target_sparsity": {"head": target, "intermediate": target, "layer": target / 2},
                        "lambdas": {"head.lambda1": -0.01 * step, "head.lambda2": 0.002 * step},
                        "expected_params": 134_500_000 * (1 - target)})
        lines.append(json.dumps(rec))
        if step % 10 == 0:
            lines.append(json.dumps({"kind": "eval", "step": step,
                                     "eval_loss": {d: 2.6 + i * 0.3 - step / 60 for i, d in enumerate(DOMAINS)},
                                     "eval_bpb": {d: 1.0 + i * 0.2 - step / 200 for i, d in enumerate(DOMAINS)}}))
    text = "\n".join(lines) + "\n"
    if truncated_tail:
        text += '{"kind": "train", "step": 41, "lo'
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 8_000, path


def test_prune_run_report(tmp_path):
    run = write_run(tmp_path / "run", truncated_tail=True)
    eval_json = {"models": {"source": {"domains": {"code": {"loss": 1.1, "perplexity": 3.0, "bits_per_byte": 0.7421}},
                                       "average": {"loss": 1.1, "perplexity": 3.0, "bits_per_byte": 0.7421},
                                       "worst": {"domain": "code", "loss": 1.1, "bits_per_byte": 0.7421}}}}
    (run / "eval.json").write_text(json.dumps(eval_json))
    assert main([str(run)]) == 0
    report = run / "report"
    names = {"domain_weights", "domain_loss", "loss", "sparsity", "lambdas", "throughput", "eval_loss", "eval_bpb"}
    assert {p.stem for p in report.glob("*.png")} == names
    for name in names:
        assert_png(report / f"{name}.png")
    summary = (report / "summary.md").read_text()
    assert "| final step | 40 |" in summary and "| tokens seen | 327,680 |" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| literature | "))
    assert row.endswith("| 2.3000 | 2.5333 | 1.2000 |")  # train 3.1 - 40/50, eval 3.2 - 40/60, bpb 1.4 - 40/200
    assert "| intermediate | 0.5500 | 0.5000 |" in summary
    assert "1 unreadable line" in summary
    assert "0.7421" in summary and "(code)" in summary  # eval.json's table
    assert "![Throughput](throughput.png)" in summary


def test_cpt_run_without_masks_or_eval(tmp_path):
    run = tmp_path / "cpt"
    write_run(run, steps=5, prune=False)
    text = "\n".join(line for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' not in line)
    (run / "metrics.jsonl").write_text(text + "\n")
    summary = write_report(run, tmp_path / "out")
    pngs = {p.stem for p in (tmp_path / "out").glob("*.png")}
    assert pngs == {"domain_weights", "domain_loss", "loss", "throughput"}
    assert "Mask families" not in summary.read_text() and "| final step | 5 |" in summary.read_text()


def test_missing_or_empty_metrics_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text("\n")
    assert main([str(tmp_path)]) == 2
    assert "no train or eval record" in capsys.readouterr().err
