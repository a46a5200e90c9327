"""Parallel layout: tensor, pipeline (+virtual), context, sequence and data parallelism."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_align.config.base import ConfigError, help_field


@dataclass
class ParallelConfig:
    tp: int = help_field(1, help="Tensor-parallel size: ranks that split each layer's weights.")
    pp: int = help_field(1, help="Pipeline-parallel size: ranks that split the layer stack.")
    vpp: Optional[int] = help_field(
        None, help="Virtual pipeline stages per rank (interleaved 1F1B); null for plain 1F1B. Needs pp >= 2.")
    cp: int = help_field(1, help="Context-parallel size: ranks that split the sequence for attention. "
                                  "Only 1 for now (packed rows are not yet sharded per CP rank).")
    sp: bool = help_field(False, help="Sequence parallelism (Megatron-style, within the TP group). Needs tp >= 2.")
    distributed_optimizer: bool = help_field(
        True, help="Shard optimizer states over data-parallel ranks (megatron DistributedOptimizer).")
    timeout_minutes: int = help_field(
        10, help="Collective timeout; a dead rank makes the job fail after this long instead of hanging.")

    def validate(self) -> None:
        for key in ("tp", "pp", "cp"):
            if getattr(self, key) < 1:
                raise ConfigError(f"parallel.{key}: must be >= 1, got {getattr(self, key)}")
        if self.vpp is not None:
            if self.vpp < 1:
                raise ConfigError(f"parallel.vpp: must be >= 1 or null, got {self.vpp}")
            if self.vpp > 1 and self.pp < 2:
                raise ConfigError(f"parallel.vpp={self.vpp} needs parallel.pp >= 2 (got pp={self.pp})")
        if self.cp > 1:
            # Megatron's THD attention/RoPE expect each CP rank to hold its 1/cp of every sample (samples
            # padded to a multiple of 2*cp, cu_seqlens_*_padded); our batches give every rank whole rows.
            raise ConfigError(f"parallel.cp={self.cp}: context parallelism is not supported yet (packed rows "
                              "are not sharded per CP rank); use parallel.cp=1 and raise parallel.pp or "
                              "model.recompute for long sequences")
        if self.sp and self.tp < 2:
            raise ConfigError("parallel.sp=true needs parallel.tp >= 2 (sequence parallelism splits within the TP group)")
        if self.timeout_minutes < 1:
            raise ConfigError(f"parallel.timeout_minutes: must be >= 1, got {self.timeout_minutes}")

    @property
    def interleaved_vpp(self) -> Optional[int]:
        """Virtual stages per rank when the schedule is interleaved (vpp > 1), else None (megatron's form)."""
        return self.vpp if (self.vpp or 1) > 1 else None

    @property
    def stages_per_rank(self) -> int:
        return self.vpp or 1

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp * self.cp

    def data_parallel_size(self, world_size: int) -> int:
        """DP is inferred: world_size / (tp * pp * cp), which must divide evenly."""
        mp = self.model_parallel_size
        if world_size % mp != 0:
            raise ConfigError(
                f"parallel: world size {world_size} is not divisible by tp*pp*cp = "
                f"{self.tp}*{self.pp}*{self.cp} = {mp}")
        return world_size // mp
