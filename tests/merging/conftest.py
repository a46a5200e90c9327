import os
import sys

# hf_tiny_models (tiny random HF checkpoints) lives with the converter tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "convert"))

import pytest  # noqa: E402

from merge_zoo import build_merge_zoo  # noqa: E402


@pytest.fixture(scope="session")
def mzoo(tmp_path_factory):
    return build_merge_zoo(str(tmp_path_factory.mktemp("merge_zoo")))
