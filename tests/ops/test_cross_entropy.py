"""vocab_parallel_cross_entropy and token_logprobs (unsharded) against float64 references."""

import pytest
import torch
import torch.nn.functional as F

import loss_refs as R
from megatron_align import ops

SHAPES = [(1, 7), (5, 13), (33, 250), (4, 1031), (3, 1)]


def _inputs(gen, T, V, dtype=torch.float32, scale=3.0, ignore_every=3):
    x = (torch.randn(T, V, generator=gen) * scale).to(dtype)
    labels = torch.randint(0, V, (T,), generator=gen)
    labels[::ignore_every] = -100 if T > 1 else labels[::ignore_every]
    return x, labels


@pytest.mark.parametrize("T,V", SHAPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_fp32_values_and_grads(backend, gen, T, V, smoothing):
    if V == 1 and smoothing:
        smoothing = 0.0  # ε·V/(V-1) is undefined for a one-word vocabulary; the op then ignores it
    x, labels = _inputs(gen, T, V)
    ours, g_ours = R.grad_of(ops.vocab_parallel_cross_entropy, x, labels, label_smoothing=smoothing)
    ref, g_ref = R.grad_of(R.ce, x.double(), labels, label_smoothing=smoothing)
    assert ours.dtype == torch.float32 and ours.shape == (T,)
    assert R.err(ours, ref) <= 2e-5 * (1 + ref.abs().max().item())
    assert R.err(g_ours, g_ref) <= 2e-6
    assert (ours[labels == -100] == 0).all() and (g_ours[labels == -100] == 0).all()


@pytest.mark.parametrize("T,V", [(1, 9), (6, 257)])
def test_token_logprobs_fp32(backend, gen, T, V):
    x, labels = _inputs(gen, T, V)
    ours, g_ours = R.grad_of(ops.token_logprobs, x, labels)
    ref, g_ref = R.grad_of(R.logprobs, x.double(), labels)
    assert R.err(ours, ref) <= 2e-5 * (1 + ref.abs().max().item())
    assert R.err(g_ours, g_ref) <= 2e-6


def test_all_ignored_rows(backend, gen):
    x, _ = _inputs(gen, 4, 11)
    labels = torch.full((4,), -100)
    loss, g = R.grad_of(ops.vocab_parallel_cross_entropy, x, labels, label_smoothing=0.2)
    assert torch.equal(loss, torch.zeros(4)) and torch.equal(g, torch.zeros_like(g))


def test_extreme_logits(backend, gen):
    # ±1e4 logits: fp32 has ~1e-3 absolute resolution there; compare with fp32 torch's own error.
    x = torch.randn(16, 301, generator=gen).sign() * 1e4 + torch.randn(16, 301, generator=gen)
    labels = torch.randint(0, 301, (16,), generator=gen)
    ours, g_ours = R.grad_of(ops.vocab_parallel_cross_entropy, x, labels)
    ref, g_ref = R.grad_of(R.ce, x.double(), labels)
    base, g_base = R.grad_of(lambda t, y: F.cross_entropy(t, y, reduction="none"), x, labels)
    assert torch.isfinite(ours).all() and torch.isfinite(g_ours).all()
    assert R.err(ours, ref) <= 2 * R.err(base, ref) + 1e-6 * 1e4
    assert R.err(g_ours, g_ref) <= 2 * R.err(g_base, g_ref) + 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_low_precision(backend, gen, dtype, smoothing):
    x, labels = _inputs(gen, 24, 515, dtype=dtype)
    ours, g_ours = R.grad_of(ops.vocab_parallel_cross_entropy, x, labels, label_smoothing=smoothing)
    ref, g_ref = R.grad_of(R.ce, x.double(), labels, label_smoothing=smoothing)  # same (rounded) inputs
    eps = smoothing * 515 / 514

    def plain(t, y):  # plain low-precision PyTorch
        return torch.where(y != -100, F.cross_entropy(t, y, reduction="none", label_smoothing=eps), 0.0)

    base, g_base = R.grad_of(plain, x, labels)
    assert ours.dtype == torch.float32 and g_ours.dtype == dtype
    # fp32 accumulation on exactly representable inputs: fp32-level error, and ≤ 2× plain low precision
    assert R.err(ours, ref) <= 2e-5 * (1 + ref.abs().max().item())
    assert R.err(ours, ref) <= 2 * R.err(base, ref) + 1e-5
    assert R.err(g_ours, g_ref) <= 2 * R.err(g_base, g_ref) + 1e-6


def test_inplace_backward(backend, gen):
    x, labels = _inputs(gen, 8, 67, dtype=torch.bfloat16)
    _, g_ref = R.grad_of(ops.vocab_parallel_cross_entropy, x, labels, label_smoothing=0.1)
    leaf = x.clone().requires_grad_(True)
    buf = leaf * 1  # non-leaf buffer, as logits coming out of the output layer
    loss = ops.vocab_parallel_cross_entropy(buf, labels, label_smoothing=0.1, inplace_backward=True)
    ptr = buf.data_ptr()
    w = torch.linspace(-1.0, 2.0, 8)
    (loss * w).sum().backward()
    assert torch.equal(leaf.grad, g_ref)
    assert buf.data_ptr() == ptr and torch.equal(buf.detach(), g_ref)  # the logits buffer now holds the gradient


def test_3d_input_and_gradcheck_fp64(gen):
    x = torch.randn(3, 2, 6, dtype=torch.float64, generator=gen)
    labels = torch.randint(0, 6, (3, 2), generator=gen)
    labels[0, 1] = -100
    out = ops.vocab_parallel_cross_entropy(x, labels)
    assert out.shape == (3, 2) and R.err(out, R.ce(x, labels)) < 1e-12
    for f in (
        lambda t: ops.vocab_parallel_cross_entropy(t, labels, label_smoothing=0.2),
        lambda t: ops.token_logprobs(t, labels),
    ):
        assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),))


def test_errors_name_the_argument(backend):
    x = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="labels\\[1\\] = 7"):
        ops.vocab_parallel_cross_entropy(x, torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.vocab_parallel_cross_entropy(x, torch.tensor([0, 1, 1]), label_smoothing=1.0)
    with pytest.raises(ValueError, match="labels must have shape"):
        ops.token_logprobs(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="labels must be int64"):
        ops.token_logprobs(x, torch.tensor([0, 1, 2], dtype=torch.int32))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_masked_vocab_padding(backend, gen, smoothing):
    """Models mask the padded vocabulary tail with -inf: those columns take no probability and,
    with ``vocab_size``, no label smoothing; the result equals plain CE over the real vocabulary."""
    T, V_real, V_pad = 7, 45, 64
    x = torch.randn(T, V_pad, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, V_real, (T,), generator=gen)
    xm = x.float().clone().requires_grad_(True)
    pad = torch.arange(V_pad) >= V_real
    loss = ops.vocab_parallel_cross_entropy(xm.masked_fill(pad, float("-inf")), y, label_smoothing=smoothing,
                                        vocab_size=V_real)
    loss.sum().backward()
    xr = x[:, :V_real].clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(xr, y, reduction="none", label_smoothing=smoothing * V_real / (V_real - 1))
    ref.sum().backward()
    assert torch.isfinite(loss).all()
    assert (loss.double() - ref).abs().max() <= 2e-5 * (1 + ref.abs().max())
    assert (xm.grad[:, :V_real].double() - xr.grad).abs().max() <= 2e-6
    assert (xm.grad[:, V_real:] == 0).all()
