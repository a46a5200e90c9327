"""Whether the compiled extension megatron_align._C is usable in this test run.

A built ``_C*.so`` that fails to import is a bug (raised), not a reason to skip. Shared by the ops
fixtures and tests: import it as ``from helpers.extension import ext_ok`` (a module with its own name;
``from conftest import ...`` binds to whichever conftest.py pytest imported first).
"""

from __future__ import annotations

import glob
import os

_PKG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "megatron_align")
EXT_BUILT = bool(glob.glob(os.path.join(_PKG, "_C*.so")) + glob.glob(os.path.join(_PKG, "_C*.pyd")))


def ext_ok() -> bool:
    from megatron_align.ops import _backend

    loaded = _backend.extension_loaded()
    if EXT_BUILT and not loaded:
        raise RuntimeError("megatron_align/_C*.so exists but does not import")
    return loaded
