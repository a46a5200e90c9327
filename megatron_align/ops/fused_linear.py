"""LM head fused with the losses: the ``[tokens, vocab]`` logits are never materialised.

``hidden [T, h]`` (already gathered when sequence parallel: see :func:`lm_head_hidden`) and this TP
rank's vocab shard of the output weight ``[V_local, h]`` go in; tokens are processed in chunks of
``chunk_size`` rows, each chunk's logits ``hidden_c @ weight.T`` ([chunk, V_local], hidden's dtype,
upcast to one fp32 buffer) fed to the same row kernels as the unfused ops (``ce_row_stats``,
``softmax_grad_`` in place, the top-k KL kernels), and dropped. The backward recomputes each chunk's
logits (one extra GEMM), writes the chunk's logit gradient in place into that fp32 buffer and turns it
into ``grad_hidden`` rows and a ``grad_weight`` accumulated in fp32.

Tensor parallelism: the same collectives as the unfused ops (row stats: all-reduce MAX + one SUM of
three stats; top-k KL: one SUM of the gathered policy logits), issued once for all chunks. The hidden
gradient of a vocab shard is partial: ``reduce_hidden_grad=True`` all-reduces it over ``tp_group``
(hidden replicated on the TP ranks); pass False when the caller's own mapping reduces it (megatron's
``gather_from_sequence_parallel_region`` under SP reduce-scatters in its backward).

Vocabulary padding: columns with global id >= ``vocab_size`` (the real vocabulary) get ``-inf`` logits
and exactly zero gradient, as models/gpt.py's output layer masks them.

Memory held by the op beyond its inputs (bytes; c = min(chunk_size, T), Vl = V_local, h, T tokens):
``4·c·Vl`` (the fp32 chunk logits, reused for its gradient) ``+ 2·c·Vl`` (the 16-bit GEMM output before
the upcast; 0 for fp32) ``+ 4·Vl·h`` (fp32 grad_weight accumulator; backward only) ``+ s·Vl·h`` (one
chunk's grad_weight product in the weight's dtype, s bytes per element; backward only)
``+ 16·T`` (row stats) ``+ s·T·h`` (grad_hidden, the op's output). See :func:`fused_linear_bytes`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from megatron_align.ops._backend import kernels_for
from megatron_align.ops._tp import reduce_row_stats, shard_of
from megatron_align.ops.cross_entropy import _megatron_smoothing
from megatron_align.ops.topk_kl import _TopkKLMath

IGNORE_INDEX = -100


@dataclass(frozen=True)
class _Cfg:
    mode: str  # "ce", "logprob" or "topk_kl"
    chunk: int
    ignore_index: int
    smoothing: float  # megatron's s = eps*V/(V-1); 0 outside "ce"
    n_vocab: int  # real vocabulary (smoothing denominator, padding mask)
    tp_group: Optional[dist.ProcessGroup]
    reduce_hidden_grad: bool


def _chunk_logits(hidden_c, weight, shard, n_vocab):
    """fp32 [c, V_local] logits of one chunk, padding columns (global id >= n_vocab) at -inf."""
    z = torch.matmul(hidden_c, weight.t())
    z = z.float() if z.dtype != torch.float64 else z
    n_valid = max(0, min(shard.local, n_vocab - shard.vocab_start))
    if n_valid < shard.local:
        z[:, n_valid:] = float("-inf")
    return z, n_valid


def _add_chunk_grads(g, hidden_c, weight, grad_hidden, grad_w, rows, n_valid):
    """grad_hidden[rows] = g @ weight; grad_w += g.T @ hidden_c (g: fp32 chunk logit gradient)."""
    if n_valid < g.shape[1]:
        g[:, n_valid:] = 0.0  # masked padding: -inf logits take no gradient (as masked_fill's backward)
    gw = g.to(weight.dtype)
    grad_hidden[rows] = torch.matmul(gw, weight).to(grad_hidden.dtype)
    grad_w.add_(torch.matmul(gw.t(), hidden_c))


class _FusedLinearRows(torch.autograd.Function):
    """Per-token CE / log-prob / top-k KL of ``hidden @ weight.T`` without the full logits."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, ref_vals, ref_ids, cfg: _Cfg):
        T = hidden.shape[0]
        shard = shard_of(weight.shape[0], cfg.tp_group)
        k = kernels_for(hidden.device, torch.float32 if hidden.dtype != torch.float64 else torch.float64)
        acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        if cfg.mode == "topk_kl":
            local = ref_ids - shard.vocab_start
            owned = (local >= 0) & (local < shard.local)
            col = local.clamp(0, shard.local - 1)
            pol = torch.zeros(ref_ids.shape, dtype=acc_dtype, device=hidden.device)
            for a in range(0, T, cfg.chunk):
                z, _ = _chunk_logits(hidden[a:a + cfg.chunk], weight, shard, cfg.n_vocab)
                pol[a:a + cfg.chunk] = torch.where(owned[a:a + cfg.chunk], z.gather(1, col[a:a + cfg.chunk]), 0.0)
                del z
            if shard.world > 1:
                dist.all_reduce(pol, op=dist.ReduceOp.SUM, group=cfg.tp_group)
            kl, saved = _TopkKLMath.forward(pol, ref_vals.to(acc_dtype))
            ctx.save_for_backward(hidden, weight, col, owned, *saved)
            ctx.cfg, ctx.shard = cfg, shard
            return kl
        stats = torch.empty(4, T, dtype=acc_dtype, device=hidden.device)
        for a in range(0, T, cfg.chunk):
            z, _ = _chunk_logits(hidden[a:a + cfg.chunk], weight, shard, cfg.n_vocab)
            stats[:, a:a + cfg.chunk] = k.ce_row_stats(z, labels[a:a + cfg.chunk], None, shard.vocab_start,
                                                       shard.vocab_size, cfg.ignore_index)
            del z
        m, s, target, sumz = reduce_row_stats(stats, cfg.tp_group).unbind(0)
        logsum = torch.log(s)
        valid = labels != cfg.ignore_index
        if cfg.mode == "ce":
            loss = (m - target) + logsum
            if cfg.smoothing > 0:
                loss = (1.0 - cfg.smoothing) * loss + cfg.smoothing * ((m - sumz / cfg.n_vocab) + logsum)
        else:
            loss = (target - m) - logsum
        ctx.save_for_backward(hidden, weight, labels, m.contiguous(), logsum.contiguous(), valid)
        ctx.cfg, ctx.shard = cfg, shard
        return torch.where(valid, loss, torch.zeros_like(loss))

    @staticmethod
    def backward(ctx, grad_out):
        cfg, shard = ctx.cfg, ctx.shard
        hidden, weight = ctx.saved_tensors[:2]
        T = hidden.shape[0]
        acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        grad_hidden = torch.empty_like(hidden)
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device)
        if cfg.mode == "topk_kl":
            col, owned, *saved = ctx.saved_tensors[2:]
            g_pol = _TopkKLMath.backward(grad_out.to(acc_dtype).contiguous(), saved)
            g_pol = torch.where(owned, g_pol, 0.0)
            n_valid = max(0, min(shard.local, cfg.n_vocab - shard.vocab_start))
            for a in range(0, T, cfg.chunk):
                rows = slice(a, min(a + cfg.chunk, T))
                g = torch.zeros(rows.stop - a, shard.local, dtype=acc_dtype, device=hidden.device)
                g.scatter_add_(1, col[rows], g_pol[rows])
                _add_chunk_grads(g, hidden[rows], weight, grad_hidden, grad_w, rows, n_valid)
                del g
        else:
            labels, m, logsum, valid = ctx.saved_tensors[2:]
            g_tok = grad_out.to(acc_dtype)
            g_tok = g_tok if cfg.mode == "ce" else -g_tok
            scale = torch.where(valid, g_tok, torch.zeros_like(g_tok)).contiguous()
            coefs = (1.0 - cfg.smoothing, cfg.smoothing / cfg.n_vocab)
            k = kernels_for(hidden.device, acc_dtype)
            for a in range(0, T, cfg.chunk):
                rows = slice(a, min(a + cfg.chunk, T))
                z, n_valid = _chunk_logits(hidden[rows], weight, shard, cfg.n_vocab)
                k.softmax_grad_(z, labels[rows], m[rows], logsum[rows], scale[rows], *coefs, shard.vocab_start)
                _add_chunk_grads(z, hidden[rows], weight, grad_hidden, grad_w, rows, n_valid)
                del z
        if cfg.reduce_hidden_grad and shard.world > 1:
            dist.all_reduce(grad_hidden, op=dist.ReduceOp.SUM, group=cfg.tp_group)
        return grad_hidden, grad_w.to(weight.dtype), None, None, None, None


