"""Save and resume a whole training run: model, optimizer, LR schedule, data position and RNG.

Every rank calls these together. The directory is written as ``<root>/step_N.tmp`` and committed
(renamed, then `latest` moved) by rank 0 only after every rank finished writing, so an interrupted
save never replaces the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megatron_align.checkpoint import layout
from megatron_align.checkpoint.model_io import load_model, model_sharded_state_dict, save_model
from megatron_align.models.arch import ArchSpec

RNG_DIR = "rng"
# DistributedOptimizer checkpoint format. `dp_reshardable`: every rank writes its own DP shard of the
# fp32 params and Adam states as they lie in its buffers (no gather, no host copy of the whole buffer);
# it loads at another DP size, but TP/PP/VPP must match the save (checked on load with a clear message).
# `fully_reshardable` (the format before) also loads at another TP/PP, but during every save it
# all-gathered every DP rank's fp32 param/exp_avg/exp_avg_sq into host memory on every rank (megatron
# 0.16.1's memory-efficient variant needs gloo groups and still gathers on DP rank 0, and its
# `fully_sharded_model_space` is refused by its own ShardedTensor validation: flattened_range).
# The format is recorded in the trainer state, so older checkpoints still load in the format they were saved.
OPTIM_SHARDING = "dp_reshardable"
LEGACY_OPTIM_SHARDING = "fully_reshardable"
LAYOUT_BOUND_SHARDINGS = {"dp_reshardable"}


def optim_metadata(sharding: Optional[str] = None) -> Dict[str, Any]:
    return {"distrib_optim_sharding_type": sharding or OPTIM_SHARDING}


def _uses_distributed_optimizer(optimizer) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    inner = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    return any(isinstance(opt, DistributedOptimizer) for opt in inner)


def model_parallel_layout() -> Dict[str, int]:
    from megatron.core import parallel_state

    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size(),
            "vpp": parallel_state.get_virtual_pipeline_model_parallel_world_size() or 1}


def check_optim_layout(ckpt_dir: str, state: Dict[str, Any], current: Dict[str, int], distributed: bool) -> None:
    """A DP-sharded optimizer checkpoint resumes only at the TP/PP/VPP it was saved with."""
    sharding = state.get("optim_sharding", LEGACY_OPTIM_SHARDING)
    saved = state.get("optim_layout")
    if sharding not in LAYOUT_BOUND_SHARDINGS or not saved or not saved.get("distributed"):
        return
    if not distributed:
        raise ValueError(f"{ckpt_dir}: its optimizer state is sharded by megatron's distributed optimizer; "
                         "resume with parallel.distributed_optimizer=true (or train.finetune=true to load the "
                         "weights alone)")
    diff = {k: (saved[k], current[k]) for k in ("tp", "pp", "vpp") if saved.get(k) != current[k]}
    if diff:
        was = ", ".join(f"{k}={a}" for k, (a, _) in diff.items())
        now = ", ".join(f"{k}={b}" for k, (_, b) in diff.items())
        raise ValueError(f"{ckpt_dir}: its optimizer state was saved at {was} and can resume only there (now "
                         f"{now}; the data-parallel size may change); set train.finetune=true to load the "
                         f"weights alone")


def _rng_state() -> Dict[str, Any]:
    from megatron.core import tensor_parallel

    # Tensors only, so the file loads with weights_only=True. Python/numpy RNGs are not used by
    # training (the data order comes from the seeded sampler), so they need no saving.
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: Dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _save_model_and_optimizer(directory: str, chunks: List[torch.nn.Module], optimizer) -> Dict[str, Any]:
    """``<directory>/model`` and ``<directory>/optim`` (collective); the optimizer's format, for the state file."""
    from megatron.core import dist_checkpointing

    save_model(chunks, os.path.join(directory, layout.MODEL_DIR))
    model_sd = model_sharded_state_dict(chunks)
    _materialise_optimizer_state(optimizer)  # no state yet if every step so far was skipped (fp16 overflow)
    layout_now, distributed = model_parallel_layout(), _uses_distributed_optimizer(optimizer)
    os.makedirs(os.path.join(directory, layout.OPTIM_DIR), exist_ok=True)
    dist_checkpointing.save(optimizer.sharded_state_dict(model_sd, metadata=optim_metadata()),
                            os.path.join(directory, layout.OPTIM_DIR))
    return {"optim_sharding": OPTIM_SHARDING, "optim_layout": dict(layout_now, distributed=distributed)}


def _load_model_and_optimizer(directory: str, state: Dict[str, Any], chunks: List[torch.nn.Module],
                              optimizer) -> None:
    from megatron.core import dist_checkpointing

    check_optim_layout(directory, state, model_parallel_layout(), _uses_distributed_optimizer(optimizer))
    load_model(chunks, os.path.join(directory, layout.MODEL_DIR))
    model_sd = model_sharded_state_dict(chunks)
    _materialise_optimizer_state(optimizer)
    metadata = optim_metadata(state.get("optim_sharding", LEGACY_OPTIM_SHARDING))
    optim_sd = optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=metadata)
    loaded = dist_checkpointing.load(optim_sd, os.path.join(directory, layout.OPTIM_DIR))
    optimizer.load_state_dict(loaded)


