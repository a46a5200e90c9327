"""A tiny model's loss, logits and parameter gradients under TP / PP / VPP / SP / DP / recompute
equal the single-process result.

Tolerances (fp32 on CPU): the parallel runs compute the same math with a different reduction
order (row-parallel matmuls split the contraction, TP splits the softmax normaliser, DP sums
gradients in another order), so differences are fp32 rounding only. Observed max |diff| is ~1e-7
on logits and gradients; we assert 2e-6 absolute on logits (|logits| ~ 1), 1e-6 relative on the
loss, and 2e-6 relative to the largest gradient entry of each tensor (>= 1e-6 absolute), which is
some 100x below the size of any real bug (a wrong shard, a missing all-reduce or a double-count
moves gradients by O(|g|)).
"""

import pytest

from helpers.dist import run_distributed
from helpers.parity import read_full, run

pytestmark = [pytest.mark.distributed]

MODEL = "tiny-llama"

CONFIGS = {
    # name: (tp, pp, sp, vpp, dp, recompute, k)
    "tp2": (2, 1, False, None, 1, "none", 1),
    "pp2": (1, 2, False, None, 1, "none", 1),
    "tp2_pp2": (2, 2, False, None, 1, "none", 1),
    "tp2_sp": (2, 1, True, None, 1, "none", 1),
    "dp2": (1, 1, False, None, 2, "none", 1),
    "pp2_vpp2": (1, 2, False, 2, 1, "none", 1),
    "kblock2": (1, 1, False, None, 1, "kblock", 2),
    "tp2_sp_selective": (2, 1, True, None, 1, "selective", 1),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("parity"))
    (res,) = run_distributed(run, 1, MODEL, 1, 1, False, None, 1, workdir, "ref", True)
    return workdir, res, read_full(f"{workdir}/grads_ref")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parallel_equals_single_process(reference, name):
    workdir, ref, ref_grads = reference
    tp, pp, sp, vpp, dp, recompute, k = CONFIGS[name]
    world = tp * pp * dp
    results = run_distributed(run, world, MODEL, tp, pp, sp, vpp, dp, workdir, name, False, recompute, k)
    losses = [r["loss"] for r in results if "loss" in r]
    assert losses, "no rank reported a loss"
    for loss in losses:
        assert abs(loss - ref["loss"]) <= 1e-6 * abs(ref["loss"]), (loss, ref["loss"])
    logits = [r["logits"] for r in results if "logits" in r]
    for lg in logits:
        assert lg.shape == ref["logits"].shape
        assert (lg - ref["logits"]).abs().max().item() <= 2e-6
    grads = read_full(f"{workdir}/grads_{name}")
    assert set(grads) == set(ref_grads), set(grads) ^ set(ref_grads)
    for key, g_ref in ref_grads.items():
        g = grads[key]
        assert g.shape == g_ref.shape, key
        assert g_ref.abs().max() > 0, f"reference gradient of {key} is all zero: the test would be vacuous"
        tol = max(1e-6, 2e-6 * g_ref.abs().max().item())
        diff = (g - g_ref).abs().max().item()
        assert diff <= tol, f"{name}: grad {key} differs by {diff:.3e} (tol {tol:.1e})"
