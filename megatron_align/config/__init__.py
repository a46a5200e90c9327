"""Typed configs, one dataclass per concern; YAML + dotted overrides (see base.py)."""

from megatron_align.config.base import (  # noqa: F401
    ConfigError,
    apply_overrides,
    describe,
    dump_yaml,
    from_dict,
    help_field,
    load_config,
    to_dict,
)
from megatron_align.config.model import ModelConfig  # noqa: F401
from megatron_align.config.optim import OptimizerConfig  # noqa: F401
from megatron_align.config.output import OutputConfig  # noqa: F401
from megatron_align.config.parallel import ParallelConfig  # noqa: F401
from megatron_align.config.train import TrainingConfig  # noqa: F401
