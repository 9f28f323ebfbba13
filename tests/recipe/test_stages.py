"""The pipelines' stage cache (megadrp/recipe/stages.py): a finished stage is reused only for the recipe
that made it; another recipe stops the pipeline and names the difference instead of reusing or extending it."""
from __future__ import annotations

import pytest

from megadrp.recipe import stages as pl


def test_a_stage_is_reused_only_for_its_own_recipe(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("mode: prune\noptim: {lr: 3.0e-4}\n")
    run_dir = str(tmp_path / "runs" / "uniform" / "seed1" / "prune")
    first = pl.recipe("prune", str(config), ["dro.method=constant", "pruning.target={intermediate_size: 880}"])
    pl.check_recipe(run_dir, first)  # nothing recorded yet: a new stage
    pl.record_recipe(run_dir, first)
    assert (tmp_path / "runs" / "uniform" / "seed1" / "prune.stage.json").exists()
    pl.check_recipe(run_dir, pl.recipe("prune", str(config), list(first["overrides"])))  # the same recipe

    extreme = pl.recipe("prune", str(config), ["dro.method=constant", "pruning.target={hidden_size: 384}"])
    with pytest.raises(pl.StageFailed) as err:
        pl.check_recipe(run_dir, extreme)
    msg = str(err.value)
    assert "hidden_size: 384" in msg and "intermediate_size: 880" in msg and "--run-dir" in msg

    config.write_text("mode: prune\noptim: {lr: 1.0e-3}\n")  # the recipe file's content changed
    with pytest.raises(pl.StageFailed, match="config_sha256"):
        pl.check_recipe(run_dir, pl.recipe("prune", str(config), list(first["overrides"])))


def test_megadrp_run_records_only_what_differs_from_the_defaults(tmp_path):
    """A later megadrp that adds a config field at its default reuses the finished stages; a changed field is named."""
    defaults = {"optim": {"lr": 1e-4, "max_steps": 100}, "stages": {"cut": "oneshot"}, "model": {"path": ""}}
    resolved = {"optim": {"lr": 3e-4, "max_steps": 40}, "stages": {"cut": "prune"}, "model": {"path": "m"}}
    first = pl.resolved_recipe("prune", resolved, defaults)
    assert first == {"mode": "prune", "config.optim.lr": 3e-4, "config.model.path": "m"}  # steps, stages: not recipe
    out = str(tmp_path / "prune")
    pl.record_recipe(out, first)
    newer = {**defaults, "optim": {**defaults["optim"], "spike_guard": "stop"}}  # a new field, at its default
    pl.check_recipe(out, pl.resolved_recipe("prune", {**resolved, "optim": {**resolved["optim"],
                                                                            "spike_guard": "stop"}}, newer))
    with pytest.raises(pl.StageFailed, match=r"config.optim.lr: 0.0003 -> 0.001"):
        pl.check_recipe(out, pl.resolved_recipe("prune", {**resolved, "optim": {"lr": 1e-3}}, defaults))
