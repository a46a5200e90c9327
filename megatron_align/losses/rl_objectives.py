"""The GRPO objective on packed rollout micro-batches, and the per-token passes that feed it.

A rollout micro-batch holds whole groups (prompt + completion documents, the completion tokens carry loss).
Per micro-batch the objective

1. computes the policy's per-token log-probs of the completions with ``logits / temperature``
   (``ops.token_logprobs``, vocab-parallel);
2. lays the packed tokens out as ``[documents, tokens]`` (one row per completion, its own mask) and calls the
   RL math of :mod:`megatron_align.losses.rl` on it exactly as on unpacked data: ``clipped_policy_loss``
   (ε_low / ε_high, the KL term with β) and ``reduce_policy_loss`` (TRL's grpo / bnpo / dr_grpo / dapo);
3. the KL to the reference per completion token: the report's exact top-k KL (``losses.rl.kl_topk`` over the
   reference's top-k stored at rollout time, ``ops.topk_kl``), or the k1 / k3 estimator on the stored reference
   token log-probs.

A micro-batch of SFT data (``extra["kl_sft"]``) instead adds ``γ · KL(π‖π_orig)`` per SFT loss token, a second
term of another unit (see engine/objective.py): ``γ · Σkl · N_primary / N_sft_tokens`` with a count of 0.

Per-token stage data rides in ``ModelInputs.extra`` (flattened over the micro-batch's ``b*s`` tokens, or over
its loss positions for the top-k entries), filled by forward-only passes of :class:`Collect`.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch

from megatron_align.engine.inputs import IGNORE_INDEX, ModelInputs
from megatron_align.engine.objective import (MetricSpec, Objective, ObjectiveOutput, Unit, empty_output, mean_metric)


def _tp_group():
    from megatron_align.convert.inference import tp_group_or_none

    return tp_group_or_none()


def sampling_temperature(temperature: float) -> float:
    """The temperature log-probs are taken at: the sampling one, 1 for greedy decoding."""
    return temperature if temperature > 0 else 1.0


def token_logps(inputs: ModelInputs, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(label) of every token of the micro-batch under ``logits / temperature``, fp32 ``[b*s]`` (0 where
    the loss mask is 0); differentiable w.r.t. the logits."""
    from megatron_align.ops import token_logprobs

    mask = inputs.loss_mask.reshape(-1)
    labels = inputs.labels.reshape(-1).masked_fill(mask == 0, IGNORE_INDEX)
    flat = logits.reshape(-1, logits.shape[-1])
    if temperature != 1.0:
        flat = flat / temperature
    return token_logprobs(flat, labels, tp_group=_tp_group())


def loss_positions(inputs: ModelInputs) -> torch.Tensor:
    """Flat indices of the micro-batch's loss tokens (the completion tokens of a rollout row)."""
    return (inputs.loss_mask.reshape(-1) > 0).nonzero().squeeze(-1)


def topk_at_loss_positions(inputs: ModelInputs, logits: torch.Tensor, k: int) -> Dict[str, torch.Tensor]:
    """The top-k logits (fp32) and their global vocab ids at each loss position, ``[n_loss, k]`` each, the same on
    every TP rank (``ops.reference_topk``): what a frozen model (reference, original) contributes to the top-k KL."""
    from megatron_align.ops import reference_topk

    pos = loss_positions(inputs)
    flat = logits.reshape(-1, logits.shape[-1])
    if pos.numel() == 0:  # a padding micro-batch
        return {"vals": flat.new_zeros(0, k, dtype=torch.float32), "ids": pos.new_zeros(0, k)}
    vals, ids = reference_topk(flat.index_select(0, pos), k, tp_group=_tp_group())
    return {"vals": vals.float(), "ids": ids}


def dense_from_topk(vals: torch.Tensor, ids: torch.Tensor, v_local: int) -> torch.Tensor:
    """This TP rank's shard ``[n, V_local]`` of logits that are ``vals`` at ``ids`` and -inf elsewhere: with it,
    ``ops.topk_kl`` selects exactly the stored top-k entries (its input form)."""
    from megatron_align.ops._tp import shard_of

    shard = shard_of(v_local, _tp_group())
    local = ids - shard.vocab_start
    owned = (local >= 0) & (local < v_local)
    out = torch.full((vals.shape[0], v_local), float("-inf"), dtype=torch.float32, device=vals.device)
    rows = torch.arange(out.shape[0], device=out.device).unsqueeze(1).expand_as(local)
    out[rows[owned], local[owned]] = vals[owned].float()
    return out


