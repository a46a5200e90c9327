"""packed_sequence_logprobs and topk_kl (unsharded) against float64 references."""

import pytest
import torch

import loss_refs as R
from megatron_align import ops


def _packed_inputs(gen, dtype=torch.float32):
    T, V = 23, 37
    x = (torch.randn(T, V, generator=gen) * 2).to(dtype)
    labels = torch.randint(0, V, (T,), generator=gen)
    labels[[0, 7, 8]] = -100
    # sequences: [0,5) [5,5) empty, [5,9), [9,12) fully masked, [12,21); rows 21, 22 are padding
    cu = torch.tensor([0, 5, 5, 9, 12, 21])
    mask = torch.rand(T, generator=gen) > 0.3
    mask[9:12] = False
    return x, labels, cu, mask


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_packed_values_and_grads(backend, gen, average, use_mask):
    x, labels, cu, mask = _packed_inputs(gen)
    m = mask if use_mask else None
    ours, g_ours = R.grad_of(ops.packed_sequence_logprobs, x, labels, cu, loss_mask=m, average=average)
    ref, g_ref = R.grad_of(R.packed, x.double(), labels, cu, loss_mask=m, average=average)
    assert ours.shape == (5,) and ours.dtype == torch.float32
    assert R.err(ours, ref) <= 1e-5 * (1 + ref.abs().max().item())
    assert R.err(g_ours, g_ref) <= 2e-6
    assert ours[1] == 0  # empty sequence
    if use_mask:
        assert ours[3] == 0 and (g_ours[9:12] == 0).all()  # fully masked sequence
    assert (g_ours[21:] == 0).all()  # padding after cu_seqlens[-1]


def test_packed_int32_cu_float_mask_bf16(backend, gen):
    x, labels, cu, mask = _packed_inputs(gen, torch.bfloat16)
    ours = ops.packed_sequence_logprobs(x, labels, cu.int(), loss_mask=mask.float(), average=True)
    ref = R.packed(x.double(), labels, cu, loss_mask=mask, average=True)
    assert R.err(ours, ref) <= 1e-5 * (1 + ref.abs().max().item())


def test_packed_single_token_and_gradcheck(gen):
    x = torch.randn(1, 5, dtype=torch.float64, generator=gen)
    out = ops.packed_sequence_logprobs(x, torch.tensor([3]), torch.tensor([0, 1]))
    assert R.err(out, torch.log_softmax(x, -1)[:, 3]) < 1e-12
    x, labels, cu, mask = _packed_inputs(gen, torch.float64)
    for avg in (False, True):
        f = lambda t: ops.packed_sequence_logprobs(t, labels, cu, loss_mask=mask, average=avg)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),))


def test_packed_errors(backend):
    x, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(RuntimeError, match="cu_seqlens must be non-decreasing"):
        ops.packed_sequence_logprobs(x, labels, torch.tensor([0, 3, 2]))
    with pytest.raises(RuntimeError, match="exceeds the number of tokens"):
        ops.packed_sequence_logprobs(x, labels, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="loss_mask must have 4 entries"):
        ops.packed_sequence_logprobs(x, labels, torch.tensor([0, 4]), loss_mask=torch.ones(3))


@pytest.mark.parametrize("T,V,k", [(1, 9, 4), (6, 64, 10), (5, 33, 500), (4, 17, 1)])
def test_topk_kl_values_and_grads(backend, gen, T, V, k):
    p = torch.randn(T, V, generator=gen) * 2
    r = p + torch.randn(T, V, generator=gen)
    ours, g_ours = R.grad_of(lambda t: ops.topk_kl(t, r, k=k), p)
    ref, g_ref = R.grad_of(lambda t: R.topk_kl(t, r.double(), k), p.double())
    assert ours.shape == (T,) and (ours >= -1e-6).all()
    assert R.err(ours, ref) <= 2e-6 * (1 + ref.abs().max().item())
    assert R.err(g_ours, g_ref) <= 2e-6
    if k >= V:  # clamped to the vocabulary: the plain full-vocab KL
        full = (torch.softmax(p.double(), -1) * (torch.log_softmax(p.double(), -1) - torch.log_softmax(r.double(), -1))).sum(-1)
        assert R.err(ours, full) <= 2e-6 * (1 + full.abs().max().item())
    if k == 1:
        assert torch.equal(ours, torch.zeros(T)) and torch.equal(g_ours, torch.zeros_like(g_ours))


def test_topk_kl_bf16_extreme_and_gradcheck(backend, gen):
    p = (torch.randn(8, 300, generator=gen) * 1e4)
    r = p + torch.randn(8, 300, generator=gen) * 3
    ours = ops.topk_kl(p, r, k=50)
    ref = R.topk_kl(p.double(), r.double(), 50)
    assert torch.isfinite(ours).all() and R.err(ours, ref) <= 1e-4 * (1 + ref.abs().max().item())
    pb, rb = p.bfloat16() / 1e3, r.bfloat16() / 1e3
    ours, g = R.grad_of(lambda t: ops.topk_kl(t, rb, k=40), pb)
    ref = R.topk_kl(pb.double(), rb.double(), 40)
    assert g.dtype == torch.bfloat16 and R.err(ours, ref) <= 1e-5 * (1 + ref.abs().max().item())
    x = torch.randn(3, 11, dtype=torch.float64, generator=gen)
    y = torch.randn(3, 11, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda t: ops.topk_kl(t, y, k=6), (x.requires_grad_(),))


@pytest.mark.parametrize("k", [1, 7, 40])
def test_topk_kl_ties_take_the_lower_id(backend, gen, k):
    # bf16 reference logits from 4 levels: the k-th value is tied across most of each row
    r = torch.randint(0, 4, (12, 97), generator=gen).bfloat16()
    p = torch.randn(12, 97, generator=gen)
    ours, g_ours = R.grad_of(lambda t: ops.topk_kl(t, r, k=k), p)
    ref, g_ref = R.grad_of(lambda t: R.topk_kl(t, r.double(), k), p.double())
    assert R.err(ours, ref) <= 1e-6 and R.err(g_ours, g_ref) <= 1e-6


def test_topk_kl_errors():
    with pytest.raises(ValueError, match="equal shapes"):
        ops.topk_kl(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="k must be >= 1"):
        ops.topk_kl(torch.randn(2, 3), torch.randn(2, 3), k=0)
