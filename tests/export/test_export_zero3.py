"""Export from real ZeRO-3 checkpoints: 2 gloo ranks and 1 rank export the same model; bad checkpoints are refused.

The checkpoints are written by DeepSpeed itself (deepspeed.initialize + one training step + save_checkpoint)
in torchrun subprocesses, plus megadrp's state, tokenizer/ and the manifest as docs/ARCHITECTURE.md specifies. Run as a
script, this file is that worker.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megadrp import run_format

TARGET = {"hidden_size": 48, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 96,
          "num_hidden_layers": 3}
DS_CONFIG = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "steps_per_print": 10 ** 9,
             "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
             "zero_allow_untested_optimizer": True, "wall_clock_breakdown": False}


def _write_checkpoint(src: str, run_dir: str, masks_file: str) -> None:
    """Worker: one masked training step under ZeRO-3 (torch AdamW), then a checkpoint as the trainer writes it."""
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist
    import torch.nn.functional as F

    from megadrp.config import to_dict
    from megadrp.config.schema import RunConfig, TargetShape
    from megadrp.masks import MaskSet
    from megadrp.model import load_pretrained

    # gloo on CPU; DeepSpeed would JIT-compile its shared-memory all-reduce op at every start (45-50 s).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    model = load_pretrained(src)
    shape = model.shape
    maskset = MaskSet(shape, TargetShape(**TARGET))
    maskset.load_state_dict(torch.load(masks_file))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=DS_CONFIG,
                                           dist_init_required=False)
    tokens = torch.randint(0, shape.vocab_size, (1, 17), generator=torch.Generator().manual_seed(11))
    logits = engine(tokens[:, :-1], maskset.deterministic())  # same batch on every rank: same mean gradient
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    engine.backward(loss)
    engine.step()
    ckpt_root = Path(run_dir) / "checkpoints"
    engine.save_checkpoint(str(ckpt_root), tag="step_1")  # also writes checkpoints/latest = "step_1"
    if dist.get_rank() == 0:
        cfg = RunConfig()
        cfg.model.path = src
        cfg.pruning.target = TargetShape(**TARGET)
        cfg.data.domains = ["web", "code"]
        state = {"step": 1, "mode": "prune", "config": to_dict(cfg), "family": "llama",
                 "source_shape": shape.to_dict(), "mode_state": {"masks": maskset.state_dict(), "lagrangian": {}},
                 "reweighter": {}, "sampler": {}, "rng": {}, "tokens_seen": 16,
                 "domain_weights": torch.tensor([0.75, 0.25]), "wandb_run_id": None}
        shutil.copytree(src, ckpt_root / "step_1" / "tokenizer",
                        ignore=shutil.ignore_patterns("*.safetensors", "config.json", "generation_config.json"))
        rewrite_state(ckpt_root / "step_1", state)
    dist.barrier()


def rewrite_state(ckpt: Path, state: dict) -> None:
    """megadrp's state (run format) and a fresh checksum manifest, as the trainer's save writes them."""
    from megadrp import run_format

    run_format.write_state(ckpt, state)
    run_format.write_manifest(ckpt, {n: run_format.file_digest(ckpt / n) for n in run_format.manifest_files(ckpt)})


def _run_writer(nproc: int, src: Path, run_dir: Path, masks_file: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           __file__, str(src), str(run_dir), str(masks_file)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(source folder, 2-rank run dir, 1-rank run dir) sharing source weights and learned masks."""
    from megadrp.config.schema import TargetShape
    from megadrp.masks import MaskSet
    from megadrp.model import read_shape
    from tests.helpers.tiny_models import make_tiny_hf_model

    base = tmp_path_factory.mktemp("zero3")
    src = make_tiny_hf_model(base, "llama", num_attention_heads=4, num_key_value_heads=2, seed=2)
    shape, _ = read_shape(src)
    maskset = MaskSet(shape, TargetShape(**TARGET))
    with torch.no_grad():  # "learned" masks: random log_alpha, so deterministic masks carry soft values
        g = torch.Generator().manual_seed(5)
        for p in maskset.log_alpha.values():
            p.copy_(torch.randn(p.shape, generator=g) * 2.0)
    torch.save(maskset.state_dict(), base / "masks.pt")
    for nproc in (2, 1):
        _run_writer(nproc, src, base / f"run{nproc}", base / "masks.pt")
    return src, base / "run2", base / "run1"


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_two_rank_checkpoint_exports_like_one_rank(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from megadrp.export import export_checkpoint, load_checkpoint_for_export
    from megadrp.export.api import masks_from_state
    from megadrp.model import MaskedCausalLM, ModelShape, read_hf_state_dict

    src, run2, run1 = runs
    assert len(list((run2 / "checkpoints" / "step_1").glob("*optim_states.pt"))) == 2
    out2 = export_checkpoint(run2, tmp_path / "out2", dtype="float32", progress=False)  # RUN_DIR via latest
    out1 = export_checkpoint(run1 / "checkpoints" / "step_1", tmp_path / "out1", dtype="float32", progress=False)
    t2, t1 = _tensors(out2), _tensors(out1)
    assert t2.keys() == t1.keys()
    for k in t2:
        torch.testing.assert_close(t2[k], t1[k], rtol=0, atol=1e-6)

    # The export is of the trained weights (not the source's), and matches the masked model on them.
    sd, state = load_checkpoint_for_export(run2)
    source = ModelShape.from_dict(state["source_shape"])
    src_sd = read_hf_state_dict(src)
    assert not torch.allclose(sd["layers.0.mlp.up_weight"], src_sd["model.layers.0.mlp.up_proj.weight"])
    model = MaskedCausalLM(source, "llama")
    model.load_state_dict(sd)
    masks = masks_from_state(state, source)
    hf = AutoModelForCausalLM.from_pretrained(out2, dtype=torch.float32).eval()
    ids = torch.randint(0, source.vocab_size, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (hf(ids).logits - model.eval()(ids, masks)).abs().max().item() <= 1e-4
    cfg = hf.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size,
            cfg.num_hidden_layers, cfg.head_dim) == (48, 2, 1, 96, 3, 16)
    assert sum(p.numel() for p in hf.parameters()) == source.replace(**TARGET).num_params()

    card = (out2 / "README.md").read_text()
    assert "| web | 0.7500 |" in card and "tokens seen: 16" in card and "drpruning" in card
    assert (out2 / "tokenizer.json").is_file()


def test_cli_export_with_eval_table(runs, tmp_path):
    from megadrp.cli import main

    _, run2, _ = runs
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"domains": {"web": {"bits_per_byte": 1.25, "loss": 2.5, "perplexity": 12.2}},
                                     "average": {"bits_per_byte": 1.25, "loss": 2.5, "perplexity": 12.2},
                                     "worst": {"domain": "web", "bits_per_byte": 1.25, "loss": 2.5}}))
    assert main(["export", str(run2), "--output", str(tmp_path / "cli"), "--eval-json", str(eval_json),
                 "--no-progress"]) == 0
    card = (tmp_path / "cli" / "README.md").read_text()
    assert "## Evaluation" in card and "1.2500" in card
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["dtype"] == "bfloat16"


