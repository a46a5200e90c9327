"""`make setup` pins the torch that is installed by its distribution version (tools/torch_constraint.py):
PyPI's CUDA wheels say 2.x.y+cu130 at run time and 2.x.y in their metadata, and only the latter satisfies pip."""

import importlib.metadata
import os
import subprocess
import sys

import torch

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "torch_constraint.py")


def test_constraint_is_the_installed_distribution():
    out = subprocess.run([sys.executable, TOOL], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    dist = importlib.metadata.version("torch")
    assert out.stdout.strip() == f"torch=={dist}"
    # the run-time string is the same (local CPU wheel: 2.13.0+cpu both ways) or carries a local tag the
    # metadata lacks (PyPI CUDA wheel: 2.14.1+cu130 vs 2.14.1), never something else
    assert torch.__version__ == dist or torch.__version__.startswith(dist + "+"), (torch.__version__, dist)


def test_no_torch_is_a_one_line_error(tmp_path):
    # an interpreter that cannot see torch: isolated mode (-I) with an empty path, stdlib only
    code = ("import sys, runpy; sys.path = [p for p in sys.path if 'site-packages' not in p]; "
            f"sys.argv = [{TOOL!r}]; runpy.run_path({TOOL!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("error: no torch installed") and "TORCH_SPEC" in out.stderr
