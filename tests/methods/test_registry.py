"""The method registry (megadrp.methods): one spec per method, and everything outside a method reads the spec.

A method registered from outside the package must be a valid ``mode``, a ``megadrp`` subcommand, and train
through the real trainer, with its spec's model-card sentence recorded in the checkpoint and on the exported
card: that is what "adding a method is one new file" needs. DReSS selects in calibration, so a resumed run
restores its selection instead of scoring the model again.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megadrp.config import ConfigError, load_config
from megadrp.methods import METHODS, Mode, get_method, method_for
from megadrp.methods.spec import MethodSpec
from tests.helpers.train_runs import make_workspace, write_config


def test_the_registry_names_every_method_once_and_unknown_modes_are_refused():
    assert list(METHODS) == ["prune", "cpt", "dress", "oneshot"]
    assert [s.name for s in METHODS.values()] == list(METHODS)
    assert {n for n, s in METHODS.items() if s.trains} == {"prune", "cpt", "dress"}
    assert METHODS["oneshot"].main is not None and METHODS["prune"].masked_forward
    with pytest.raises(ConfigError) as info:
        get_method("shrink")
    assert info.value.field_path == "mode" and "prune, cpt, dress, oneshot" in str(info.value)
    with pytest.raises(ConfigError, match="distill.teacher"):  # cpt's own rule runs when it is looked up
        method_for(load_config(None, ["mode=cpt", "distill.alpha=0.5"]))


def test_the_cli_and_the_config_reference_list_the_registered_methods(capsys, monkeypatch):
    from megadrp.cli import config_main, main

    monkeypatch.setitem(METHODS, "mine", MethodSpec(name="mine", summary="A method of my own.", card="mine",
                                                    mode=Mode))
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "mine" in out and "A method of my own." in out and "oneshot" in out
    assert config_main([]) == 0
    assert "Registered: prune, cpt, dress, oneshot, mine." in capsys.readouterr().out


class _DecayMode(Mode):
    """A new method: dense training plus a scheduled extra loss term (state: the steps it ran)."""

    name = "decay"

    def setup(self, ctx):
        super().setup(ctx)
        self.counter = self.parts.register("decay_steps", _Counter())

    def loss_terms(self, step, micro_step):
        return {"decay": torch.tensor(1e-3 * step, device=self.ctx.device)}

    def after_step(self, step):
        self.counter.n += 1


class _Counter:
    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = int(state["n"])


DECAY = MethodSpec(name="decay", summary="Dense training with an extra term.", card="decay, reweighting: {dro}",
                   mode=_DecayMode)
# Code outside the package registers its method, then runs the ordinary command line (in its own process: a run
# sets the rendezvous environment and signal handlers of the process it runs in).
_REGISTER_AND_RUN = """
import sys
from megadrp.cli import main
from megadrp.methods import register
from tests.methods.test_registry import DECAY
register(DECAY)
sys.exit(main(sys.argv[1:]))
"""


def test_a_method_registered_from_outside_trains_through_the_cli(tmp_path):
    import subprocess
    import sys

    from megadrp import run_format
    from megadrp.export.api import export_checkpoint
    from tests.helpers.train_runs import REPO, read_metrics, run_env

    ws = make_workspace(tmp_path)
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, ws, run_dir, mode="decay", optim={"max_steps": 2, "micro_batch_size": 2},
                          checkpoint={"save_interval": 2})
    proc = subprocess.run([sys.executable, "-c", _REGISTER_AND_RUN, "decay", "--config", str(config)], cwd=REPO,
                          env=run_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    train = read_metrics(run_dir)
    assert [r["step"] for r in train] == [1, 2] and [r["decay"] for r in train] == pytest.approx([1e-3, 2e-3])
    state = run_format.read_state(run_dir / "checkpoints" / "step_2")
    assert state["mode"] == "decay" and state["mode_state"] == {"decay_steps": {"n": 2}}
    assert state["method_card"] == "decay, reweighting: drpruning"
    card = (export_checkpoint(run_dir, tmp_path / "exp", dtype="float32", progress=False) / "README.md").read_text()
    assert "- Method: decay, reweighting: drpruning." in card  # the spec's sentence, from the checkpoint alone
    assert "- The dense weights as trained" in card  # no masks were folded, no units selected


def test_dress_selects_in_calibration_and_a_resume_restores_the_selection(tmp_path, monkeypatch):
    import megadrp.methods.dress as dress_mod
    from megadrp.data import load_domain_datasets
    from megadrp.model import load_pretrained
    from megadrp.trainer.context import RunContext
    from megadrp.trainer.dist import DataParallelGroup

    ws = make_workspace(tmp_path)
    cfg = load_config(str(write_config(tmp_path, ws, tmp_path / "run", mode="dress",
                                       dress={"calibration_batches": 2, "regularize_steps": 4})))
    model = load_pretrained(ws["model"])
    inputs = SimpleNamespace(shape=model.shape, family=model.family,
                             datasets=load_domain_datasets(cfg.data.prefix, cfg.data.domains))
    ctx = RunContext(cfg=cfg, inputs=inputs, device=torch.device("cpu"), group=DataParallelGroup(),
                     engine=SimpleNamespace(module=model))
    scored = []
    real = dress_mod.score_units
    monkeypatch.setattr(dress_mod, "score_units", lambda *a, **k: scored.append(1) or real(*a, **k))

    fresh = get_method("dress").mode()
    fresh.setup(ctx)
    assert scored == [] and fresh.masks is None  # set-up decides nothing yet
    fresh.calibrate(None)
    assert scored == [1] and fresh.masks["intermediate"].shape == (4, 128)
    saved = fresh.state_dict()
    fresh.reg.detach()

    resumed = get_method("dress").mode()
    resumed.setup(ctx)
    resumed.load_state_dict(saved)
    assert scored == [1]  # the resumed run did not score the model again
    assert all(torch.equal(resumed.masks[k], saved["dress_masks"][k]) for k in saved["dress_masks"])
    resumed.reg.detach()
