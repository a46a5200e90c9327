"""Every megatron-core version difference we handle, in one place.

Each :class:`Shim` names the megatron-core versions it applies to (a PEP 440 specifier), says why, and is
applied only where the installed version is in that range; :func:`apply` applies a group once (idempotent).
A shim that a newer megatron-core no longer needs gets an upper bound here, and
``tests/unit/test_megatron_fixes.py`` shows on the installed version that the bug is present where the range
says so and absent where it does not. :data:`TESTED` lists the (Python, megatron-core) pairs CI runs;
``megatron-align info`` reports whether the running pair is one of them.

Importing this module is light (no torch, no megatron): ``info`` and the CLI read it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

# (Python major.minor, megatron-core major.minor) pairs CI tests: `make test` and `make test-compat`.
TESTED: Tuple[Tuple[str, str, str], ...] = (
    ("3.11", "0.16", "make test"),
    ("3.12", "0.19", "make test-compat"),
)

# megatron-core warns at import, four times, that Transformer Engine and Apex are missing; `info` says it once.
BACKEND_WARNING = r"Transformer Engine and Apex are not installed"
# megatron-core >= 0.17 imports torch.utils.cpp_extension (tensor_parallel/random.py: load_inline) at import,
# and with a CUDA build of torch on a machine without a GPU but with a CUDA toolkit torch then logs
# "No CUDA runtime is found, using CUDA_HOME=...": noise for every command on a login node or CPU CI.
CUDA_HOME_NOTICE = "No CUDA runtime is found"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_import_noise() -> None:
    """Silence what megatron-core's import prints that says nothing to our users (idempotent, stdlib only):
    its 'Transformer Engine and Apex are not installed' warnings and torch's CUDA_HOME notice it triggers."""
    warnings.filterwarnings("ignore", message=BACKEND_WARNING, category=UserWarning)
    log = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _DropMessage) for f in log.filters):
        log.addFilter(_DropMessage(CUDA_HOME_NOTICE))


def mcore_version() -> Optional[str]:
    """The installed megatron-core version (distribution metadata), or None when it is not installed."""
    try:
        return importlib.metadata.version("megatron-core")
    except importlib.metadata.PackageNotFoundError:
        return None


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def tested_pair(python: Optional[str] = None, mcore: Optional[str] = None) -> Optional[str]:
    """The CI lane that tests this (Python, megatron-core) pair, or None when no lane does."""
    python = python or "%d.%d" % sys.version_info[:2]
    mcore = mcore or mcore_version()
    if mcore is None:
        return None
    for py, mc, lane in TESTED:
        if _minor(python) == py and _minor(mcore) == mc:
            return lane
    return None


def tested_pairs_text() -> str:
    return ", ".join(f"Python {py} + megatron-core {mc}.x" for py, mc, _ in TESTED)


def in_range(versions: str, version: Optional[str] = None) -> bool:
    """Whether megatron-core ``version`` (default: the installed one) is in the PEP 440 range ``versions``."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    version = version or mcore_version()
    return version is not None and Version(version) in SpecifierSet(versions)


@dataclass(frozen=True)
class Shim:
    name: str
    group: str  # where it is applied: "optimizer" (engine/optimizer.py), "cpu" (runtime/cpu_backend.py)
    versions: str  # PEP 440 specifier of the megatron-core versions that need it
    reason: str
    patch: Callable[[], None]

    def applies(self, version: Optional[str] = None) -> bool:
        return in_range(self.versions, version)


def _copy_source_keys() -> None:
    import torch
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    orig = DistributedOptimizer._set_main_param_and_optimizer_states

    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return orig(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        dst = {"param": main_param, **self.optimizer.state[main_param]}
        with torch.no_grad():  # the dp_reshardable load path calls this with autograd on
            for key, value in dst.items():
                if key in tensors and key != "step":
                    value.copy_(tensors[key])

    _set_main_param_and_optimizer_states.__wrapped__ = orig
    DistributedOptimizer._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states


def _own_step_per_param() -> None:
    import torch
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    orig_load = DistributedOptimizer.load_state_dict

    def load_state_dict(self, state_dict):
        out = orig_load(self, state_dict)
        for state in self.optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()
        return out

    load_state_dict.__wrapped__ = orig_load
    DistributedOptimizer.load_state_dict = load_state_dict


SHIMS: Dict[str, Shim] = {
    s.name: s
    for s in (
        Shim(
            "distopt-copy-source-keys",
            "optimizer",
            ">=0.16.1,<0.20",
            "DistributedOptimizer._set_main_param_and_optimizer_states (non precision-aware path) copies every "
            "key of the *destination* state; with torch's Adam (no Apex/TE) that includes a per-parameter "
            "'step' which load_parameter_state_from_fully_reshardable leaves out of the source, so resuming "
            "raised KeyError('step'). We copy the state keys both sides have (the dp_reshardable source also "
            "carries bookkeeping such as 'padding', which is no state) except 'step': it is restored from "
            "param_groups, and the dp_reshardable source's 'step' is the stale local tensor captured before the "
            "load (copying it reset Adam's bias correction to step 0 after every resume). Still so in 0.19.2.",
            _copy_source_keys,
        ),
        Shim(
            "distopt-own-adam-step",
            "optimizer",
            ">=0.16.1,<0.20",
            "DistributedOptimizer.load_state_dict (no Apex/TE) gives every parameter's Adam state the *same* "
            "'step' tensor; torch's Adam increments each parameter's step in place, so after a resume the "
            "shared step advanced once per parameter per iteration and the bias correction went wrong. Each "
            "parameter gets its own copy. Still so in 0.19.2.",
            _own_step_per_param,
        ),
    )
}

_APPLIED: set = set()


def apply(group: str = "optimizer") -> None:
    """Apply (once) the shims of ``group`` that the installed megatron-core needs."""
    version = mcore_version()
    for shim in SHIMS.values():
        if shim.group == group and shim.name not in _APPLIED and shim.applies(version):
            shim.patch()
            _APPLIED.add(shim.name)
