"""inplace_backward=True writes the gradient into the logits buffer: autograd must see that write."""

import pytest
import torch

import loss_refs as R
from megatron_align import ops


def _capped(x, labels, inplace):
    y = torch.tanh(x / 30.0)  # tanh saves its OUTPUT y, the very buffer the CE backward overwrites
    return ops.vocab_parallel_cross_entropy(y, labels, inplace_backward=inplace)


def _with_z_loss(x, labels, inplace):
    y = x * 1.0
    z = torch.logsumexp(y, dim=-1) ** 2  # saves y (and its result)
    return ops.vocab_parallel_cross_entropy(y, labels, inplace_backward=inplace) + 1e-2 * z


@pytest.mark.parametrize("fn,ref_fn", [
    (_capped, lambda t, y: R.ce(torch.tanh(t / 30.0), y)),
    (_with_z_loss, lambda t, y: R.ce(t, y) + 1e-2 * torch.logsumexp(t, dim=-1) ** 2),
])
def test_inplace_backward_on_saved_logits_raises(backend, gen, fn, ref_fn):
    x = (torch.randn(6, 97, generator=gen) * 40).requires_grad_(True)
    labels = torch.randint(0, 97, (6,), generator=gen)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        fn(x, labels, True).sum().backward()
    # out of place: the gradient is the float64 one
    _, g = R.grad_of(lambda t, y: fn(t, y, False), x, labels)
    _, g_ref = R.grad_of(ref_fn, x.double(), labels)
    assert R.err(g, g_ref) <= 1e-5 * (1 + g_ref.abs().max().item())


def test_inplace_backward_equals_out_of_place(backend, gen):
    x = torch.randn(9, 1031, generator=gen) * 3
    labels = torch.randint(0, 1031, (9,), generator=gen)
    labels[2] = -100
    ref = x.clone().requires_grad_(True)
    ops.vocab_parallel_cross_entropy(ref, labels, label_smoothing=0.1).sum().backward()
    leaf = x.clone().requires_grad_(True)
    buf = leaf * 1  # mul by a Python scalar saves nothing: in place is legal here
    ops.vocab_parallel_cross_entropy(buf, labels, label_smoothing=0.1, inplace_backward=True).sum().backward()
    assert torch.equal(leaf.grad, ref.grad)
