"""Runtime bring-up: from a (fake) Slurm srun environment, parallel_state layout, wrong sizes fail early."""

import pytest

from helpers.dist import run_distributed
from megatron_align.config import ConfigError, ParallelConfig
from megatron_align.models import preset
from megatron_align.models.builder import check_arch_parallel
from megatron_align.runtime import check_parallel_sizes

pytestmark = [pytest.mark.distributed]


def _bring_up(tp, pp):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_align.runtime import setup_runtime, teardown

    rt = setup_runtime(ParallelConfig(tp=tp, pp=pp), seed=5)
    out = dict(launcher=rt.env.launcher, rank=rt.rank, world=rt.world_size, backend=rt.backend, dp=rt.dp,
               tp_rank=ps.get_tensor_model_parallel_rank(), pp_rank=ps.get_pipeline_model_parallel_rank(),
               dp_rank=ps.get_data_parallel_rank(), ranks_in_dp=dist.get_process_group_ranks(ps.get_data_parallel_group()))
    teardown()
    out["torn_down"] = not dist.is_initialized() and not ps.model_parallel_is_initialized()
    return out


def test_runtime_from_fake_slurm_environment():
    outs = run_distributed(_bring_up, 4, 2, 1, launcher="slurm")
    assert [o["rank"] for o in outs] == [0, 1, 2, 3]
    assert all(o["launcher"] == "slurm" and o["world"] == 4 and o["backend"] == "gloo" for o in outs)
    assert all(o["dp"] == 2 and o["torn_down"] for o in outs)
    assert [(o["tp_rank"], o["dp_rank"]) for o in outs] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert outs[0]["ranks_in_dp"] == [0, 2]


def test_runtime_from_torchrun_environment_pp():
    outs = run_distributed(_bring_up, 2, 1, 2)
    assert [o["pp_rank"] for o in outs] == [0, 1] and all(o["launcher"] == "torchrun" for o in outs)


def test_wrong_sizes_fail_naming_the_setting():
    with pytest.raises(ConfigError, match=r"world size 6 is not divisible by tp\*pp\*cp"):
        check_parallel_sizes(ParallelConfig(tp=4), 6)
    with pytest.raises(ConfigError, match="parallel.tp=3 does not divide num_attention_heads=8"):
        check_parallel_sizes(ParallelConfig(tp=3), 3, num_attention_heads=8)
    arch = preset("tiny-llama")  # 4 heads, 2 query groups, 4 layers
    with pytest.raises(ValueError, match=r"parallel.tp=4 does not divide the number of query groups"):
        check_arch_parallel(arch, ParallelConfig(tp=4))
    with pytest.raises(ValueError, match=r"parallel.pp=3 .* does not divide num_layers=4"):
        check_arch_parallel(arch, ParallelConfig(pp=3))
    with pytest.raises(ConfigError, match="parallel.sp=true needs parallel.tp >= 2"):
        ParallelConfig(sp=True).validate()
