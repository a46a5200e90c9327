"""User functions given as ``path/to/file.py:function`` (reward functions, prompt quality scorers).

The file is imported once per path; a missing file, a failed import, a missing or non-callable attribute,
or a function that cannot take the caller's arguments raise ``error(f"{label} {spec!r}: reason")``.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from typing import Callable, Sequence, Type


def load_user_callable(spec: str, *, base_dir: str = "", call_args: Sequence[object], call_text: str,
                       label: str, error: Type[Exception]) -> Callable:
    """Import ``path.py`` of ``spec = "path.py:name"`` (relative to ``base_dir``) and return ``name``.

    ``call_args`` are sample arguments the function must accept (checked by signature binding only);
    ``call_text`` is how the call reads in the error message, e.g. ``"(prompt, response, sample)"``."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise error(f"{label} {spec!r}: expected path/to/file.py:function_name")
    full = path if os.path.isabs(path) or not base_dir else os.path.join(base_dir, path)
    if not os.path.isfile(full):
        raise error(f"{label} {spec!r}: file {full} does not exist")
    mod_name = f"megatron_align_user_code_{abs(hash(os.path.abspath(full)))}"
    module = sys.modules.get(mod_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(mod_name, full)
        if loader_spec is None or loader_spec.loader is None:
            raise error(f"{label} {spec!r}: cannot load {full} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any import-time error becomes a config error
            raise error(f"{label} {spec!r}: importing {full} failed: {type(exc).__name__}: {exc}") from exc
        sys.modules[mod_name] = module
    fn = getattr(module, name, None)
    if fn is None:
        raise error(f"{label} {spec!r}: {full} defines no {name!r}")
    if not callable(fn):
        raise error(f"{label} {spec!r}: {name!r} in {full} is not callable")
    try:
        inspect.signature(fn).bind(*call_args)
    except TypeError:
        raise error(f"{label} {spec!r}: {name}{inspect.signature(fn)} cannot be called as {name}{call_text}") from None
    except ValueError:  # builtins without a signature: accept
        pass
    return fn
