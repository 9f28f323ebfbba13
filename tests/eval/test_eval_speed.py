"""`megadrp eval --speed`: each model's prefill and decode speed and peak memory, measured in its own process, in
eval.json and as a table of ratios to the source in eval.md (megadrp/eval/speed.py, megadrp/eval_results.py)."""
from __future__ import annotations

import json
import math

import pytest

from megadrp.eval.cli import main
from megadrp.eval_results import speed_table
from tests.helpers.model_folders import TEXTS, build_model_folder, write_corpus


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    big, _ = build_model_folder(root / "source", seed=0, num_layers=4)
    small, _ = build_model_folder(root / "pruned", seed=1, num_layers=1)
    write_corpus(root / "corpus", TEXTS)
    return root, big, small


def test_speed_and_memory_of_every_model_beside_its_quality(models, tmp_path):
    root, big, small = models
    out, md = tmp_path / "eval.json", tmp_path / "eval.md"
    rc = main(["--model", f"source={root / 'source'}", f"pruned={root / 'pruned'}", "--corpus", str(root / "corpus"),
               "--seq-length", "16", "--max-windows", "1", "--device", "cpu", "--speed", "--output", str(out),
               "--markdown", str(md)])
    assert rc == 0
    data = json.loads(out.read_text())["models"]
    for label, model in (("source", big), ("pruned", small)):
        res = data[label]
        sp = res["speed"]
        assert "domains" in res  # quality and speed of the same model, side by side
        assert sp["device"] == "cpu" and sp["dtype"] == "float32" and sp["machine"]["cpu"]
        assert sp["prefill"]["batch"] == 2 and sp["prefill"]["tokens"] == 128 and sp["prefill"]["tokens_per_s"] > 0
        assert [d["batch"] for d in sp["decode"]] == [1, 4]
        for d in sp["decode"]:  # throughput over the batch and the per-step latency are one measurement
            assert math.isclose(d["tokens_per_s"] * d["ms_per_token"], 1000 * d["batch"], rel_tol=1e-9)
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        assert sp["weights_mb"] == pytest.approx(weights)
        assert sp["peak_memory_kind"] == "process peak RSS" and sp["peak_memory_mb"] > weights
        embed = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
        assert res["non_embedding_params"] == sum(p.numel() for p in model.parameters()) - embed
    table = md.read_text()
    assert "## Speed and memory" in table and "Measured on CPU" in table
    src_row = next(line for line in table.splitlines() if line.startswith("| source | ") and "M (" in line)
    pruned_row = next(line for line in table.splitlines() if line.startswith("| pruned | ") and "M (" in line)
    assert src_row.count("(1.00x)") == 7
    ratio = data["pruned"]["non_embedding_params"] / data["source"]["non_embedding_params"]
    assert f"({ratio:.2f}x)" in pruned_row and 0.25 < ratio < 0.26  # 1 of 4 identical layers, and the final norm


def test_speed_table_ratios_are_to_the_source_whatever_its_column():
    def speed(prefill, decode1, decode4, peak, weights):
        return {"prefill": {"batch": 2, "tokens": 128, "tokens_per_s": prefill}, "dtype": "float32",
                "decode": [{"batch": 1, "prompt_tokens": 16, "new_tokens": 16, "tokens_per_s": decode1,
                            "ms_per_token": 1000 / decode1},
                           {"batch": 4, "prompt_tokens": 16, "new_tokens": 16, "tokens_per_s": decode4,
                            "ms_per_token": 4000 / decode4}],
                "peak_memory_mb": peak, "weights_mb": weights, "peak_memory_kind": "process peak RSS",
                "machine": {"cpu": "Test CPU", "cores": 2, "torch_threads": 1}}

    results = {"pruned": {"non_embedding_params": 60_000_000, "speed": speed(150, 6.0, 20.0, 600, 300)},
               "source": {"non_embedding_params": 100_000_000, "speed": speed(100, 8.0, 16.0, 800, 500)}}
    rows = {line.split(" | ")[0]: line for line in speed_table(results).splitlines() if line.startswith("| ")}
    pruned = rows["| pruned"]
    for cell in ("60.0M (0.60x)", "150 (1.50x)", "6.0 (0.75x)", "166.7 (1.33x)", "20.0 (1.25x)", "600 (0.75x)",
                 "300 (0.60x)"):
        assert cell in pruned, (cell, pruned)
    assert "Test CPU (2 cores, 1 torch threads)" in speed_table(results)
    assert speed_table({"source": {"domains": {}}}) == ""  # nothing measured: no table
