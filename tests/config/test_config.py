"""Config loading, dotted overrides, validation errors and the DeepSpeed JSON checks."""
import json
import os

import pytest
import yaml

from megadrp.config import (
    ConfigError,
    OptimConfig,
    RunConfig,
    check_deepspeed_json,
    describe,
    load_config,
    save_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_yaml(tmp_path, data):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_yaml_and_overrides_are_typed(tmp_path):
    path = write_yaml(tmp_path, {"mode": "cpt", "optim": {"lr": 3e-4, "max_steps": 10},
                                 "pruning": {"target": {"hidden_size": 384}}})
    cfg = load_config(path, ["optim.lr=1e-3", "pruning.target.num_hidden_layers=24", "data.domains=[a, b]",
                             "model.activation_checkpointing=true"])
    assert cfg.mode == "cpt"
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.max_steps == 10
    assert cfg.pruning.target.hidden_size == 384 and cfg.pruning.target.num_hidden_layers == 24
    assert cfg.data.domains == ["a", "b"]
    assert cfg.model.activation_checkpointing is True


def test_defaults_validate():
    RunConfig().check()


@pytest.mark.parametrize("override, field, words", [
    ("optim.lr=fast", "optim.lr", "number"),
    ("optim.max_steps=0", "optim.max_steps", "> 0"),
    ("optim.max_steps=1.5", "optim.max_steps", "integer"),
    ("dro.method=magic", "dro.method", "constant, sheared, drpruning"),
    ("dro.min_ratio=1.5", "dro.min_ratio", "[0, 1)"),
    ("dro.rho=-1", "dro.rho", "> 0"),
    ("pruning.warmup_fraction=2", "pruning.warmup_fraction", "[0, 1]"),
    ("pruning.target.hidden_size=-5", "pruning.target.hidden_size", "> 0"),
    ("model.activation_checkpointing=maybe", "model.activation_checkpointing", "true or false"),
    ("data.domains=code", "data.domains", "list"),
    ("logging.wandb_mode=loud", "logging.wandb_mode", "offline"),
    ("export.dtype=int3", "export.dtype", "float32"),
    ("optim.warmup_steps=5000", "optim.warmup_steps", "below optim.max_steps"),
])
def test_each_validation_error_names_field_value_and_rule(override, field, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert info.value.field_path == field
    assert f"'{field}'" in message and words in message
    assert override.split("=", 1)[1].split(".")[0] in message or "<" in message


def test_heads_must_be_multiple_of_groups():
    with pytest.raises(ConfigError, match="multiple of num_key_value_heads"):
        load_config(None, ["pruning.target.num_attention_heads=6", "pruning.target.num_key_value_heads=4"])


def test_reference_losses_need_one_per_domain():
    with pytest.raises(ConfigError, match="one loss per domain"):
        load_config(None, ["data.domains=[a, b, c]", "dro.reference_losses=[1.0, 2.0]"])


def test_unknown_field_suggests_the_close_one(tmp_path):
    with pytest.raises(ConfigError, match="did you mean pruning"):
        load_config(write_yaml(tmp_path, {"prunning": {}}))
    with pytest.raises(ConfigError, match="did you mean hidden_size"):
        load_config(None, ["pruning.target.hiden_size=3"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["optim.lr"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=2e-4", "data.domains=[x, y]", "pruning.target.intermediate_size=64"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, str(out))
    assert load_config(str(out)) == cfg


def test_every_field_is_documented():
    rows = describe()
    assert len(rows) > 50
    undocumented = [name for name, _, help_text in rows if len(help_text.strip()) < 10]
    assert not undocumented


def test_shipped_recipes_load():
    configs = os.path.join(ROOT, "configs")
    # run recipes carry a top-level `mode`; other YAML there (corpus_sources.yaml) is not a RunConfig
    recipes = [f for f in os.listdir(configs)
               if f.endswith(".yaml") and "mode" in (yaml.safe_load(open(os.path.join(configs, f))) or {})]
    assert len(recipes) >= 5
    for name in recipes:
        load_config(os.path.join(configs, name))


@pytest.mark.parametrize("name", ["zero3_bf16.json", "zero3_bf16_offload.json", "zero2_bf16.json", "zero3_cpu.json"])
def test_shipped_deepspeed_configs_resolve(name):
    precision = "fp32" if "cpu" in name else "bf16"
    ds = check_deepspeed_json(os.path.join(ROOT, "ds_configs", name), OptimConfig(micro_batch_size=2,
                              gradient_accumulation_steps=4), precision, world_size=8)
    assert ds["train_batch_size"] == 64 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 4 and ds["zero_optimization"]["stage"] in (2, 3)


def test_recipes_name_shipped_deepspeed_configs_from_any_directory(tmp_path, monkeypatch):
    """`ds_configs/NAME.json` is package data: found from another working directory (and a wheel install)."""
    monkeypatch.chdir(tmp_path)
    ds = check_deepspeed_json("ds_configs/zero3_cpu.json", OptimConfig(micro_batch_size=2), "fp32", world_size=1)
    assert ds["zero_optimization"]["stage"] == 3
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "zero3_cpu.json").write_text('{"zero_optimization": {"stage": 2}}')
    ds = check_deepspeed_json("ds_configs/zero3_cpu.json", OptimConfig(micro_batch_size=2), "fp32", world_size=1)
    assert ds["zero_optimization"]["stage"] == 2  # a file that exists where it is named wins
    with pytest.raises(ConfigError, match="shipped with megadrp: ds_configs/auto.json, ds_configs/zero2_bf16.json"):
        check_deepspeed_json("ds_configs/nope.json", OptimConfig(), "fp32", world_size=1)


def test_wheel_ships_the_top_level_ds_configs(tmp_path):
    """The repository's ds_configs/ is what users read and copy; a real wheel build carries every file of it as
    megadrp/ds_configs/, and from there the installed package resolves `ds_configs/NAME.json` in any directory."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy, so that the in-tree build leaves nothing in the checkout
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(os.path.join(ROOT, name), src / name)
    for folder in ("megadrp", "ds_configs"):
        shutil.copytree(os.path.join(ROOT, folder), src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "whl"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next((tmp_path / "whl").glob("megadrp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(os.listdir(os.path.join(ROOT, "ds_configs")))
    assert shipped and {f"megadrp/ds_configs/{n}" for n in shipped} <= names
    assert not [n for n in names if n.startswith(("experiments/", "tests/"))]  # outside the installed package
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    probe = ("from megadrp.config.deepspeed_check import resolve_ds_config_path as r\n"
             "print(r('ds_configs/zero3_cpu.json'))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(
        tmp_path / "site")}, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == str(tmp_path / "site" / "megadrp" / "ds_configs" / "zero3_cpu.json"), out.stderr


def test_deepspeed_batch_mismatch_is_named(tmp_path):
    ds = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1}
    with pytest.raises(ConfigError, match="train_batch_size.*micro 2 x accumulation 1 x world size 8"):
        check_deepspeed_json(ds, OptimConfig(micro_batch_size=2), "fp32", world_size=8)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=3"):
        check_deepspeed_json({}, OptimConfig(micro_batch_size=2, global_batch_size=12), "fp32", world_size=2)
    with pytest.raises(ConfigError, match="multiple of micro_batch_size x world size = 6"):
        check_deepspeed_json({}, OptimConfig(micro_batch_size=2, global_batch_size=8), "fp32", world_size=3)


def test_deepspeed_precision_and_sections_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="trains in bf16; set deepspeed.precision=bf16"):
        check_deepspeed_json({"bf16": {"enabled": True}}, OptimConfig(), "fp32", world_size=1)
    with pytest.raises(ConfigError, match="remove this section"):
        check_deepspeed_json({"optimizer": {"type": "Adam"}}, OptimConfig(), "fp32", world_size=1)
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        check_deepspeed_json(str(path), OptimConfig(), "fp32", world_size=1)
    resolved = check_deepspeed_json({"bf16": {"enabled": "auto"}}, OptimConfig(), "bf16", world_size=1)
    assert resolved["bf16"]["enabled"] is True
    json.dumps(resolved)


def test_cli_lists_subcommands(capsys):
    from megadrp.cli import main
    main(["--help"]) if False else None
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("prune", "cpt", "dress", "export", "eval", "preprocess", "report"):
        assert name in out


def test_dress_regularisation_must_fit_in_the_run():
    """A method's own cross-section rule (methods/dress.py's check), applied when the method is looked up."""
    from megadrp.methods import method_for

    with pytest.raises(ConfigError) as info:
        method_for(load_config(None, ["mode=dress", "optim.max_steps=40"]))
    assert info.value.field_path == "dress.regularize_steps"
    assert "exceeds optim.max_steps (40)" in str(info.value) and "<= optim.max_steps" in str(info.value)
    method_for(load_config(None, ["mode=dress", "optim.max_steps=40", "dress.regularize_steps=40"]))
    method_for(load_config(None, ["mode=prune", "optim.max_steps=40"]))  # only the dress mode regularises
