"""k-block recompute with a k that does not divide the layers of a stage (megatron's uniform method
raises IndexError there): the last block is shorter, and loss and every gradient equal no recompute."""

import pytest

from helpers.dist import run_distributed
from helpers.parity import read_full, run

from megatron_align.models.kblock import block_bounds

pytestmark = [pytest.mark.distributed]


def test_block_bounds():
    assert block_bounds(5, 3) == [(0, 3), (3, 5)]
    assert block_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert block_bounds(4, 2) == [(0, 2), (2, 4)]
    assert block_bounds(3, 5) == [(0, 3)]
    with pytest.raises(ValueError):
        block_bounds(4, 0)


# name: (pp, layers, k): 5 layers in blocks 3+2; PP=2 x 3 layers in blocks 2+1 per stage
CASES = {"k3_of_5": (1, 5, 3), "pp2_k2_of_3": (2, 6, 2)}


@pytest.mark.parametrize("name", list(CASES))
def test_uneven_kblock_gradients_equal_no_recompute(tmp_path, name):
    pp, layers, k = CASES[name]
    wd = str(tmp_path)
    (ref,) = run_distributed(run, 1, "tiny-llama", 1, 1, False, None, 1, wd, "ref", True, "none", 1, layers)
    got = run_distributed(run, pp, "tiny-llama", 1, pp, False, None, 1, wd, name, False, "kblock", k, layers)
    loss = [r["loss"] for r in got if "loss" in r]
    assert loss and abs(loss[0] - ref["loss"]) <= 1e-6 * abs(ref["loss"])
    g_ref, g = read_full(f"{wd}/grads_ref"), read_full(f"{wd}/grads_{name}")
    assert set(g) == set(g_ref) and len(g_ref) > 0
    for key, want in g_ref.items():
        assert want.abs().max() > 0, key
        diff = (g[key] - want).abs().max().item()
        assert diff <= max(1e-7, 1e-6 * want.abs().max().item()), f"{key}: {diff:.3e}"
