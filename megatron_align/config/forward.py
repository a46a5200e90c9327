"""Forward-only jobs (``logprobs``, ``score``): the dotted overrides they accept."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_align.config.base import help_field
from megatron_align.config.model import ModelConfig
from megatron_align.config.parallel import ParallelConfig


@dataclass
class ForwardJob:
    """``model.*`` (backends, precision) and ``parallel.*`` (TP/PP; DP = the rest) of a forward-only command."""

    model: ModelConfig = help_field(default_factory=ModelConfig, help="Model backends and precision.")
    parallel: ParallelConfig = help_field(default_factory=ParallelConfig, help="TP/PP layout (DP = the rest).")
