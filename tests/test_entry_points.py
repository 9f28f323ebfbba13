"""No subpackage of megadrp shadows an installed top-level package, under any way megadrp is started.

A launcher runs ``python megadrp/train.py``, and Python puts the script's folder, megadrp/, first on sys.path:
our ``kernels`` subpackage then hid the PyPI package ``kernels`` that transformers >= 5.25 imports, and every
launched rank died in ``from kernels import CUDAProperties``. These tests start megadrp the ways users do and
ask each process where every subpackage name of megadrp would be found as a *top-level* module.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "megadrp"
SUBPACKAGE_NAMES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()) + sorted(
    p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))

# Printed by the started process: {name: origin of the top-level module `name`, or None}.
_PROBE = """
import importlib.util, json, sys
names = {names!r}
out = {{}}
for n in names:
    spec = importlib.util.find_spec(n)
    out[n] = spec.origin if spec is not None else None
print("PROBE " + json.dumps(out))
"""


def _shadowed(stdout: str) -> dict[str, str]:
    line = next(line for line in stdout.splitlines() if line.startswith("PROBE "))
    found = json.loads(line[len("PROBE "):])
    return {n: o for n, o in found.items() if o and Path(o).resolve().is_relative_to(PACKAGE)}


def _env() -> dict[str, str]:
    return dict(os.environ)  # PYTHONPATH kept: it names which checkout's megadrp is under test (a worktree's)


def test_subpackage_names_exist():
    assert "kernels" in SUBPACKAGE_NAMES and "train" in SUBPACKAGE_NAMES


def test_script_launch_drops_the_package_folder_from_sys_path(tmp_path):
    """What deepspeed, torchrun and srun do: run megadrp/train.py as a script (sys.path[0] = its folder)."""
    probe = _PROBE.format(names=SUBPACKAGE_NAMES)
    code = ("import runpy, sys\n"
            f"sys.path[0] = {str(PACKAGE)!r}\n"  # exactly what `python megadrp/train.py` starts with
            f"runpy.run_path({str(PACKAGE / 'train.py')!r}, run_name='megadrp_train_probe')\n" + probe)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert _shadowed(res.stdout) == {}


@pytest.mark.parametrize("cwd", ["repo", "package", "elsewhere"])
def test_module_and_console_entry_points(tmp_path, cwd):
    """`python -m megadrp` and the `megadrp` console script, from the repository, from inside megadrp/, elsewhere."""
    where = {"repo": REPO, "package": PACKAGE, "elsewhere": tmp_path}[cwd]
    probe = _PROBE.format(names=SUBPACKAGE_NAMES)
    # `python -m megadrp` puts the working folder first on sys.path; the probe runs under the same rule.
    code = "import sys, runpy\nsys.path.insert(0, '')\nimport megadrp.cli\n" + probe
    res = subprocess.run([sys.executable, "-c", code], cwd=where, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert _shadowed(res.stdout) == {}
    res = subprocess.run([sys.executable, "-m", "megadrp", "--help"], cwd=where, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_launched_rank_imports_transformers_model_classes(tmp_path):
    """A rank started as `python megadrp/train.py` imports transformers' model classes with the real `kernels`
    package installed (transformers >= 5.25 imports it; our megadrp.kernels must not stand in for it)."""
    pytest.importorskip("kernels")
    code = ("import runpy, sys\n"
            f"sys.path[0] = {str(PACKAGE)!r}\n"
            f"runpy.run_path({str(PACKAGE / 'train.py')!r}, run_name='megadrp_train_probe')\n"
            "import kernels, transformers\n"
            "from transformers import LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM\n"
            "import megadrp.kernels\n"
            "assert kernels.__file__ != megadrp.kernels.__file__\n"
            "print('OK', kernels.__file__)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "site-packages" in res.stdout
