"""Fused LM head + losses at TP=2 over gloo: each rank holds half the vocab rows of the output weight;
values, hidden gradients (all-reduced) and each rank's weight-shard gradient equal the TP=1 run, on the
extension and on the PyTorch fallback."""

import pytest
import torch

from helpers.dist import run_distributed

pytestmark = pytest.mark.distributed

T, H, V, V_REAL = 13, 10, 42, 39  # V_local = 21; rank 1 holds the 3 padding columns


def _run(fn, hidden, weight):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    out = fn(h, w)
    out = out[0] if isinstance(out, tuple) else out
    (out * torch.linspace(-1, 2, out.numel())).sum().backward()
    return out.detach(), h.grad, w.grad


def tp_worker():
    import torch.distributed as dist

    from megatron_align import ops

    dist.init_process_group("gloo")
    rank, group = dist.get_rank(), dist.group.WORLD
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * 0.5
    labels = torch.randint(0, V_REAL, (T,), generator=g)
    labels[2] = -100
    ref_logits = hidden @ weight.t() + torch.randn(T, V, generator=g)
    ties = torch.randint(0, 3, (T, V_REAL), generator=g).float()
    cu = torch.tensor([0, 5, 5, 11])
    shard = slice(rank * V // 2, (rank + 1) * V // 2)
    errors = {}
    for backend in (None, "torch"):
        with ops.use_backend(backend):
            vals, ids = ops.reference_topk(ref_logits[:, :V_REAL], 7)
            tvals, tids = ops.reference_topk(ties, 7)
            fns = {
                "ce": lambda h, w, grp: ops.fused_linear_cross_entropy(
                    h, w, labels, tp_group=grp, chunk_size=4, label_smoothing=0.1, vocab_size=V_REAL),
                "logprobs": lambda h, w, grp: ops.fused_linear_logprobs(
                    h, w, labels, tp_group=grp, chunk_size=5, vocab_size=V_REAL),
                "packed": lambda h, w, grp: ops.fused_linear_packed_logprobs(
                    h, w, labels, cu, tp_group=grp, chunk_size=3, vocab_size=V_REAL),
                "topk_kl": lambda h, w, grp: ops.fused_linear_topk_kl(
                    h, w, vals, ids, tp_group=grp, chunk_size=6, vocab_size=V_REAL),
                "topk_kl_ties": lambda h, w, grp: ops.fused_linear_topk_kl(
                    h, w, tvals, tids, tp_group=grp, chunk_size=6, vocab_size=V_REAL),
            }
            for name, fn in fns.items():
                full = _run(lambda h, w: fn(h, w, None), hidden, weight)
                part = _run(lambda h, w: fn(h, w, group), hidden, weight[shard])
                key = f"{backend or 'auto'}/{name}"
                errors[key + "/value"] = (part[0] - full[0]).abs().max().item()
                errors[key + "/grad_hidden"] = (part[1] - full[1]).abs().max().item()
                errors[key + "/grad_weight"] = (part[2] - full[2][shard]).abs().max().item()
        # the reference top-k of a sharded reference equals the unsharded selection (ties included)
        local_vals, local_ids = ops.reference_topk(torch.cat([ties, ties[:, :3]], 1)[:, shard], 7, tp_group=group)
        full_vals, full_ids = ops.reference_topk(torch.cat([ties, ties[:, :3]], 1), 7)
        errors["reference_topk/ids"] = float((local_ids != full_ids).sum())
    return errors


def test_fused_linear_tp2_equals_tp1():
    results = run_distributed(tp_worker, 2, timeout=300)
    for rank, errs in enumerate(results):
        bad = {k: v for k, v in errs.items() if not v <= 2e-6}
        assert not bad, f"rank {rank}: {bad}"
        assert len(errs) == 31
