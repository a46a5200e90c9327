"""Whether the compiled extension is built and imports (a module of its own: test files import it by name,
which a second conftest.py elsewhere in tests/ would shadow)."""

import glob
import os

from megatron_align.ops import _backend

_PKG = os.path.join(os.path.dirname(__file__), "..", "..", "megatron_align")
EXT_BUILT = bool(glob.glob(os.path.join(_PKG, "_C*.so")) + glob.glob(os.path.join(_PKG, "_C*.pyd")))


def _ext_ok() -> bool:
    loaded = _backend.extension_loaded()
    if EXT_BUILT and not loaded:  # a built extension that fails to import is a bug, not a skip
        raise RuntimeError("megatron_align/_C*.so exists but does not import")
    return loaded
