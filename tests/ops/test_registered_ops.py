"""The compiled primitive ops: torch.library.opcheck (schema, fake kernels, dispatch), direct parity with
the PyTorch twins, and the backend registry."""

import pytest
import torch
from helpers.extension import ext_ok

from megatron_align import ops
from megatron_align.ops import _backend, _reference
from megatron_align.ops.loss_backends import CE_BACKENDS, get_ce_backend


def _ext():
    if not ext_ok():
        pytest.skip("megatron_align._C is not built")
    return torch.ops.megatron_align


def _args(dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(7)
    T, V = 6, 19
    x = torch.randn(T, V, generator=g).to(dtype)
    labels = torch.tensor([3, -100, 25, 20, 0, 18])  # 25, 20 belong to another shard (vocab_start=2)
    w = torch.tensor([1.0, 1.0, 0.0, 0.5, 1.0, 1.0])
    mx, ls, scale = torch.randn(T, generator=g), torch.rand(T, generator=g) + 2, torch.randn(T, generator=g)
    scale[1] = 0
    p, q = torch.randn(T, 7, generator=g), torch.randn(T, 7, generator=g)
    return x, labels, w, mx, ls, scale, p, q


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_opcheck_and_parity_with_reference(dtype):
    C = _ext()
    x, labels, w, mx, ls, scale, p, q = _args(dtype)
    cu = torch.tensor([0, 2, 2, 6])
    cases = [
        (C.ce_row_stats.default, (x, labels, w, 2, 40, -100)),
        (C.ce_row_stats.default, (x, labels, None, 2, 40, -100)),
        (C.softmax_grad.default, (x, labels, mx, ls, scale, 0.9, 0.01, 2)),
        (C.packed_seq_reduce.default, (torch.rand(4, 6) + 0.5, w, cu)),
        (C.topk_kl_forward.default, (p, q)),
        (C.topk_kl_backward.default, (torch.randn(6), p, q, torch.rand(6))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
        ours, ref = op(*args), getattr(_reference, op.name().split("::")[1].split(".")[0])(*args)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 if dtype == torch.float32 else 2e-2)
    buf = x.clone()
    torch.library.opcheck(C.softmax_grad_, (buf, labels, mx, ls, scale, 0.9, 0.01, 2))
    buf = x.clone()
    C.softmax_grad_(buf, labels, mx, ls, scale, 0.9, 0.01, 2)
    assert torch.equal(buf, C.softmax_grad(x, labels, mx, ls, scale, 0.9, 0.01, 2))


def test_row_stats_strided_rows_and_skipped_rows():
    C = _ext()
    big = torch.randn(5, 40)
    x = big[:, 3:30]  # rows with stride 40, unaligned start
    labels = torch.tensor([0, -100, 26, 5, 1])
    st = C.ce_row_stats(x, labels, None, 0, 27, -100)
    torch.testing.assert_close(st, _reference.ce_row_stats(x, labels, None, 0, 27, -100))
    assert st[:, 1].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_op_errors_name_arguments():
    C = _ext()
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="logits must be float32, bfloat16 or float16"):
        C.ce_row_stats(x.double(), torch.zeros(3, dtype=torch.long), None, 0, 4, -100)
    with pytest.raises(RuntimeError, match="labels must be Long"):
        C.ce_row_stats(x, torch.zeros(3, dtype=torch.int32), None, 0, 4, -100)
    with pytest.raises(RuntimeError, match="weights has 2 entries"):
        C.ce_row_stats(x, torch.zeros(3, dtype=torch.long), torch.ones(2), 0, 4, -100)
    with pytest.raises(RuntimeError, match="vocab_start"):
        C.ce_row_stats(x, torch.zeros(3, dtype=torch.long), None, 2, 4, -100)
    with pytest.raises(RuntimeError, match="ref_topk must be float32"):
        C.topk_kl_forward(torch.randn(2, 3), torch.randn(2, 4))


def test_backend_listing_and_forcing():
    names = ops.available_backends()
    assert names[-1] == "torch" and set(names) <= {"cuda", "cpp", "torch"}
    with ops.use_backend("torch"):
        assert ops.active_backend("cpu") == "torch"
    assert ops.active_backend("cpu") == ("cpp" if _backend.extension_loaded() else "torch")
    with pytest.raises(ValueError, match="unknown backend"):
        with ops.use_backend("triton"):
            pass


def test_loss_backend_registry():
    assert set(CE_BACKENDS) == {"fused", "megatron", "te", "fused_linear"}
    x, labels = torch.randn(4, 9), torch.tensor([1, -100, 8, 0])
    torch.testing.assert_close(
        get_ce_backend("fused")(x, labels, tp_group=None, ignore_index=-100, label_smoothing=0.0),
        ops.vocab_parallel_cross_entropy(x, labels),
    )
    with pytest.raises(ValueError, match="model.loss_backend='nope'"):
        get_ce_backend("nope")
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="model.loss_backend='te'"):
            get_ce_backend("te")(x, labels, tp_group=None, ignore_index=-100, label_smoothing=0.0)
