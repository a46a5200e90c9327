"""Predicted parameter, weight, gradient-buffer and optimizer-state bytes equal what megatron really
allocates for tiny models, rank by rank (TP=1; TP=2, PP=2 and DP=2 over gloo; fp32 and bf16 params;
with and without the distributed optimizer). Exact equality: the planner replays megatron's layout."""

import pytest

from helpers.dist import run_distributed
from plan_measure import CASES, measure

from megatron_align.models.families import preset
from megatron_align.plan.memory import Dtypes, static_memory
from megatron_align.plan.params import rank_parameters

pytestmark = [pytest.mark.distributed]


@pytest.fixture(scope="module", params=sorted(CASES))
def measured(request):
    world = request.param
    return world, run_distributed(measure, world, world)


def test_static_bytes_equal_measured(measured):
    world, per_rank = measured
    checked = 0
    for rank_results in per_rank:
        for got in rank_results:
            name, tp, pp, precision, distopt = got["case"]
            arch = preset(name)
            assert got["params"] == [[(p.name, p.numel) for p in chunk]
                                     for chunk in rank_parameters(arch, tp, pp, got["pp_rank"])], got["case"]
            dtypes = Dtypes.for_precision(precision)
            st = static_memory(arch, tp, pp, got["pp_rank"], None, got["dp"], distopt, dtypes,
                               dp_rank=got["dp_rank"])
            opt = got["optimizer"]
            assert st.param_elements == sum(n for chunk in got["params"] for _, n in chunk)
            assert st.weights == got["weights"], got["case"]
            assert st.grads == got["grads"], got["case"]
            assert st.optimizer_elements == opt["state_elements"], got["case"]
            assert 2 * st.optimizer_elements * dtypes.optim_state == opt["exp_avg"] + opt["exp_avg_sq"], got["case"]
            assert st.optimizer == opt["exp_avg"] + opt["exp_avg_sq"] + opt["main_params"], got["case"]
            checked += 1
    assert checked == world * len(CASES[world])


def test_distributed_optimizer_shards_differ_and_cover(measured):
    """DP=2: the two ranks' shards are unequal (padding) yet add up to every parameter exactly."""
    world, per_rank = measured
    if world < 2:
        pytest.skip("needs the DP=2 runs")
    for i, case in enumerate(CASES[world]):
        if per_rank[0][i]["dp"] != 2:
            continue
        elems = [per_rank[r][i]["optimizer"]["state_elements"] for r in range(2)]
        total = sum(n for chunk in per_rank[0][i]["params"] for _, n in chunk)
        assert sum(elems) == total and elems[0] != elems[1], (case, elems)
