"""The CUDA kernels (on a GPU, or emulated on the host: see conftest.py) against float64 references.

Every check compares each backend with float64 — the CUDA kernels AND the CPU twin — never one
backend with the other at a tolerance below the twin's own error.

Memory checking on a GPU: run under NVIDIA compute-sanitizer, e.g.
    compute-sanitizer --tool memcheck  python -m pytest tests/gpu/test_ops_cuda.py -q -k "not big"
    compute-sanitizer --tool racecheck python -m pytest tests/gpu/test_ops_cuda.py -q -k cross_entropy_values
(PYTORCH_NO_CUDA_MEMORY_CACHING=1 makes memcheck see every allocation's exact bounds.)
On the host: tests/ops/test_cuda_emulation.py runs this file under AddressSanitizer + UBSan.
"""

import os

import pytest
import torch

import loss_refs as R
from megatron_align import ops

# odd and non-multiple-of-8 widths exercise the scalar head/tail around the 16-byte loads
SHAPES = [(2, 7), (5, 1031), (64, 16032), (3, 152064)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _grad_tol(dtype, g_ref):
    """fp32: a few fp32 ulps of a probability; 16-bit grads: one rounding of the stored dtype."""
    if dtype == torch.float32:
        return 2e-6
    return torch.finfo(dtype).eps * g_ref.abs().max().item() + 1e-6


def _run(ctx, fn, x, *args):
    """(value, d sum(value * w)/dx) of fn(x, *args) inside ctx; fresh leaf, fixed weight w."""
    with ctx():
        leaf = x.detach().clone().requires_grad_(True)
        out = fn(leaf, *args)
        w = torch.linspace(-1, 2, out.numel(), device=out.device).reshape(out.shape)
        (out * w).sum().backward()
    return out.detach().cpu(), leaf.grad.float().cpu()


def _check_both(kdev, twin, fn, ref_fn, x, *args, val_tol=None, grad_tol=None):
    """fn on the kernel device and on the CPU twin, each against ref_fn in float64."""
    ref, g_ref = R.grad_of(ref_fn, x.double(), *args)
    val_tol = val_tol if val_tol is not None else 1e-5 * (1 + ref.abs().max().item())
    grad_tol = grad_tol if grad_tol is not None else _grad_tol(x.dtype, g_ref)
    for name, ctx, dev_args in (
        (kdev.name, kdev.kernels, [kdev.to(a) for a in (x, *args)]),
        ("cpu twin", twin, [x, *args]),
    ):
        out, g = _run(ctx, fn, *dev_args)
        assert R.err(out, ref) <= val_tol, f"{name}: value error {R.err(out, ref):.3g} > {val_tol:.3g}"
        assert R.err(g, g_ref) <= grad_tol, f"{name}: grad error {R.err(g, g_ref):.3g} > {grad_tol:.3g}"


def _inputs(T, V, dtype, seed, ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, V, generator=g) * 4).to(dtype)
    labels = torch.randint(0, V, (T,), generator=g)
    if ignore:
        labels[1::4] = -100  # never the only row: (2, 7) keeps row 0
    return x, labels