def stored_topk_kl(logits_at_pos: torch.Tensor, vals: torch.Tensor, ids: torch.Tensor, *, k: int,
                   temperature: float = 1.0) -> torch.Tensor:
    """KL(π‖π_frozen) per position over the frozen model's stored top-k (``losses.rl.kl_topk``), ``[n]`` fp32."""
    from megatron_align.losses.rl import kl_topk

    if logits_at_pos.shape[0] == 0:
        return logits_at_pos.sum(-1).float()
    dense = dense_from_topk(vals, ids, logits_at_pos.shape[-1])
    return kl_topk(logits_at_pos.float(), dense, k=min(k, vals.shape[-1]), temperature=temperature,
                   tp_group=_tp_group())


@torch.no_grad()
def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row ``[n]`` over the vocab-parallel shard (fp32); -inf columns allowed."""
    import torch.distributed as dist

    x = logits.float()
    group = _tp_group()
    m = x.max(-1, keepdim=True).values
    if group is not None:
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    e = torch.exp(x - m)
    px = torch.where(e > 0, e * (x - m), torch.zeros_like(e))
    stats = torch.stack([e.sum(-1), px.sum(-1)])
    if group is not None:
        dist.all_reduce(stats, group=group)
    z, s = stats
    return torch.log(z) - s / z


def doc_token_index(inputs: ModelInputs):
    """``(index [D, L], mask [D, L])``: flat token index of each document's tokens (row = document, L its
    longest) and the loss mask there: the packed micro-batch as unpacked per-completion rows."""
    docs = inputs.docs
    L = int(docs.length.max())
    ar = torch.arange(L, device=docs.start.device)
    valid = ar.unsqueeze(0) < docs.length.unsqueeze(1)
    n = inputs.loss_mask.numel()
    idx = (docs.start.unsqueeze(1) + ar.unsqueeze(0)).clamp(max=n - 1)
    mask = inputs.loss_mask.reshape(-1)[idx] * valid
    return idx, mask


class Collect(Objective):
    """A forward-only pass that stores ``fn(inputs, output)`` (a dict of tensors) into ``inputs.extra`` of each
    micro-batch on the last pipeline stage (old log-probs, a frozen model's top-k or token log-probs)."""

    unit = Unit.TOKEN
    metric_specs: Dict = {}

    def __init__(self, fn: Callable[[ModelInputs, torch.Tensor], Dict[str, torch.Tensor]]) -> None:
        self.fn = fn

    def __call__(self, inputs: ModelInputs, output: torch.Tensor) -> ObjectiveOutput:
        with torch.no_grad():
            inputs.extra.update({k: v.detach() for k, v in self.fn(inputs, output).items()})
        return ObjectiveOutput(empty_output(output), torch.zeros((), device=output.device))


class GRPOObjective(Objective):
    """GRPO's clipped surrogate with TRL's reductions (unit SEQUENCE for grpo / dr_grpo, TOKEN for bnpo / dapo),
    plus β·KL to the reference and γ·KL to the original model on SFT micro-batches."""

    def __init__(self, rl, categories: Sequence[str] = (), kl_in_reward: bool = False) -> None:
        self.rl = rl
        self.temperature = sampling_temperature(rl.rollout.temperature)
        self.unit = Unit.SEQUENCE if rl.loss_type in ("grpo", "dr_grpo") else Unit.TOKEN
        self.use_kl = rl.kl.beta > 0 and not (rl.kl.in_reward or kl_in_reward)
        self.categories = tuple(categories)
        self.generation_tokens: Optional[float] = None  # dapo: completion tokens of the whole rollout batch
        self.metric_specs = {k: MetricSpec("mean") for k in (
            "policy_loss", "entropy", "clip_ratio/low", "clip_ratio/high", "clip_ratio", "ratio")}
        if rl.kl.beta > 0:
            self.metric_specs["kl"] = MetricSpec("mean")
        if rl.kl_sft.gamma > 0:
            self.metric_specs["kl_sft"] = MetricSpec("mean")
        self.metric_specs["ratio_max"] = MetricSpec("max")

    def __call__(self, inputs: ModelInputs, output: torch.Tensor) -> ObjectiveOutput:
        if "kl_sft" in inputs.extra:
            return self._kl_sft(inputs, output)
        docs = inputs.docs
        if docs is None or docs.num_units == 0:
            return self.nothing(output)
        rl = self.rl
        logp_flat = token_logps(inputs, output, self.temperature)
        idx, mask = doc_token_index(inputs)
        logp = logp_flat[idx]
        old = inputs.extra["old_logp"].reshape(-1)[idx] if "old_logp" in inputs.extra else logp.detach()
        kl = kl_flat = None
        if rl.kl.beta > 0 and ("ref_vals" in inputs.extra or "ref_logp" in inputs.extra):
            kl_flat = self._reference_kl(inputs, output, logp_flat)
            kl = kl_flat[idx]
        # per-token advantages (PPO's GAE) when the stage stored them, else one per completion (GRPO)
        adv = inputs.extra["adv_tok"].reshape(-1)[idx].to(logp.dtype) if "adv_tok" in inputs.extra \
            else docs.values["adv"].to(logp.dtype)
        from megatron_align.losses.rl import clipped_policy_loss, reduce_policy_loss

        terms = clipped_policy_loss(logp, old, adv, eps_low=rl.epsilon_low, eps_high=rl.eps_high,
                                    kl=kl if self.use_kl else None, beta=rl.kl.beta if self.use_kl else 0.0,
                                    kl_ratio_correction=rl.kl.ratio_correction and rl.kl.estimator != "topk")
        loss_sum, count, _ = reduce_policy_loss(terms.per_token_loss, mask, rl.loss_type,
                                                max_completion_length=rl.rollout.max_new_tokens)
        if rl.loss_type == "dapo" and self.generation_tokens:
            from megatron_align.losses.rl import dapo_scale

            loss_sum = loss_sum * dapo_scale(self.counts.tokens, self.generation_tokens, rl.steps_per_rollout)
        metrics = self._metrics(inputs, output, terms, mask, loss_sum, kl_flat)
        return ObjectiveOutput(loss_sum, count.to(output.device), metrics)

    # ------------------------------------------------------------------------------------------ pieces
    def _reference_kl(self, inputs, output, logp_flat) -> torch.Tensor:
        """Per-token KL(π‖π_ref) over the micro-batch's flat tokens (0 off the completions)."""
        rl = self.rl
        if rl.kl.estimator == "topk":
            pos = loss_positions(inputs)
            flat = output.reshape(-1, output.shape[-1])
            kl_pos = stored_topk_kl(flat.index_select(0, pos), inputs.extra["ref_vals"], inputs.extra["ref_ids"],
                                    k=rl.kl.top_k, temperature=self.temperature)
            return torch.zeros_like(logp_flat).index_put((pos,), kl_pos.to(logp_flat.dtype))
        from megatron_align.losses.rl import KL_ESTIMATORS

        ref = inputs.extra["ref_logp"].reshape(-1).to(logp_flat.dtype)
        return KL_ESTIMATORS[rl.kl.estimator](logp_flat, ref) * (inputs.loss_mask.reshape(-1) > 0)

    def _metrics(self, inputs, output, terms, mask, loss_sum, kl_flat) -> Dict[str, torch.Tensor]:
        from megatron_align.losses.rl import masked_sum_count

        m = mask > 0
        ratio, low, high = terms.ratio.detach(), terms.low_clipped, terms.high_clipped
        out = {"policy_loss": mean_metric(loss_sum.detach(), self._local_count(mask)),
               "clip_ratio/low": masked_sum_count(low.double(), mask), "clip_ratio/high": masked_sum_count(high.double(), mask),
               "clip_ratio": masked_sum_count((low | high).double(), mask), "ratio": masked_sum_count(ratio, mask),
               "ratio_max": torch.where(m, ratio, torch.full_like(ratio, float("-inf"))).max().double()}
        pos = loss_positions(inputs)
        flat = output.reshape(-1, output.shape[-1]).index_select(0, pos).detach()
        ent = entropy(flat / self.temperature if self.temperature != 1.0 else flat)
        out["entropy"] = mean_metric(ent.double().sum(), float(pos.numel()))
        if kl_flat is not None:
            out["kl"] = mean_metric(kl_flat.detach().double().sum(), float(pos.numel()))
        if "kl_sft" in self.metric_specs:
            out["kl_sft"] = mean_metric(torch.zeros((), device=mask.device), 0.0)
        return out

    def _local_count(self, mask) -> float:
        return float(mask.shape[0]) if self.unit == Unit.SEQUENCE else float(mask.sum())

    def _kl_sft(self, inputs: ModelInputs, output: torch.Tensor) -> ObjectiveOutput:
        """γ · KL(π‖π_orig) on an SFT micro-batch: a token-mean term next to the primary loss."""
        pos = loss_positions(inputs)
        flat = output.reshape(-1, output.shape[-1])
        kl = stored_topk_kl(flat.index_select(0, pos), inputs.extra["orig_vals"], inputs.extra["orig_ids"],
                            k=self.rl.kl_sft.top_k)
        n_sft = max(self.counts.extra.get("kl_sft_tokens", 0.0), 1.0)
        loss_sum = self.rl.kl_sft.gamma * kl.sum() * self.counts.of(self.unit) / n_sft + empty_output(output)
        metrics = {k: _neutral_like(s, output.device) for k, s in self.metric_specs.items()}
        metrics["kl_sft"] = mean_metric(kl.detach().double().sum(), float(pos.numel()))
        return ObjectiveOutput(loss_sum, torch.zeros((), device=output.device), metrics)


def _neutral_like(spec: MetricSpec, device) -> torch.Tensor:
    from megatron_align.engine.objective import neutral

    return neutral(spec, device)
