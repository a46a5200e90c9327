"""User reward functions given as ``path/to/file.py:function``; ``function(prompt, response, sample) -> float``.

Loaded when the reward is built (before any rollout): a missing file, a file that fails to import, a
missing or non-callable attribute, or a function that cannot take three arguments are one-line errors.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys

from megatron_align.rewards.base import FunctionComponent, RewardConfigError, RewardFn, register_reward


def load_user_function(spec: str, base_dir: str = "") -> RewardFn:
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise RewardConfigError(f"reward function {spec!r}: expected path/to/file.py:function_name")
    full = path if os.path.isabs(path) or not base_dir else os.path.join(base_dir, path)
    if not os.path.isfile(full):
        raise RewardConfigError(f"reward function {spec!r}: file {full} does not exist")
    mod_name = f"megatron_align_user_reward_{abs(hash(os.path.abspath(full)))}"
    module = sys.modules.get(mod_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(mod_name, full)
        if loader_spec is None or loader_spec.loader is None:
            raise RewardConfigError(f"reward function {spec!r}: cannot load {full} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any import-time error becomes a config error
            raise RewardConfigError(f"reward function {spec!r}: importing {full} failed: "
                                    f"{type(exc).__name__}: {exc}") from exc
        sys.modules[mod_name] = module
    fn = getattr(module, name, None)
    if fn is None:
        raise RewardConfigError(f"reward function {spec!r}: {full} defines no {name!r}")
    if not callable(fn):
        raise RewardConfigError(f"reward function {spec!r}: {name!r} in {full} is not callable")
    try:
        inspect.signature(fn).bind("prompt", "response", {})
    except TypeError:
        raise RewardConfigError(f"reward function {spec!r}: {name}{inspect.signature(fn)} cannot be called as "
                                f"{name}(prompt, response, sample)") from None
    except ValueError:  # builtins without a signature: accept
        pass
    return fn


@register_reward("function")
def function_reward(path: str = "", base_dir: str = "") -> FunctionComponent:
    """``params.path``: ``path/to/file.py:function`` (relative paths against ``base_dir``, the config's
    directory when built from a config file)."""
    if not path:
        raise RewardConfigError("function: params.path (path/to/file.py:function) is required")
    return FunctionComponent(load_user_function(path, base_dir), name=path)
