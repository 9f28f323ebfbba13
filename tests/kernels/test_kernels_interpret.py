"""Runs the Triton parity cases (test_kernels_interp_cases.py) in a subprocess under TRITON_INTERPRET=1.

The interpreter must be switched on before any kernel is defined, and must not leak into the rest of the
session (it would send every model test through the slow interpreted kernels), hence the subprocess.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="this session already runs the cases")
def test_triton_kernels_match_references_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", MEGADRP_KERNELS="auto")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "kernels" / "test_kernels_interp_cases.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail.splitlines()[-1], tail
