import pytest
import torch
from helpers.extension import ext_ok

from megatron_align.ops import _backend, use_backend


@pytest.fixture(params=["ext", "torch"])
def backend(request):
    """Run the test once on the compiled extension (skipped when not built) and once on the fallback."""
    if request.param == "ext":
        if not ext_ok():
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