def _check(hidden, weight, chunk_size):
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be [tokens, h] and weight [V_local, h] with the same h; got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have the same dtype")
    if chunk_size < 1:
        raise ValueError(f"chunk_size (model.loss_chunk_size) must be >= 1, got {chunk_size}")


def _cfg(mode, hidden, weight, chunk_size, ignore_index, label_smoothing, vocab_size, tp_group, reduce_hidden_grad):
    _check(hidden, weight, chunk_size)
    shard = shard_of(weight.shape[0], tp_group)
    n_vocab = vocab_size or shard.vocab_size
    if not 1 <= n_vocab <= shard.vocab_size:
        raise ValueError(f"vocab_size must be in [1, {shard.vocab_size}] (the padded vocabulary), got {vocab_size}")
    smoothing = _megatron_smoothing(label_smoothing, n_vocab) if mode == "ce" else 0.0
    return _Cfg(mode, int(chunk_size), int(ignore_index), smoothing, n_vocab, tp_group, bool(reduce_hidden_grad))


def _labels(labels, hidden):
    if labels.shape != hidden.shape[:1] or labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64 [{hidden.shape[0]}] (global vocab ids), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    return labels.contiguous()


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                               tp_group: Optional[dist.ProcessGroup] = None, ignore_index: int = IGNORE_INDEX,
                               chunk_size: int = 4096, label_smoothing: float = 0.0,
                               vocab_size: Optional[int] = None, reduce_hidden_grad: bool = True) -> torch.Tensor:
    """Per-token cross-entropy of ``hidden @ weight.T`` (vocab-parallel), fp32 ``[T]``, 0 where ignored.

    Same values and gradients as ``vocab_parallel_cross_entropy(hidden @ weight.T, labels, ...)`` with
    the padding columns (global id >= ``vocab_size``) masked to ``-inf``; label smoothing as there."""
    cfg = _cfg("ce", hidden, weight, chunk_size, ignore_index, label_smoothing, vocab_size, tp_group,
               reduce_hidden_grad)
    return _FusedLinearRows.apply(hidden, weight, _labels(labels, hidden), None, None, cfg)


