"""Weight refit in memory (megatron.core.resharding.swap_model_weights): a TP=2 (or PP=2) policy fills a
TP=1 replica on the same two ranks. The first refit copies exactly (bitwise equal to the single-process
weights); after a change of the policy's weights a second refit (cached plan) gives a replica whose
logits equal the policy's and whose greedy completions are identical."""

import pytest

from helpers.dist import run_distributed
from rollout.rollout_workers import run_refit

pytestmark = [pytest.mark.distributed]


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2_to_tp1", "pp2_to_tp1"])
def test_refit_policy_into_tp1_replica(gen_reference, tp, pp):
    workdir, ref = gen_reference
    results = run_distributed(run_refit, 2, tp, workdir, 12, pp)
    for res in results:
        assert res["missing"] == [], f"parameters not matched by name: {res['missing']}"
        assert res["max_diff_1"] == 0.0, "refit must copy the weights exactly"
        assert res["tokens_1"] == ref["ref_tokens"]
        if pp == 1:  # fp32, TP=2 vs TP=1 reduction order only (|logits| ~ 1)
            assert res["logit_diff_2"] <= 2e-6 * max(1.0, res["logit_scale"]), res["logit_diff_2"]
        assert res["tokens_2_replica"] == res["tokens_2_policy"]
        assert res["tokens_2_replica"] != res["tokens_1"], "the perturbed policy should generate differently"
    print("refit seconds (first, cached):", [(r["first_s"], r["second_s"]) for r in results])
