"""In-memory weight refit from the training model into a differently laid-out generation replica.

The replica lives on the same ranks with its own process groups (``HyperCommGrid``), e.g. a TP=2 x
PP=1 policy generating through a TP=1 replica (no tensor-parallel collectives in the decode loop).
``megatron.core.resharding.swap_model_weights`` (megatron-core 0.16.1) moves exactly the slices each
rank needs (TP, incl. the SwiGLU gate/up interleave, PP, DP); parameters only, never buffers; no
checkpoint is written. The transfer plan is built once and cached on the replica.

Constraints (megatron-core 0.16.1): both models on the same ranks; the replica is not
VPP-interleaved; both use the same padded vocabulary (the replica adopts the policy's padding, which
must divide by the replica's TP).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist

from megatron_align.rollout.megatron_engine import unwrap_model


def _subgroups(groups: List[List[int]]):
    """This rank's group among ``groups`` (collective: every rank enumerates every group)."""
    mine = None
    for ranks in groups:
        pg = dist.new_group(ranks)
        if dist.get_rank() in ranks:
            mine = pg
    return mine


def replica_process_groups(tp: int, pp: int):
    """A ProcessGroupCollection for a (tp, pp, dp) layout over all ranks, independent of parallel_state.
    Rank order tp-cp-ep-dp-pp as megatron's default. Collective."""
    from megatron.core.hyper_comm_grid import HyperCommGrid
    from megatron.core.process_groups_config import ProcessGroupCollection

    world = dist.get_world_size()
    if world % (tp * pp):
        raise ValueError(f"replica layout tp={tp} x pp={pp} does not divide the world size {world}")
    dp = world // (tp * pp)
    grid = HyperCommGrid([tp, 1, 1, dp, pp], ["tp", "cp", "ep", "dp", "pp"])
    pgs = ProcessGroupCollection()
    pgs.tp = grid.create_pg("tp")
    pgs.cp = grid.create_pg("cp")
    pgs.dp = grid.create_pg("dp")
    pgs.pp = grid.create_pg("pp")
    pgs.mp = grid.create_pg(["tp", "pp"])
    pgs.tp_cp = grid.create_pg(["tp", "cp"])
    pgs.dp_cp = grid.create_pg(["cp", "dp"])
    pgs.ep = grid.create_pg("ep")  # dense models: expert parallelism of size 1
    pgs.expt_tp = pgs.tp
    pgs.expt_dp = pgs.dp
    # embedding group: first and last pipeline stage of each pipeline (tied embeddings)
    pp_groups = grid._gen_rank_enum(["pp"])
    pgs.embd = _subgroups([sorted({g[0], g[-1]}) for g in pp_groups])
    pgs.pos_embd = _subgroups([[g[0]] for g in pp_groups])
    return pgs


def build_replica(model_cfg, source, *, tp: int, pp: int = 1, max_seq_length: Optional[int] = None):
    """This rank's chunk of a generation replica of ``source`` (a :class:`BuiltModel`) at (tp, pp).

    Its weights are uninitialised garbage until :meth:`Refitter.refit`. Sequence parallelism off."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
    from megatron.core.utils import get_pg_rank, get_pg_size

    from megatron_align.config.parallel import ParallelConfig
    from megatron_align.models.builder import transformer_config
    from megatron_align.models.gpt import AlignGPTModel
    from megatron_align.models.spec import build_layer_spec

    if source.padded_vocab_size % tp:
        raise ValueError(f"replica tp={tp} does not divide the policy's padded vocabulary {source.padded_vocab_size}; "
                         f"set model.make_vocab_size_divisible_by so the padding serves both layouts")
    arch = source.arch
    config = transformer_config(arch, model_cfg, ParallelConfig(tp=tp, pp=pp))
    pgs = replica_process_groups(tp, pp)
    layer_spec, final_norm = build_layer_spec(source.transformer_impl, source.attention_backend)
    pp_rank, pp_size = get_pg_rank(pgs.pp), get_pg_size(pgs.pp)
    n_layers = get_num_layers_to_build(config, pp_rank=pp_rank)
    block_spec = TransformerBlockSubmodules(layer_specs=[layer_spec] * n_layers, layer_norm=final_norm)
    model = AlignGPTModel(
        config=config, transformer_layer_spec=block_spec, vocab_size=source.padded_vocab_size,
        max_sequence_length=max_seq_length or source.chunks[0].max_sequence_length,
        pre_process=pp_rank == 0, post_process=pp_rank == pp_size - 1, parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_embeddings, position_embedding_type="rope",
        rotary_base=int(arch.rope_theta) if float(arch.rope_theta).is_integer() else arch.rope_theta,
        arch=arch, pg_collection=pgs)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@dataclass
class RefitStats:
    seconds: float
    first: bool  # the call that built the transfer plan


class Refitter:
    """Copies the policy's current weights into the replica: ``refit()`` after each optimizer step
    (collective over all ranks). ``backend``: ``gloo`` (CPU), ``nccl`` (GPU) or ``nvshmem``."""

    def __init__(self, source_chunks, replica, backend: Optional[str] = None) -> None:
        from megatron_align.runtime import cpu_backend

        cpu_backend.install_refit()
        self.source = unwrap_model(source_chunks)
        self.replica = replica
        self.backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        self.calls = 0

    @torch.no_grad()
    def refit(self) -> RefitStats:
        from megatron.core.resharding import swap_model_weights

        t0 = time.perf_counter()
        swap_model_weights([self.source], [self.replica], self.backend)
        self.calls += 1
        return RefitStats(time.perf_counter() - t0, self.calls == 1)
