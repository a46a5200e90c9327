"""Fused LM head + losses with the device kernels (a GPU, or emulated: see conftest.py) vs float64."""

import pytest
import torch

import loss_refs as R
from megatron_align import ops

T, H, V, V_REAL = 37, 64, 1031, 1024


def _case(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) * 0.3).to(dtype)
    labels = torch.randint(0, V_REAL, (T,), generator=g)
    labels[::6] = -100
    return hidden, weight, labels


def _grads(kdev, fn, hidden, weight, on_device=True):
    ctx = kdev.kernels if on_device else (lambda: ops.use_backend(None))
    dev = kdev.device if on_device else "cpu"
    with ctx():
        h = hidden.detach().to(dev).clone().requires_grad_(True)
        w = weight.detach().to(dev).clone().requires_grad_(True)
        out = fn(h, w)
        (out * torch.linspace(-1, 2, out.numel(), device=out.device)).sum().backward()
    return [t.detach().double().cpu() for t in (out, h.grad, w.grad)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["ce", "logprobs", "topk_kl"])
def test_fused_linear_on_device_vs_float64(kdev, dtype, op):
    hidden, weight, labels = _case(dtype)
    ref_logits = (hidden.double() @ weight.double().t())[:, :V_REAL]
    noise = torch.randn(T, V_REAL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    vals, ids = ops.reference_topk(ref_logits + 0.5 * noise, 50)  # seeded: the same case on every run
    fns = {
        "ce": (lambda h, w: ops.fused_linear_cross_entropy(h, w, labels.to(h.device), chunk_size=16,
                                                           label_smoothing=0.1, vocab_size=V_REAL),
               lambda h, w: R.ce((h @ w.t())[:, :V_REAL], labels, label_smoothing=0.1)),
        "logprobs": (lambda h, w: ops.fused_linear_logprobs(h, w, labels.to(h.device), chunk_size=16,
                                                            vocab_size=V_REAL),
                     lambda h, w: R.logprobs((h @ w.t())[:, :V_REAL], labels)),
        "topk_kl": (lambda h, w: ops.fused_linear_topk_kl(h, w, vals.to(h.device), ids.to(h.device), chunk_size=16,
                                                          vocab_size=V_REAL),
                    lambda h, w: R.topk_kl((h @ w.t())[:, :V_REAL], ref_logits + 0, 50)),
    }
    fn, ref_fn = fns[op]
    if op == "topk_kl":  # the stored reference values are what the fused op renormalises
        ref_fn = lambda h, w: _kl_at((h @ w.t()), vals, ids)  # noqa: E731
    ref = _grads(kdev, ref_fn, hidden.double(), weight.double(), on_device=False)
    for name, on_device in ((kdev.name, True), ("cpu twin", False)):
        ours = _grads(kdev, fn, hidden, weight, on_device)
        for a, b, what in zip(ours, ref, ("value", "grad hidden", "grad weight")):
            # fp32: GEMM rounding; bf16: the chunk logits are rounded to bf16 like the unfused model's
            tol = (2e-5 if dtype == torch.float32 else 3e-2) * (1 + b.abs().max().item())
            assert R.err(a, b) <= tol, f"{name} {op} {what}: {R.err(a, b):.3g} > {tol:.3g}"


def _kl_at(z, vals, ids):
    lp = torch.log_softmax(z.gather(1, ids), dim=-1)
    lq = torch.log_softmax(vals.double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)