@pytest.mark.parametrize("T,V", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_values_and_grads(kdev, twin, T, V, dtype):
    x, labels = _inputs(T, V, dtype, T * V)
    _check_both(kdev, twin, lambda t, y: ops.vocab_parallel_cross_entropy(t, y, label_smoothing=0.1),
                lambda t, y: R.ce(t, y, label_smoothing=0.1), x, labels)


@pytest.mark.parametrize("offset", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_unaligned_rows(kdev, twin, offset, dtype):
    """Rows of a wider buffer (row stride != V) starting 1-3 elements past a 16-byte boundary."""
    T, V, pad = 6, 1031, 13
    base, labels = _inputs(T, V + pad, dtype, offset)
    labels = labels.clamp(max=V - 1).where(labels != -100, labels)

    def view(t):
        return t[:, offset:offset + V]  # a view: stride V + pad, storage offset `offset`

    fn = lambda t, y: ops.vocab_parallel_cross_entropy(view(t), y)  # noqa: E731
    _check_both(kdev, twin, fn, lambda t, y: R.ce(view(t), y), base, labels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_backward_equals_out_of_place(kdev, dtype):
    x, labels = _inputs(16, 16032, dtype, 5)
    x, labels = kdev.to(x), kdev.to(labels)
    with kdev.kernels():
        ref = x.clone().requires_grad_(True)
        ops.vocab_parallel_cross_entropy(ref, labels, label_smoothing=0.1).sum().backward()
        leaf = x.clone().requires_grad_(True)
        buf = leaf * 1
        ops.vocab_parallel_cross_entropy(buf, labels, label_smoothing=0.1, inplace_backward=True).sum().backward()
    assert torch.equal(leaf.grad, ref.grad)
    # strided unaligned rows in place: the gradient lands in the view, padding untouched. (The same
    # view out of place as reference: a row's alignment changes which thread sums which columns.)
    g = torch.Generator().manual_seed(2)
    wide = kdev.to(torch.randn(4, 1031 + 5, generator=g).to(dtype))
    y = kdev.to(torch.randint(0, 1031, (4,), generator=g))
    grads = []
    for inplace in (True, False):
        with kdev.kernels():
            leaf = wide.clone().requires_grad_(True)
            buf = (leaf * 1)[:, 3:3 + 1031]
            ops.vocab_parallel_cross_entropy(buf, y, inplace_backward=inplace).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])
    assert torch.equal(grads[0][:, :3], torch.zeros_like(grads[0][:, :3]))


def test_inplace_backward_on_saved_logits_raises(kdev):
    x, labels = _inputs(4, 1031, torch.float32, 9)
    with kdev.kernels():
        leaf = kdev.to(x).requires_grad_(True)
        y = torch.tanh(leaf / 30)  # tanh saves y: writing the gradient into y must be seen
        loss = ops.vocab_parallel_cross_entropy(y, kdev.to(labels), inplace_backward=True)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.sum().backward()


def test_nonfinite_logits(kdev, twin):
    """-inf columns are masked vocabulary (exact, finite); a NaN or several +inf poison only their row."""
    T, V = 6, 1031
    x, labels = _inputs(T, V, torch.float32, 11, ignore=False)
    x[:, V - 40:] = float("-inf")  # padding columns
    labels = labels.clamp(max=V - 41)
    x[2, 17] = float("nan")
    x[4, 3] = x[4, 9] = float("inf")
    outs = {}
    for name, ctx, dev in ((kdev.name, kdev.kernels, kdev.device), ("twin", twin, "cpu")):
        with ctx():
            outs[name] = ops.vocab_parallel_cross_entropy(x.to(dev), labels.to(dev), vocab_size=V - 40).cpu()
    ref = R.ce(x[:, :V - 40].double(), labels)
    finite = torch.tensor([True, True, False, True, False, True])
    for name, out in outs.items():
        assert torch.equal(torch.isfinite(out), finite), name
        assert R.err(out[finite], ref[finite]) <= 1e-5 * (1 + ref[finite].abs().max().item()), name
    # gradients of the finite rows (the poisoned rows ignored): -inf columns get exactly 0
    labels[~finite] = -100
    _check_both(kdev, twin, lambda t, y: ops.vocab_parallel_cross_entropy(t, y), R.ce,
                torch.where(torch.isnan(x) | torch.isposinf(x), 0.0, x), labels)


@pytest.mark.parametrize("T,V", SHAPES[:3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_and_token_logprobs(kdev, twin, T, V, dtype):
    x, labels = _inputs(T, V, dtype, 1)
    g = torch.Generator().manual_seed(T)
    cu = torch.tensor([0, T // 3, T // 3, T])
    mask = torch.rand(T, generator=g) > 0.5
    _check_both(kdev, twin,
                lambda t, y, c, m: ops.packed_sequence_logprobs(t, y, c, loss_mask=m, average=True),
                lambda t, y, c, m: R.packed(t, y, c, loss_mask=m, average=True), x, labels, cu, mask)
    _check_both(kdev, twin, ops.token_logprobs, R.logprobs, x, labels)


@pytest.mark.parametrize("k", [1, 50, 500])
def test_topk_kl(kdev, twin, k):
    g = torch.Generator().manual_seed(k)
    p = torch.randn(37, 4001, generator=g)
    r = p + torch.randn(37, 4001, generator=g)
    _check_both(kdev, twin, lambda t, ref: ops.topk_kl(t, ref, k=k), lambda t, ref: R.topk_kl(t, ref, k), p, r,
                grad_tol=1e-6)


def test_bad_labels_and_cu_seqlens_raise_on_the_device(kdev):
    """Validation happens on the host before any kernel indexes with them, on every device."""
    if kdev.name == "cuda":
        # Seen on an H200 (2026-11-26, torch 2.11+cu130, extension built by setup.py and by ninja): the first
        # rejected label crashes the process (SIGSEGV in the CUDA-registered op's error path) instead of raising,
        # which also stopped every later GPU test. Kept visible as an expected failure until it is fixed; the same
        # checks pass on CPU and under the CUDA emulation (tests/ops/test_cuda_emulation.py).
        pytest.xfail("segfaults on CUDA in the TORCH_CHECK error path (docs/gpu_notes.md)")
    x, labels = _inputs(5, 97, torch.float32, 3, ignore=False)
    x = kdev.to(x)
    with kdev.kernels():
        for bad in (97, 1000, -1):
            y = labels.clone()
            y[2] = bad
            with pytest.raises(RuntimeError, match=rf"labels\[2\] = {bad} is outside the vocabulary"):
                ops.vocab_parallel_cross_entropy(x, kdev.to(y))
            with pytest.raises(RuntimeError, match="outside the vocabulary"):
                ops.packed_sequence_logprobs(x, kdev.to(y), kdev.to(torch.tensor([0, 5])))
        k = ops._backend.kernels_for(x.device)
        stats = k.ce_row_stats(x, kdev.to(labels), None, 0, 97, -100)
        w = torch.ones(5, device=x.device)
        for cu, msg in (([0, 3, 2, 5], "non-decreasing"), ([0, 2, 9], "exceeds the number of tokens"),
                        ([-4, 2], "must be >= 0")):
            with pytest.raises(RuntimeError, match=msg):
                k.packed_seq_reduce(stats, w, kdev.to(torch.tensor(cu)))  # the op itself
            with pytest.raises(RuntimeError, match=msg):
                ops.packed_sequence_logprobs(x, kdev.to(labels), kdev.to(torch.tensor(cu)))


def _big_ok(kdev) -> bool:
    if kdev.name == "cuda":
        return torch.cuda.mem_get_info()[0] > 12 * 2**30
    return os.environ.get("CUDAEMU_BIG") == "1"


def test_row_offset_beyond_2_31_elements(kdev):
    """Row 1 starts 2^31 + 5 elements into the buffer: 64-bit row offsets throughout."""
    if not _big_ok(kdev):
        pytest.skip("needs ~9 GB (set CUDAEMU_BIG=1 to run it emulated)")
    V, ld = 1031, 2**31 + 5
    buf = torch.empty(ld + V, dtype=torch.bfloat16, device=kdev.device)
    g = torch.Generator().manual_seed(0)
    rows = (torch.randn(2, V, generator=g) * 3).bfloat16()
    buf[:V] = kdev.to(rows[0])
    buf[ld:] = kdev.to(rows[1])
    x = buf.as_strided((2, V), (ld, 1))
    labels = torch.tensor([5, 1030])
    ref = R.ce(rows.double(), labels)
    with kdev.kernels():
        leaf = x.detach().requires_grad_(True)
        out = ops.vocab_parallel_cross_entropy(leaf, kdev.to(labels), inplace_backward=True)
        out.sum().backward()
    assert R.err(out.detach().cpu(), ref) <= 1e-5 * (1 + ref.abs().max().item())
    _, g_ref = R.grad_of(R.ce, rows.double(), labels)
    assert R.err(leaf.grad.float().cpu(), g_ref) <= _grad_tol(torch.bfloat16, g_ref)
