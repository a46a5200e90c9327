"""The planner's activation model against what a built model keeps, on CPU (`plan --measure`'s machinery).

One micro-batch through a 3-layer llama-shaped model (h=256, GQA 8/2, SwiGLU 704, vocab 4000, 512 tokens),
local spec, at TP=1 and TP=2 with sequence parallelism over gloo: no recompute, selective, full and
k-block (k=2 of 3 layers: an uneven last block), plus bf16, packed rows (SDPA document mask) and
megatron-core's CE. Retained = the storages autograd saves (saved_tensors_hooks); peak = the allocator's
peak over forward + backward (torch.profiler profile_memory). Bounds: retained within 5%, peak within 10%
(the issue's acceptance); per-module groups (norms / attention / MLP / head / loss) within 5% too, so a
wrong term cannot hide behind another.
"""

import pytest

from helpers.dist import run_distributed
from plan_measure import ACTIVATION_CASES, measure_activations

pytestmark = [pytest.mark.distributed]

GROUPS = ("layers.norms", "layers.attention", "layers.mlp", "checkpoints", "head", "loss")


@pytest.fixture(scope="module", params=sorted(ACTIVATION_CASES))
def measured(request):
    tp = request.param
    return tp, run_distributed(measure_activations, tp, tp)


def test_retained_and_peak_match_the_planner(measured):
    tp, per_rank = measured
    assert all(len(r) == len(ACTIVATION_CASES[tp]) for r in per_rank)
    for rank_results in per_rank:
        for r in rank_results:
            err = r["errors"]
            assert err["saved_total"] <= 0.05, (r["case"], err)
            assert err["allocator_peak"] <= 0.10, (r["case"], err)
            m, p = r["measured"], r["predicted"]
            for g in GROUPS:
                if g in p or g in m:
                    assert abs(p.get(g, 0) - m.get(g, 0)) <= 0.05 * max(m.get(g, 0), 1), (r["case"], g, p, m)


def test_recompute_ordering_holds_when_measured(measured):
    """none > selective > k-block > full in retained bytes; k-block's peak sits between none and full's
    rebuild of one layer (it rebuilds 2)."""
    tp, per_rank = measured
    by = {r["case"].split()[1]: r["measured"] for r in per_rank[0][:4]}
    saved = {k: v["saved_total"] for k, v in by.items()}
    assert saved["none"] > saved["selective"] > saved["kblock(k=2)"] > 0
    assert saved["full"] > saved["kblock(k=2)"]  # 3 checkpoints vs 2
    assert by["full"]["allocator_peak"] < by["kblock(k=2)"]["allocator_peak"] < by["none"]["allocator_peak"]
