import os
import sys

# Spawned ranks unpickle functions from convert_workers: make this folder importable everywhere.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    from convert_zoo import build_zoo

    return build_zoo(str(tmp_path_factory.mktemp("convert_zoo")))