def test_cli_push_failure_keeps_export_and_hides_token(runs, tmp_path, monkeypatch, capsys):
    """`--push-to-hub` offline: huggingface_hub's request fails, rc 1 with a retry hint, the token shown nowhere."""
    from megadrp.cli import main

    secret = "hf_notARealTokenButSecret456"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, _, run1 = runs
    rc = main(["export", str(run1), "--output", str(tmp_path / "pushed"), "--push-to-hub", "me/tiny",
               "--private", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1 and "upload to me/tiny failed" in captured.err and "hf upload me/tiny" in captured.err
    assert secret not in captured.out + captured.err
    assert (tmp_path / "pushed" / "config.json").is_file()


def test_refuses_masks_that_cannot_reach_the_target(runs, tmp_path):
    from megadrp.export import ExportError, export_checkpoint

    _, _, run1 = runs
    bad = tmp_path / "bad" / "checkpoints" / "step_1"
    shutil.copytree(run1 / "checkpoints" / "step_1", bad)
    state = run_format.read_state(bad)
    del state["mode_state"]["masks"]["log_alpha.hidden"]  # a family the target needs is missing
    rewrite_state(bad, state)
    with pytest.raises(ExportError, match=r"hidden_size: target 48 of the source's 64 needs a 'hidden' mask"):
        export_checkpoint(bad, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


def test_dense_cpt_checkpoint_converts_without_pruning(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from megadrp.export import export_checkpoint, load_checkpoint_for_export
    from megadrp.model import MaskedCausalLM, ModelShape

    _, _, run1 = runs
    cpt = tmp_path / "cpt" / "checkpoints" / "step_1"
    shutil.copytree(run1 / "checkpoints" / "step_1", cpt)
    state = run_format.read_state(cpt)
    state.update(mode="cpt", masks=None, mode_state={})  # as a cpt run writes it: no masks, no method state
    rewrite_state(cpt, state)
    out = export_checkpoint(cpt, tmp_path / "dense", dtype="float32", progress=False)
    sd, _ = load_checkpoint_for_export(cpt)
    model = MaskedCausalLM(ModelShape.from_dict(state["source_shape"]), "llama").eval()
    model.load_state_dict(sd)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.hidden_size == 64 and hf.config.num_hidden_layers == 4
    ids = torch.randint(0, 512, (1, 11), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() <= 1e-5


def test_refuses_missing_shards_and_non_checkpoints(runs, tmp_path):
    from megadrp.export import ExportError, load_checkpoint_for_export

    _, run2, _ = runs
    partial = tmp_path / "partial" / "step_1"
    shutil.copytree(run2 / "checkpoints" / "step_1", partial)
    next(partial.glob("*rank_1_*optim_states.pt")).unlink()  # one rank's shard lost in a copy
    with pytest.raises(ExportError, match="rank_1_mp_rank_00_optim_states.pt is missing"):  # named by the manifest
        load_checkpoint_for_export(partial)
    with pytest.raises(ExportError, match="not a megadrp checkpoint"):
        load_checkpoint_for_export(tmp_path)


if __name__ == "__main__":
    _write_checkpoint(*sys.argv[1:4])
