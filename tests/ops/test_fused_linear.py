"""Fused LM head + losses (no [T, V] logits) against float64 references and the unfused ops, TP=1."""

import pytest
import torch

import loss_refs as R
from megatron_align import ops

T, H, V, V_REAL = 29, 24, 83, 77  # odd sizes; 6 padding columns masked like models/gpt.py


def _inputs(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(T, H, generator=g)).to(dtype)
    weight = (torch.randn(V, H, generator=g) * 0.5).to(dtype)
    labels = torch.randint(0, V_REAL, (T,), generator=g)
    labels[3::5] = -100
    return hidden, weight, labels


def _masked_logits(h, w):
    z = h @ w.t()
    return z.masked_fill(torch.arange(V) >= V_REAL, float("-inf"))


def _grads(fn, hidden, weight):
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    out = fn(h, w)
    outs = out if isinstance(out, tuple) else (out,)
    wt = torch.linspace(-1.0, 2.0, outs[0].numel(), dtype=outs[0].dtype).reshape(outs[0].shape)
    (outs[0] * wt).sum().backward()
    return outs[0].detach(), h.grad, w.grad


def _assert_close(ours, ref, what, rtol=2e-5):
    for a, b, name in zip(ours, ref, ("value", "grad hidden", "grad weight")):
        tol = rtol * (1 + b.abs().max().item())
        assert R.err(a, b) <= tol, f"{what}: {name} error {R.err(a, b):.3g} > {tol:.3g}"


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_float64_and_unfused(backend, chunk, smoothing):
    hidden, weight, labels = _inputs(chunk)
    ours = _grads(lambda h, w: ops.fused_linear_cross_entropy(
        h, w, labels, chunk_size=chunk, label_smoothing=smoothing, vocab_size=V_REAL), hidden, weight)
    # float64 reference: smoothing over the real vocabulary (padding excluded)
    ref = _grads(lambda h, w: R.ce((h @ w.t())[:, :V_REAL], labels, label_smoothing=smoothing),
                 hidden.double(), weight.double())
    _assert_close(ours, ref, "vs float64")
    unfused = _grads(lambda h, w: ops.vocab_parallel_cross_entropy(
        _masked_logits(h, w), labels, label_smoothing=smoothing, vocab_size=V_REAL), hidden, weight)
    _assert_close(ours, unfused, "vs unfused", rtol=5e-6)
    assert (ours[0][labels == -100] == 0).all()
    assert torch.isfinite(ours[2]).all()


@pytest.mark.parametrize("chunk", [5, 4096])
def test_logprobs_and_packed(backend, chunk):
    hidden, weight, labels = _inputs(11 + chunk)
    ours = _grads(lambda h, w: ops.fused_linear_logprobs(h, w, labels, chunk_size=chunk, vocab_size=V_REAL),
                  hidden, weight)
    ref = _grads(lambda h, w: R.logprobs((h @ w.t())[:, :V_REAL], labels), hidden.double(), weight.double())
    _assert_close(ours, ref, "logprobs")
    cu = torch.tensor([0, 4, 4, 17, 26], dtype=torch.int32)  # an empty sequence, 3 trailing rows outside
    mask = torch.rand(T, generator=torch.Generator().manual_seed(3)) > 0.3
    sums = _grads(lambda h, w: ops.fused_linear_packed_logprobs(h, w, labels, cu, loss_mask=mask, chunk_size=chunk,
                                                                vocab_size=V_REAL), hidden, weight)
    ref = _grads(lambda h, w: R.packed((h @ w.t())[:, :V_REAL], labels, cu.long(), loss_mask=mask),
                 hidden.double(), weight.double())
    _assert_close(sums, ref, "packed sums")
    _, counts = ops.fused_linear_packed_logprobs(hidden, weight, labels, cu, loss_mask=mask, vocab_size=V_REAL)
    want = torch.tensor([float((mask[a:b] & (labels[a:b] != -100)).sum()) for a, b in zip(cu[:-1], cu[1:])])
    assert torch.equal(counts, want)
    # means equal the unfused average=True
    mean = sums[0] / counts.clamp(min=1)
    unfused = ops.packed_sequence_logprobs(_masked_logits(hidden, weight), labels, cu, loss_mask=mask, average=True)
    assert R.err(mean, unfused) <= 1e-5


@pytest.mark.parametrize("k", [1, 9, 77])
def test_topk_kl_with_stored_reference(backend, k):
    hidden, weight, _ = _inputs(k)
    g = torch.Generator().manual_seed(k + 1)
    ref_logits = _masked_logits(hidden, weight) + torch.randn(T, V, generator=g)
    vals, ids = ops.reference_topk(ref_logits[:, :V_REAL], k)
    ours = _grads(lambda h, w: ops.fused_linear_topk_kl(h, w, vals, ids, chunk_size=6, vocab_size=V_REAL),
                  hidden, weight)
    ref = _grads(lambda h, w: R.topk_kl((h @ w.t())[:, :V_REAL], ref_logits[:, :V_REAL].double(), k),
                 hidden.double(), weight.double())
    _assert_close(ours, ref, "topk_kl")
    unfused = _grads(lambda h, w: ops.topk_kl(_masked_logits(h, w)[:, :V_REAL], ref_logits[:, :V_REAL], k=k),
                     hidden, weight)
    _assert_close(ours, unfused, "topk_kl vs unfused", rtol=5e-6)


def test_bf16_inputs_match_unfused_bf16_logits(backend):
    hidden, weight, labels = _inputs(5, torch.bfloat16)
    ours = _grads(lambda h, w: ops.fused_linear_cross_entropy(h, w, labels, chunk_size=8, vocab_size=V_REAL),
                  hidden, weight)
    unfused = _grads(lambda h, w: ops.vocab_parallel_cross_entropy(_masked_logits(h, w), labels, vocab_size=V_REAL),
                     hidden, weight)
    assert R.err(ours[0], unfused[0]) <= 1e-5 * (1 + unfused[0].abs().max().item())
    for a, b in zip(ours[1:], unfused[1:]):  # bf16 gradients: a few bf16 roundings apart
        assert R.err(a, b) <= 3 * 2**-8 * b.abs().max().item()


def test_errors():
    hidden, weight, labels = _inputs(0)
    with pytest.raises(ValueError, match="same h"):
        ops.fused_linear_cross_entropy(hidden[:, :5], weight, labels)
    with pytest.raises(ValueError, match="loss_chunk_size"):
        ops.fused_linear_cross_entropy(hidden, weight, labels, chunk_size=0)
    with pytest.raises(ValueError, match="labels must be int64"):
        ops.fused_linear_logprobs(hidden, weight, labels[:4])
    with pytest.raises(RuntimeError, match="non-decreasing"):
        ops.fused_linear_packed_logprobs(hidden, weight, labels, torch.tensor([0, 9, 4]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ops.fused_linear_topk_kl(hidden, weight, torch.zeros(T, 2), torch.full((T, 2), V_REAL), vocab_size=V_REAL)
    y = labels.clone()
    y[0] = V + 3
    with pytest.raises(RuntimeError, match=r"labels\[0\] = 86 is outside"):
        ops.fused_linear_cross_entropy(hidden, weight, y)
