"""The default CUDA arch list of setup.py embeds PTX, so a GPU newer than sm_90 JIT-compiles the kernels."""

import ast
import os

from torch.utils import cpp_extension

SETUP = os.path.join(os.path.dirname(__file__), "..", "..", "setup.py")


def _default_arch_list() -> str:
    tree = ast.parse(open(SETUP).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DEFAULT_CUDA_ARCH_LIST" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no DEFAULT_CUDA_ARCH_LIST")


def test_default_arch_list_has_sm80_sm90_and_ptx(monkeypatch):
    arch = _default_arch_list()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch)
    flags = cpp_extension._get_cuda_arch_flags()  # what torch's build helper passes to nvcc
    assert "-gencode=arch=compute_80,code=sm_80" in flags
    assert "-gencode=arch=compute_90,code=sm_90" in flags
    assert "-gencode=arch=compute_90,code=compute_90" in flags  # the PTX
