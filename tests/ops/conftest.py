import glob
import os

import pytest
import torch

from megatron_align.ops import _backend, use_backend

_PKG = os.path.join(os.path.dirname(__file__), "..", "..", "megatron_align")
EXT_BUILT = bool(glob.glob(os.path.join(_PKG, "_C*.so")) + glob.glob(os.path.join(_PKG, "_C*.pyd")))


def _ext_ok() -> bool:
    loaded = _backend.extension_loaded()
    if EXT_BUILT and not loaded:  # a built extension that fails to import is a bug, not a skip
        raise RuntimeError("megatron_align/_C*.so exists but does not import")
    return loaded


@pytest.fixture(params=["ext", "torch"])
def backend(request):
    """Run the test once on the compiled extension (skipped when not built) and once on the fallback."""
    if request.param == "ext":
        if not _ext_ok():
            pytest.skip("megatron_align._C is not built")
        with use_backend(None):
            assert _backend.active_backend("cpu") == "cpp"
            yield "ext"
    else:
        with use_backend("torch"):
            yield "torch"


@pytest.fixture
def gen():
    g = torch.Generator().manual_seed(1234)
    return g
