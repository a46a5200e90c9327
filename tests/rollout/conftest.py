import pytest

from helpers.dist import run_distributed
from rollout.rollout_workers import run_generate


@pytest.fixture(scope="session")
def gen_reference(tmp_path_factory):
    """Single-process run: saves the shared weights, greedy completions by the engine and by the full
    forward, sampling/stop results."""
    workdir = str(tmp_path_factory.mktemp("gen"))
    (res,) = run_distributed(run_generate, 1, 1, 1, workdir, True, 12, False, True, True)
    return workdir, res