def fused_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                          tp_group: Optional[dist.ProcessGroup] = None, ignore_index: int = IGNORE_INDEX,
                          chunk_size: int = 4096, vocab_size: Optional[int] = None,
                          reduce_hidden_grad: bool = True) -> torch.Tensor:
    """``log p(label)`` per token of ``hidden @ weight.T``, fp32 ``[T]`` (0 where ignored)."""
    cfg = _cfg("logprob", hidden, weight, chunk_size, ignore_index, 0.0, vocab_size, tp_group, reduce_hidden_grad)
    return _FusedLinearRows.apply(hidden, weight, _labels(labels, hidden), None, None, cfg)


def fused_linear_packed_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                 cu_seqlens: torch.Tensor, *, loss_mask: Optional[torch.Tensor] = None,
                                 tp_group: Optional[dist.ProcessGroup] = None, chunk_size: int = 4096,
                                 vocab_size: Optional[int] = None, reduce_hidden_grad: bool = True
                                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per packed sequence: (sum of ``w·log p(label)``, sum of ``w``), both fp32 ``[num_seqs]``.

    Sequence i is rows ``cu_seqlens[i]:cu_seqlens[i+1]``; ``w`` is ``loss_mask`` (bool or float;
    default 1) and 0 where ``labels == -100`` or outside ``[cu[0], cu[-1])``. Means: ``sums / counts``
    (as ``packed_sequence_logprobs(..., average=True)``, which gives 0 for an empty sequence)."""
    from megatron_align.ops._reference import check_cu_seqlens, segment_ids

    T = hidden.shape[0]
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be int32/int64 1-D with num_seqs + 1 entries, got {cu_seqlens.dtype} "
                         f"{tuple(cu_seqlens.shape)}")
    check_cu_seqlens(cu_seqlens.to(torch.int64), T)
    cu = cu_seqlens.to(device=hidden.device, dtype=torch.int64)
    labels = _labels(labels, hidden)
    acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    w = torch.ones(T, dtype=acc_dtype, device=hidden.device) if loss_mask is None else \
        loss_mask.reshape(T).to(device=hidden.device, dtype=acc_dtype)
    seg = segment_ids(cu, T)
    w = torch.where((labels != IGNORE_INDEX) & (seg >= 0), w, torch.zeros_like(w))
    lp = fused_linear_logprobs(hidden, weight, torch.where(w != 0, labels, IGNORE_INDEX), tp_group=tp_group,
                               chunk_size=chunk_size, vocab_size=vocab_size, reduce_hidden_grad=reduce_hidden_grad)
    S = cu.numel() - 1
    inside = seg >= 0
    sums = torch.zeros(S, dtype=acc_dtype, device=hidden.device).index_add(0, seg[inside], (w * lp)[inside])
    counts = torch.zeros(S, dtype=acc_dtype, device=hidden.device).index_add(0, seg[inside], w[inside])
    return sums, counts


def fused_linear_topk_kl(hidden: torch.Tensor, weight: torch.Tensor, ref_topk_values: torch.Tensor,
                         ref_topk_ids: torch.Tensor, *, tp_group: Optional[dist.ProcessGroup] = None,
                         chunk_size: int = 4096, vocab_size: Optional[int] = None,
                         reduce_hidden_grad: bool = True) -> torch.Tensor:
    """Per-token KL(π‖π_ref) over a stored reference top-k, fp32 ``[T]`` (as :func:`ops.topk_kl`).

    ``ref_topk_values [T, k]`` are the reference logits at global vocab ids ``ref_topk_ids [T, k]``
    (e.g. from ``ops.topk_kl``'s selection, stored at rollout time so the reference's full logits need
    not be kept); both sides are renormalised over those k entries."""
    cfg = _cfg("topk_kl", hidden, weight, chunk_size, IGNORE_INDEX, 0.0, vocab_size, tp_group, reduce_hidden_grad)
    if ref_topk_values.shape != ref_topk_ids.shape or ref_topk_ids.dim() != 2 or \
            ref_topk_ids.shape[0] != hidden.shape[0] or ref_topk_ids.dtype != torch.int64:
        raise ValueError(f"ref_topk_values and ref_topk_ids must both be [{hidden.shape[0]}, k] (ids int64), got "
                         f"{tuple(ref_topk_values.shape)} and {ref_topk_ids.dtype} {tuple(ref_topk_ids.shape)}")
    bad = (ref_topk_ids < 0) | (ref_topk_ids >= cfg.n_vocab)
    if bool(bad.any()):
        raise ValueError(f"ref_topk_ids has ids outside the vocabulary [0, {cfg.n_vocab}) "
                         f"(first at {tuple(int(i) for i in bad.nonzero()[0])})")
    return _FusedLinearRows.apply(hidden, weight, None, ref_topk_values.detach(), ref_topk_ids.contiguous(), cfg)


def fused_linear_bytes(tokens: int, v_local: int, hidden: int, *, chunk_size: int = 4096, dtype_bytes: int = 2,
                       backward: bool = True) -> int:
    """Peak bytes the fused_linear loss path holds beyond its inputs (one TP rank); see the module doc."""
    c = min(chunk_size, tokens)
    b = 4 * c * v_local + (0 if dtype_bytes == 4 else dtype_bytes * c * v_local) + 16 * tokens
    if backward:
        b += 4 * v_local * hidden + dtype_bytes * v_local * hidden + dtype_bytes * tokens * hidden
    return b


def materialised_logits_bytes(tokens: int, v_local: int, *, dtype_bytes: int = 2, backward: bool = True) -> int:
    """Bytes of the unfused path ('fused' CE on materialised logits, kernels read 16-bit logits
    directly): the [T, V_local] logits saved for backward, plus their gradient in backward."""
    return dtype_bytes * tokens * v_local * (2 if backward else 1) + 16 * tokens


@dataclass
class LMHeadInput:
    """What the output layer returns in place of logits when ``model.loss_backend == fused_linear``:
    the hidden states ``[..., h]`` (gathered over the sequence when sequence parallel) and this TP
    rank's output weight ``[V_local, h]``; the loss (``engine/loss.py::per_token_loss``) runs the fused
    op on them. ``reduce_hidden_grad`` is False when the producer's mapping already reduces the
    hidden gradient over TP (megatron's SP gather reduce-scatters it)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    vocab_size: int  # the real vocabulary: padding columns beyond it are masked
    chunk_size: int = 4096
    tp_group: Optional[dist.ProcessGroup] = None
    reduce_hidden_grad: bool = True

    # GPTModel returns ``logits.transpose(0, 1).contiguous()`` ([s, b] -> [b, s]): act on the hidden states
    def transpose(self, d0: int, d1: int) -> "LMHeadInput":
        return dataclasses.replace(self, hidden=self.hidden.transpose(d0, d1))

    def contiguous(self) -> "LMHeadInput":
        return dataclasses.replace(self, hidden=self.hidden.contiguous())

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def shape(self) -> torch.Size:
        """The shape the logits would have: [..., V_local]."""
        return torch.Size((*self.hidden.shape[:-1], self.weight.shape[0]))

    def _flat(self):
        return self.hidden.reshape(-1, self.hidden.shape[-1])

    def cross_entropy(self, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX,
                      label_smoothing: float = 0.0) -> torch.Tensor:
        """Per-token CE, fp32, flattened like ``labels.reshape(-1)``."""
        return fused_linear_cross_entropy(self._flat(), self.weight, labels.reshape(-1), tp_group=self.tp_group,
                                          ignore_index=ignore_index, chunk_size=self.chunk_size,
                                          label_smoothing=label_smoothing, vocab_size=self.vocab_size,
                                          reduce_hidden_grad=self.reduce_hidden_grad)

    def logprobs(self, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """Per-token ``log p(label)``, fp32, flattened like ``labels.reshape(-1)``."""
        return fused_linear_logprobs(self._flat(), self.weight, labels.reshape(-1), tp_group=self.tp_group,
                                     ignore_index=ignore_index, chunk_size=self.chunk_size,
                                     vocab_size=self.vocab_size, reduce_hidden_grad=self.reduce_hidden_grad)

    def logits(self) -> torch.Tensor:
        """Materialise this rank's logits ``[..., V_local]`` (padding at -inf) for code that needs them."""
        z = torch.matmul(self.hidden, self.weight.t())
        start = shard_of(self.weight.shape[0], self.tp_group).vocab_start
        pad = torch.arange(start, start + self.weight.shape[0], device=z.device) >= self.vocab_size
        return z.masked_fill(pad, float("-inf")) if bool(pad.any()) else z
