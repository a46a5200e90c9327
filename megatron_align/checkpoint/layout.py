"""Directory layout of a megatron_align checkpoint root, and the atomic `latest` marker.

    <root>/
      latest                  text: the name of the newest *complete* checkpoint ("step_00000100", "release")
      step_00000100/          one checkpoint (a training save)
        arch.json             the model's ArchSpec (family, sizes, rope, ...)
        model/                megatron dist-checkpoint of the model (loadable at any TP/PP/VPP)
        optim/                dist-checkpoint of the optimizer (training saves only)
        trainer_state.json    step, scheduler, data position, RNG (training saves only)
        COMPLETE              written last; a directory without it is an interrupted save
      release/                what `megatron-align convert` writes (arch.json + model/ + tokenizer/)

A save writes into ``<name>.tmp`` (the same name on every rank), then renames it to ``<name>`` and only then rewrites
``latest`` (write-to-temp + ``os.replace``). A crash at any point leaves the previous
checkpoint and marker intact.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

from megatron_align.errors import UserError
from megatron_align.models.arch import ArchSpec

LATEST = "latest"
COMPLETE = "COMPLETE"
ARCH_FILE = "arch.json"
MODEL_DIR = "model"
OPTIM_DIR = "optim"
STATE_FILE = "trainer_state.json"
TOKENIZER_DIR = "tokenizer"
RELEASE = "release"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or of the wrong kind; the message names the path."""


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(ckpt_dir: str) -> bool:
    return os.path.isfile(os.path.join(ckpt_dir, COMPLETE))


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_latest(root: str) -> Optional[str]:
    """The newest complete checkpoint directory under ``root``, or None."""
    marker = os.path.join(root, LATEST)
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        name = f.read().strip()
    path = os.path.join(root, name)
    if not is_complete(path):
        raise CheckpointError(f"{marker} points to {path}, which is not a complete checkpoint")
    return path


def resolve(path: str) -> str:
    """A checkpoint root (with `latest`) or a checkpoint directory -> the checkpoint directory."""
    if is_complete(path):
        return path
    latest = read_latest(path) if os.path.isdir(path) else None
    if latest is None:
        raise CheckpointError(f"{path} is neither a complete megatron_align checkpoint nor a directory with a "
                              f"'{LATEST}' marker")
    return latest


def begin(root: str, name: str) -> str:
    """Create the temporary directory a save writes into."""
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f"{name}.tmp")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    return tmp


def commit(root: str, tmp_dir: str, name: str) -> str:
    """Mark ``tmp_dir`` complete, move it to ``root/name``, then move the `latest` marker to it."""
    _atomic_write(os.path.join(tmp_dir, COMPLETE), "ok\n")
    final = os.path.join(root, name)
    replace_dir(tmp_dir, final)
    _atomic_write(os.path.join(root, LATEST), name + "\n")
    return final


def replace_dir(src: str, dst: str) -> None:
    """Move directory ``src`` to ``dst``, replacing ``dst`` if it exists (renames only, then the old copy is deleted)."""
    if os.path.exists(dst):
        old = f"{dst}.old-{os.getpid()}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def prune(root: str, keep_last: int) -> None:
    """Delete older complete step checkpoints beyond the newest ``keep_last`` (0 keeps all)."""
    if keep_last <= 0:
        return
    steps = sorted(d for d in os.listdir(root) if d.startswith("step_") and "." not in d)
    for d in steps[:-keep_last]:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def write_arch(ckpt_dir: str, arch: ArchSpec) -> None:
    _atomic_write(os.path.join(ckpt_dir, ARCH_FILE), json.dumps(arch.to_dict(), indent=2) + "\n")


def read_arch(ckpt_dir: str) -> ArchSpec:
    path = os.path.join(ckpt_dir, ARCH_FILE)
    try:
        with open(path) as f:
            return ArchSpec.from_dict(json.load(f))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: not a megatron_align checkpoint") from None
