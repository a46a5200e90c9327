"""parallel.cp > 1 is refused when the config is read (issue 16 item 4), before any process starts.

Megatron's THD attention and RoPE expect each CP rank to hold 1/cp of every packed sample; the batches
give every rank whole rows, so a cp=2 run passed validation and then crashed in the TE path.
"""

import pytest

from megatron_align.config.base import ConfigError, load_config
from megatron_align.config.parallel import ParallelConfig
from megatron_align.config.sft import SFTConfig


@pytest.mark.parametrize("cp", [2, 4, 8])
def test_cp_above_one_is_refused_naming_the_field(cp):
    with pytest.raises(ConfigError, match=rf"parallel\.cp={cp}: context parallelism is not supported"):
        ParallelConfig(cp=cp).validate()


def test_cp_refused_from_yaml_overrides():
    with pytest.raises(ConfigError, match=r"parallel\.cp=2"):
        load_config(SFTConfig, None, ["parallel.cp=2", "model.name=tiny-llama"])


def test_cp_one_still_valid():
    cfg = ParallelConfig(tp=2, pp=2, cp=1)
    cfg.validate()
    assert cfg.data_parallel_size(8) == 2
