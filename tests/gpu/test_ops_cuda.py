"""CUDA kernels vs their CPU twins on the same inputs (skipped without a CUDA device).

Memory checking: run these tests under NVIDIA compute-sanitizer, e.g.
    compute-sanitizer --tool memcheck  .venv/bin/python -m pytest tests/gpu/test_ops_cuda.py -q
    compute-sanitizer --tool racecheck .venv/bin/python -m pytest tests/gpu/test_ops_cuda.py -q -k row_stats
(PYTORCH_NO_CUDA_MEMORY_CACHING=1 makes memcheck see every allocation's exact bounds.)
"""

import pytest
import torch

from megatron_align import ops
from megatron_align.ops import _backend

pytestmark = pytest.mark.gpu

# odd and non-multiple-of-8 widths exercise the scalar head/tail around the 16-byte loads
SHAPES = [(1, 7), (5, 1031), (64, 16032), (3, 152064)]


def _need_cuda_kernels():
    if not _backend._has_cuda_kernels():
        pytest.skip("megatron_align._C was built without CUDA kernels")


def _both(fn, *cpu_args):
    """(CUDA result, CPU result) of fn on the same inputs, with grads of sum(out * w)."""
    outs = []
    for dev in ("cuda", "cpu"):
        args = [a.to(dev) if torch.is_tensor(a) else a for a in cpu_args]
        x = args[0].detach().clone().requires_grad_(True)
        out = fn(x, *args[1:])
        w = torch.linspace(-1, 2, out.numel(), device=dev).reshape(out.shape)
        (out * w).sum().backward()
        outs.append((out.detach().cpu(), x.grad.float().cpu()))
    return outs


@pytest.mark.parametrize("T,V", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cross_entropy_cuda_matches_cpu(T, V, dtype):
    _need_cuda_kernels()
    g = torch.Generator().manual_seed(T * V)
    x = (torch.randn(T, V, generator=g) * 4).to(dtype)
    labels = torch.randint(0, V, (T,), generator=g)
    labels[::4] = -100
    (c, gc), (h, gh) = _both(lambda t, y: ops.vocab_parallel_cross_entropy(t, y, label_smoothing=0.1), x, labels)
    torch.testing.assert_close(c, h, rtol=1e-5, atol=1e-4)
    tol = 1e-6 if dtype == torch.float32 else 1e-2 * gh.abs().max().item()  # one low-precision ulp
    torch.testing.assert_close(gc, gh, rtol=0, atol=max(tol, 1e-6))


@pytest.mark.parametrize("T,V", SHAPES[:3])
def test_packed_and_logprobs_cuda_matches_cpu(T, V):
    _need_cuda_kernels()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, V, generator=g).bfloat16()
    labels = torch.randint(0, V, (T,), generator=g)
    cu = torch.tensor([0, T // 3, T // 3, T])
    mask = torch.rand(T, generator=g) > 0.5
    (c, gc), (h, gh) = _both(lambda t, y: ops.packed_sequence_logprobs(t, y, cu.to(t.device), loss_mask=mask.to(
        t.device), average=True), x, labels)
    torch.testing.assert_close(c, h, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gc, gh, rtol=0, atol=1e-2 * gh.abs().max().item() + 1e-6)
    (c, _), (h, _) = _both(ops.token_logprobs, x, labels)
    torch.testing.assert_close(c, h, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k", [1, 50, 500])
def test_topk_kl_cuda_matches_cpu(k):
    _need_cuda_kernels()
    g = torch.Generator().manual_seed(k)
    p = torch.randn(37, 4001, generator=g)
    r = p + torch.randn(37, 4001, generator=g)
    (c, gc), (h, gh) = _both(lambda t, ref: ops.topk_kl(t, ref, k=k), p, r)
    torch.testing.assert_close(c, h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gc, gh, rtol=1e-4, atol=1e-6)


def test_inplace_backward_cuda():
    _need_cuda_kernels()
    x = torch.randn(16, 16032, device="cuda").bfloat16()
    labels = torch.randint(0, 16032, (16,), device="cuda")
    ref = x.clone().requires_grad_(True)
    ops.vocab_parallel_cross_entropy(ref, labels).sum().backward()
    buf = x.clone().requires_grad_(True) * 1
    ops.vocab_parallel_cross_entropy(buf, labels, inplace_backward=True).sum().backward()
    torch.testing.assert_close(buf.detach(), ref.grad, rtol=0, atol=0)
