import os
import sys

import pytest

# Tests import their helpers as `helpers.*`; spawned workers inherit sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tokenization cache (data/token_cache.py) of every test process and the runs it spawns: a fresh directory per
# pytest process, never the user's ~/.cache.
if "MEGATRON_ALIGN_TEST_CACHE" not in os.environ:
    import tempfile

    import atexit
    import shutil

    os.environ["MEGATRON_ALIGN_TEST_CACHE"] = os.environ["MEGATRON_ALIGN_CACHE"] = tempfile.mkdtemp(
        prefix="megatron-align-cache-")
    atexit.register(shutil.rmtree, os.environ["MEGATRON_ALIGN_CACHE"], True)  # the creating process cleans up

_TESTS = os.path.dirname(os.path.abspath(__file__))
# The compat lane (`make test-compat`: Python 3.12, PyPI's CUDA torch, the newest megatron-core setup.py
# allows) runs `pytest -m compat`: every test that touches megatron-core. The paths below (relative to tests/)
# are marked whole; a new stage's tests join the lane by adding their folder or file here, or a single module
# by `pytestmark = pytest.mark.compat`.
COMPAT_PATHS = (
    "unit/",
    "distributed/",
    "convert/",
    "ops/test_tensor_parallel.py",
    "plan/test_measured_static.py",
    "e2e/",
    "rl/",
    "rollout/",
)


# Inside those paths, what the compat lane leaves to `make test`: learning curves depend on the math, not on the
# megatron-core version (generation, refit, layouts and resume of the RL stages do run in the compat lane).
COMPAT_EXCLUDE = ("rl/test_learns.py",)


def _mark_compat(items) -> None:
    compat = pytest.mark.compat
    for item in items:
        rel = os.path.relpath(str(item.path), _TESTS).replace(os.sep, "/")
        if rel in COMPAT_EXCLUDE:
            continue
        if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in COMPAT_PATHS):
            item.add_marker(compat)


def pytest_collection_modifyitems(config, items):
    _mark_compat(items)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
