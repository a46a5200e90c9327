"""megatron-core's dynamic engine through our GenerationEngine: greedy tokens equal step-by-step argmax
of our full forward (no KV cache) at TP=1, TP=2 (with sequence parallelism on for training) and PP=2;
seeded sampling reproduces; stop ids end generation. fp32 on CPU over gloo.

Log-prob tolerance: the engine computes the same fp32 math with a KV cache (different matmul shapes),
observed |diff| ~4e-7 against a float64 softmax of the full forward; 1e-5 is far below any real error
(a wrong position or mask moves log-probs by O(1)).
"""

import pytest

from helpers.dist import run_distributed
from rollout.rollout_workers import run_generate

pytestmark = [pytest.mark.distributed]

LP_TOL = 1e-5


def _close(a, b, tol=LP_TOL):
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v)) <= tol


def test_greedy_equals_full_forward_tp1(gen_reference):
    _, r = gen_reference
    assert r["tokens"] == r["ref_tokens"]
    assert _close(r["log_probs"], r["ref_log_probs"])
    assert r["finish"] == ["length"] * len(r["tokens"])
    assert r["training_after"], "generate must restore train mode"
    # the prompts are ragged and the completions differ: a batching/position bug would show
    assert len({tuple(t) for t in r["tokens"]}) == len(r["tokens"])


@pytest.mark.parametrize("tp,pp,sp", [(2, 1, True), (1, 2, False)], ids=["tp2_sp", "pp2"])
def test_greedy_parallel_equals_single_process(gen_reference, tp, pp, sp):
    workdir, r = gen_reference
    results = run_distributed(run_generate, tp * pp, tp, pp, workdir, False, 12, sp, False, tp > 1)
    for res in results:  # every rank returns the same completions
        assert res["tokens"] == r["ref_tokens"]
        assert _close(res["log_probs"], r["ref_log_probs"])
        assert res["sp_after"] == sp, "sequence parallelism must be restored after generation"
        assert res["training_after"]
    if tp > 1:  # seeded sampling: every TP rank draws the same tokens
        for res in results:
            _check_sampling(res["sampling"])
        assert results[0]["sampling"]["a"] == results[1]["sampling"]["a"]
        assert results[0]["sampling"]["top_p"] == results[1]["sampling"]["top_p"]


def _check_sampling(res):
    assert res["a"] == res["b"], "same seed, same prompts: same samples"
    assert res["a"] != res["c"], "another seed should give other samples"
    assert res["a"] != res["greedy"] and res["top_p"] != res["greedy"]
    assert all(0 <= t < res["vocab"] for g in res["a"] + res["top_p"] for t in g), "sampled a padding id"
    # the engine's log-probs of *sampled* tokens are the raw (temperature-1) log-probs of the model
    assert _close(res["a_lp"], res["tf_lp"])
    stops = set(res["stops"])
    for g, s, lp_g, lp_s, fin in zip(res["greedy"], res["stopped"], res["greedy_lp"], res["stopped_lp"],
                                     res["stopped_finish"]):
        cut = next((i + 1 for i, t in enumerate(g) if t in stops), None)
        if cut is None:
            assert s == g and fin == "length"
        else:
            assert s == g[:cut] and fin == "stop", (g, s, stops)
            assert _close([lp_s], [lp_g[:cut]])
    assert res["stopped_finish"][0] == "stop" and res["stopped_finish"][2] == "stop"
    assert len(res["stopped"][0]) == 4, "the first stop id ends prompt 0 after its 4th token"


def test_sampling_seed_and_stop_tp1(gen_reference):
    _check_sampling(gen_reference[1]["sampling"])
