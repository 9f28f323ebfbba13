"""End to end with the real trainer: `megadrp prune` (ZeRO-3, 1 rank, 2 steps) writes a checkpoint, `megadrp export`
turns it into a folder whose logits in stock transformers equal the trained masked model's deterministic-mask logits,
and whose tokenizer keeps the source's chat template and generation config with the source folder gone.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers.train_runs import REPO, free_port, make_workspace, run_env, write_config


def test_trainer_checkpoint_exports_to_the_masked_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from megadrp.cli import main
    from megadrp.export import load_checkpoint_for_export
    from megadrp.export.api import masks_from_state
    from megadrp.model import MaskedCausalLM, ModelShape

    ws = make_workspace(tmp_path)
    template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}<|endoftext|>{% endfor %}"
    (Path(ws["model"]) / "chat_template.jinja").write_text(template)  # an Instruct-style source
    cfg = write_config(tmp_path, ws, tmp_path / "run", optim={"max_steps": 2, "micro_batch_size": 2,
                                                               "gradient_accumulation_steps": 1, "lr": 1e-3},
                       checkpoint={"save_interval": 2, "keep_last": 1})
    env = run_env(tmp_path, RANK=0, LOCAL_RANK=0, WORLD_SIZE=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    res = subprocess.run([sys.executable, "-m", "megadrp", "prune", "--config", str(cfg), "--nproc", "1"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    Path(ws["model"]).rename(tmp_path / "source_moved")  # the checkpoint alone carries tokenizer and template
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "run"), "--output", str(out), "--dtype", "float32", "--no-progress"]) == 0
    sd, state = load_checkpoint_for_export(tmp_path / "run")
    source = ModelShape.from_dict(state["source_shape"])
    model = MaskedCausalLM(source, state["family"]).eval()
    model.load_state_dict(sd)
    masks = masks_from_state(state, source)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, source.vocab_size, (2, 15), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids, masks)).abs().max().item() <= 1e-4
    c = hf.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
            c.num_hidden_layers) == (48, 2, 1, 64, 3)
    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(out).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<s>user: hi<|endoftext|>"
    gen = "generation_config.json"
    assert (out / gen).read_bytes() == (tmp_path / "source_moved" / gen).read_bytes()
    card = (Path(out) / "README.md").read_text()
    assert "Checkpoint step: 2" in card and "| prose |" in card and "| code |" in card
