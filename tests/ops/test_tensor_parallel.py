"""TP=2 and TP=4 over gloo: every op on vocab shards equals the unsharded op (values and gradients),
on both the extension and the PyTorch fallback; CE equals megatron-core's vocab_parallel_cross_entropy.

One spawned run per TP size (process start-up dominates on 2 cores); each rank returns max errors.
"""

import pytest
import torch

from helpers.dist import run_distributed

pytestmark = pytest.mark.distributed

T, V_GLOBAL = 11, 84  # V_local = 42 (TP=2) / 21 (TP=4): odd, not a multiple of 8


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _shard_grad(fn, x, shard):
    """(value, grad of sum(value * w) w.r.t. this rank's shard of x)."""
    xs = shard(x).detach().clone().requires_grad_(True)
    out = fn(xs)
    w = torch.linspace(-1.0, 2.0, out.numel()).reshape(out.shape)
    (out * w).sum().backward()
    return out.detach(), xs.grad


def tp_worker(tp: int):
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as megatron_ce

    from megatron_align import ops
    from megatron_align.ops.loss_backends import get_ce_backend

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    group = parallel_state.get_tensor_model_parallel_group()
    v_local = V_GLOBAL // tp

    g = torch.Generator().manual_seed(99)
    x = torch.randn(T, V_GLOBAL, generator=g) * 3
    ref_logits = x + torch.randn(T, V_GLOBAL, generator=g)
    labels = torch.randint(0, V_GLOBAL, (T,), generator=g)
    labels[4] = -100
    cu = torch.tensor([0, 3, 3, 8, 10])
    mask = torch.rand(T, generator=g) > 0.2
    ties = torch.randint(0, 3, (T, V_GLOBAL), generator=g).bfloat16()  # most of a row ties at the k-th value

    def shard(t):
        return t[:, rank * v_local:(rank + 1) * v_local]

    errors = {}
    for backend in (None, "torch"):
        with ops.use_backend(backend):
            fns = {
                "ce": lambda t, grp: ops.vocab_parallel_cross_entropy(t, labels, tp_group=grp),
                "ce_smooth": lambda t, grp: ops.vocab_parallel_cross_entropy(
                    t, labels, label_smoothing=0.1, tp_group=grp),
                "logprobs": lambda t, grp: ops.token_logprobs(t, labels, tp_group=grp),
                "packed_sum": lambda t, grp: ops.packed_sequence_logprobs(t, labels, cu, tp_group=grp),
                "packed_avg": lambda t, grp: ops.packed_sequence_logprobs(
                    t, labels, cu, loss_mask=mask, average=True, tp_group=grp),
                "topk_kl": lambda t, grp: ops.topk_kl(
                    t, ref_logits if grp is None else shard(ref_logits), k=9, tp_group=grp),
                "topk_kl_ties": lambda t, grp: ops.topk_kl(
                    t, ties if grp is None else shard(ties), k=9, tp_group=grp),
                "topk_kl_clamped": lambda t, grp: ops.topk_kl(
                    t, ref_logits if grp is None else shard(ref_logits), k=1000, tp_group=grp),
            }
            for name, fn in fns.items():
                full, g_full = _shard_grad(lambda t: fn(t, None), x, lambda t: t)
                part, g_part = _shard_grad(lambda t: fn(t, group), x, shard)
                errors[f"{backend or 'auto'}/{name}/value"] = _err(part, full)
                errors[f"{backend or 'auto'}/{name}/grad"] = _err(g_part, shard(g_full))

    # megatron-core's CE on the same shards ([S, B, V] with B = 1); no label smoothing under TP>1
    # (megatron smooths over the local shard there). It runs on CPU without workarounds.
    safe = torch.where(labels == -100, 0, labels)
    ours, g_ours = _shard_grad(lambda t: ops.vocab_parallel_cross_entropy(t, safe, tp_group=group), x, shard)
    meg, g_meg = _shard_grad(lambda t: megatron_ce(t[:, None, :], safe[:, None]).squeeze(1), x, shard)
    errors["megatron/value"] = _err(ours, meg)
    errors["megatron/grad"] = _err(g_ours, g_meg)
    via, g_via = _shard_grad(lambda t: get_ce_backend("megatron")(
        t, labels, tp_group=group, ignore_index=-100, label_smoothing=0.0), x, shard)
    fused, g_fused = _shard_grad(lambda t: get_ce_backend("fused")(
        t, labels, tp_group=group, ignore_index=-100, label_smoothing=0.0), x, shard)
    errors["registry megatron-vs-fused/value"] = _err(via, fused)
    errors["registry megatron-vs-fused/grad"] = _err(g_via, g_fused)
    parallel_state.destroy_model_parallel()
    if tp == 2:  # same processes, TP=1 (DP=2): megatron's smoothing is over the full vocab there
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
        errors.update(_smoothing_vs_megatron())
        parallel_state.destroy_model_parallel()
    return errors


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_shards_match_unsharded_and_megatron(tp):
    results = run_distributed(tp_worker, tp, tp, timeout=300)
    for rank, errs in enumerate(results):
        bad = {k: v for k, v in errs.items() if not v <= 1e-5}
        assert not bad, f"rank {rank}: {bad}"
        assert len(errs) == (40 if tp == 2 else 36)


def _smoothing_vs_megatron():
    """At TP=1 megatron-core smooths with s = ε·V/(V-1) over the whole vocab: ours must equal it."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as megatron_ce

    from megatron_align import ops
    from megatron_align.ops.loss_backends import get_ce_backend

    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 2, 31, generator=g) * 2  # [S, B, V]
    y = torch.randint(0, 31, (9, 2), generator=g)
    ours, g_ours = _shard_grad(lambda t: ops.vocab_parallel_cross_entropy(t, y, label_smoothing=0.15), x, lambda t: t)
    meg, g_meg = _shard_grad(lambda t: megatron_ce(t, y, 0.15), x, lambda t: t)
    via, g_via = _shard_grad(lambda t: get_ce_backend("megatron")(
        t, y, tp_group=None, ignore_index=-100, label_smoothing=0.15), x, lambda t: t)
    return {"megatron-smoothing/value": _err(ours, meg), "megatron-smoothing/grad": _err(g_ours, g_meg),
            "registry-smoothing/value": _err(via, meg), "registry-smoothing/grad": _err(g_via, g_meg)}