def save_training(root: str, step: int, chunks: List[torch.nn.Module], optimizer, scheduler,
                  state: Dict[str, Any], arch: ArchSpec, keep_last: int = 0,
                  tokenizer_files: Sequence[str] = (),
                  extras: Sequence[Callable[[str], None]] = ()) -> str:
    """``extras``: more writers into the same step (each called on every rank with the step's temporary
    directory before it is committed, e.g. a PPO critic's :func:`save_component` into ``<step>/critic``)."""
    name = layout.step_name(step)
    rank = dist.get_rank() if dist.is_initialized() else 0
    tmp = os.path.join(root, f"{name}.tmp")
    if rank == 0:
        layout.begin(root, name)
    _barrier()
    optim_state = _save_model_and_optimizer(tmp, chunks, optimizer)
    os.makedirs(os.path.join(tmp, RNG_DIR), exist_ok=True)
    torch.save(_rng_state(), os.path.join(tmp, RNG_DIR, f"rank_{rank:05d}.pt"))
    for write in extras:
        write(tmp)
    if rank == 0:
        full_state = dict(state, step=step, scheduler=scheduler.state_dict(), **optim_state,
                          world_size=dist.get_world_size() if dist.is_initialized() else 1)
        with open(os.path.join(tmp, layout.STATE_FILE), "w") as f:
            json.dump(full_state, f, indent=2)
        layout.write_arch(tmp, arch)
        if tokenizer_files:
            os.makedirs(os.path.join(tmp, layout.TOKENIZER_DIR), exist_ok=True)
            for path in tokenizer_files:
                shutil.copy2(path, os.path.join(tmp, layout.TOKENIZER_DIR))
    _barrier()
    final = os.path.join(root, name)
    if rank == 0:
        layout.commit(root, tmp, name)
        layout.prune(root, keep_last)
    _barrier()
    return final


def save_component(directory: str, chunks: List[torch.nn.Module], optimizer, scheduler, arch: ArchSpec,
                   state: Optional[Dict[str, Any]] = None) -> None:
    """A second trained model of a run (a PPO critic) with its optimizer and LR schedule, into ``directory``
    (a subdirectory of a step checkpoint): ``model/``, ``optim/``, ``arch.json`` and ``trainer_state.json``.
    Collective; the step's commit makes it visible. It is itself a complete checkpoint (a start for another run)."""
    optim_state = _save_model_and_optimizer(directory, chunks, optimizer)
    if (dist.get_rank() if dist.is_initialized() else 0) == 0:
        with open(os.path.join(directory, layout.STATE_FILE), "w") as f:
            json.dump(dict(state or {}, scheduler=scheduler.state_dict(), **optim_state), f, indent=2)
        layout.write_arch(directory, arch)
        with open(os.path.join(directory, layout.COMPLETE), "w") as f:  # loadable on its own (e.g. as a start)
            f.write("ok\n")
    _barrier()


def load_component(directory: str, chunks: List[torch.nn.Module], optimizer, scheduler) -> Dict[str, Any]:
    """Restore what :func:`save_component` wrote; returns its state dict."""
    path = os.path.join(directory, layout.STATE_FILE)
    if not os.path.isfile(path):
        raise layout.CheckpointError(f"{directory}: no {layout.STATE_FILE} (not a saved model + optimizer)")
    with open(path) as f:
        state = json.load(f)
    _load_model_and_optimizer(directory, state, chunks, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    return state


def _is_torch_adam(opt: torch.optim.Optimizer) -> bool:
    """megatron-core uses TE's FusedAdam when Transformer Engine imports, else Apex's, else torch's
    AdamW (decided at import of ``megatron.core.optimizer``); look at the instance it built."""
    return isinstance(opt, (torch.optim.Adam, torch.optim.AdamW))


def _materialise_optimizer_state(optimizer) -> None:
    """Create zero Adam states and a per-parameter ``step`` before loading torch's Adam/AdamW.

    torch's Adam makes its state lazily at the first step, and megatron's DistributedOptimizer reads
    ``state[p]["step"]`` of every parameter to build the state dict it loads into (its no-Apex/TE
    branch). TE's FusedAdam (>= 1.13) keeps ``step`` in the param group instead and its
    ``state_dict()`` maps every per-parameter key through a dtype table that knows only ``exp_avg``,
    ``exp_avg_sq`` and ``master_param``: a ``step`` entry there raises ``KeyError('step')``. For
    FusedAdam megatron's own ``init_state_fn`` / dummy-state initialisation is all it needs.
    """
    inner = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    for opt in inner:
        torch_opt = opt.optimizer
        if not _is_torch_adam(torch_opt):
            continue
        for group in torch_opt.param_groups:
            for p in group["params"]:
                st = torch_opt.state[p]
                if len(st) == 0:
                    st["exp_avg"] = torch.zeros_like(p.data)
                    st["exp_avg_sq"] = torch.zeros_like(p.data)
                    st["step"] = torch.zeros((), dtype=torch.float32)


def load_training(ckpt_dir: str, chunks: List[torch.nn.Module], optimizer, scheduler) -> Dict[str, Any]:
    """Restore everything saved by :func:`save_training`; returns the trainer state dict."""
    with open(os.path.join(ckpt_dir, layout.STATE_FILE)) as f:
        state = json.load(f)
    _load_model_and_optimizer(ckpt_dir, state, chunks, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = os.path.join(ckpt_dir, RNG_DIR, f"rank_{rank:05d}.pt")
    if os.path.exists(rng_file) and state.get("world_size") == (dist.get_world_size() if dist.is_initialized() else 1):
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return state


def has_training_state(ckpt_dir: str) -> bool:
    return os.path.isfile(os.path.join(ckpt_dir, layout.STATE_FILE))


def find_resume(output_dir: str, load: Optional[str]) -> Tuple[Optional[str], bool]:
    """(checkpoint, is_own_run). The run directory's own latest checkpoint (auto-resume after a crash or
    requeue) wins; else `train.load` (e.g. the converted base model); else (None, False): fresh start."""
    if os.path.isfile(os.path.join(output_dir, layout.LATEST)):
        return layout.read_latest(output_dir), True
    if load:
        return layout.resolve(load), False
    return None, False
