"""The DPO family on packed preference pairs (unit PAIR; KTO: unit SEQUENCE), with TRL 1.16's definitions.

Notation: ``lc, lr`` the policy's log-probs of the chosen / rejected response, **summed** over response tokens;
``RC, RR`` the same under the reference; ``nc, nr`` response tokens; ``Δ = (lc − RC) − (lr − RR)``; σ the
sigmoid; β ``dpo.beta``; ε ``dpo.label_smoothing``.

=========  ============================================================================================
dpo        −log σ(βΔ)                         (TRL ``sigmoid``; ε > 0: conservative DPO, see below)
cdpo       −(1−ε) log σ(βΔ) − ε log σ(−βΔ)    (``dpo`` with ``dpo.smoothing=conservative``, TRL CPO ``sigmoid``)
robust     [−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε)   (``dpo`` with ``dpo.smoothing=robust``)
ipo        ((lc−RC)/nc − (lr−RR)/nr − 1/(2β))²              (length-normalised, as TRL)
rpo        dpo + α · NLL, NLL = −Σ log p(chosen response tokens) / (chosen response tokens of the batch)
simpo      −(1−ε) log σ(β(āc−ār) − γ) − ε log σ(−(β(āc−ār) − γ)),  ā = l/n   (no reference)
orpo       NLL_full − β · log σ(log_odds), log_odds = (āc−ār) − (log(1−e^āc) − log(1−e^ār)), NLL_full the
           token mean over prompt + response of the chosen sequences of the batch (no reference)
kto        per example: desirable λ_D (1 − σ(β(r − z0))), undesirable λ_U (1 − σ(β(z0 − r))), r = l − R,
           z0 = max(0, mean over the batch of the mismatched log-ratios) (detached)
=========  ============================================================================================

Every loss is the mean over the pairs (examples) of the global batch; the token-mean terms (RPO's and ORPO's NLL)
are normalised by the *global* token count (see engine/objective.py for how a second unit is added).
Metrics as TRL: rewards/chosen = mean β(lc − RC), rewards/rejected, rewards/accuracies = mean 1[r_c > r_r],
rewards/margins, logps/chosen, logps/rejected (mean summed log-probs); reference-free losses report β·ā.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from megatron_align.engine.inputs import ModelInputs
from megatron_align.engine.objective import (MetricSpec, Objective, ObjectiveOutput, Unit, grouped_mean,
                                             mean_metric)

LOSS_TYPES = ("dpo", "ipo", "simpo", "orpo", "kto", "rpo")
REFERENCE_FREE = ("simpo", "orpo")


# ------------------------------------------------------------------------------------------------ pair losses
def sigmoid_loss(z: torch.Tensor, eps: float, smoothing: str) -> torch.Tensor:
    """−log σ(z) with label smoothing ε: conservative (cDPO) or robust (rDPO)."""
    if eps == 0:
        return -F.logsigmoid(z)
    if smoothing == "robust":
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


PairLoss = Callable[..., torch.Tensor]
PAIR_LOSSES: Dict[str, PairLoss] = {}


def register(name: str):
    def deco(fn):
        PAIR_LOSSES[name] = fn
        return fn

    return deco


@register("dpo")
def dpo_loss(c, r, cfg):
    delta = (c.logp - c.ref) - (r.logp - r.ref)
    return sigmoid_loss(cfg.beta * delta, cfg.label_smoothing, cfg.smoothing)


@register("rpo")
def rpo_loss(c, r, cfg):  # the NLL term is added per token by the objective
    return dpo_loss(c, r, cfg)


@register("ipo")
def ipo_loss(c, r, cfg):
    return ((c.logp - c.ref) / c.n - (r.logp - r.ref) / r.n - 1 / (2 * cfg.beta)) ** 2


@register("simpo")
def simpo_loss(c, r, cfg):
    z = cfg.beta * (c.logp / c.n - r.logp / r.n) - cfg.simpo_gamma
    return sigmoid_loss(z, cfg.label_smoothing, "conservative")


def orpo_log_odds(c, r) -> torch.Tensor:
    ac, ar = c.logp / c.n, r.logp / r.n
    return (ac - ar) - (torch.log1p(-torch.exp(ac)) - torch.log1p(-torch.exp(ar)))


@register("orpo")
def orpo_loss(c, r, cfg):  # the NLL term over prompt + response is added per token by the objective
    return -cfg.beta * F.logsigmoid(orpo_log_odds(c, r))


class Side:
    """One side (chosen or rejected) of every pair of a micro-batch: policy sum, reference sum, token count."""

    def __init__(self, logp: torch.Tensor, ref: Optional[torch.Tensor], n: torch.Tensor) -> None:
        self.logp, self.ref, self.n = logp, ref, n.clamp(min=1)


# ------------------------------------------------------------------------------------------------ log-probs
def doc_logps(inputs: ModelInputs, logits: torch.Tensor, *, all_tokens: bool = False):
    """Per document of the micro-batch: (sum of token log-probs [n], tokens [n]) over its response tokens
    (``loss_mask``) or, with ``all_tokens``, over every next-token position of the document (prompt too).
    Vocab-parallel, packed: ``megatron_align.ops.packed_sequence_logprobs`` over the micro-batch's segments."""
    from megatron_align.convert.inference import tp_group_or_none
    from megatron_align.ops import packed_sequence_logprobs

    from megatron_align.ops.fused_linear import LMHeadInput, fused_linear_packed_logprobs

    docs = inputs.docs
    labels = inputs.labels.reshape(-1)
    mask = (labels != -100).float() if all_tokens else inputs.loss_mask.reshape(-1).float()
    cu = inputs.cu_seqlens.to(torch.int64)
    if isinstance(logits, LMHeadInput):  # model.loss_backend=fused_linear: the logits are never materialised
        h = logits
        sums, _ = fused_linear_packed_logprobs(h._flat(), h.weight, labels, cu, loss_mask=mask, tp_group=h.tp_group,
                                               chunk_size=h.chunk_size, vocab_size=h.vocab_size,
                                               reduce_hidden_grad=h.reduce_hidden_grad)
    else:
        sums = packed_sequence_logprobs(logits.reshape(-1, logits.shape[-1]), labels, cu, loss_mask=mask,
                                        tp_group=tp_group_or_none())
    seg = torch.searchsorted(cu[:-1], docs.start)  # the segment of each document (documents start segments)
    counts = torch.zeros(cu.numel() - 1, dtype=torch.float64, device=mask.device)
    counts.index_add_(0, torch.bucketize(torch.arange(labels.numel(), device=cu.device), cu[1:], right=True),
                      mask.double())
    return sums[seg].double(), counts[seg]


def split_pairs(docs, values: torch.Tensor):
    """Per-document values -> (chosen [n_units], rejected [n_units]) by unit id and role."""
    n = docs.num_units
    out = []
    for role in (0, 1):
        sel = docs.role == role
        out.append(torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, docs.unit[sel],
                                                                                       values[sel]))
    return out


# ------------------------------------------------------------------------------------------------ objective
class PreferenceObjective(Objective):
    """Pairwise losses of the registry (unit PAIR), plus the per-token NLL of RPO / ORPO."""

    unit = Unit.PAIR

    def __init__(self, cfg, categories: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.pair_loss = PAIR_LOSSES[cfg.loss_type]
        self.categories = tuple(categories)
        self.metric_specs = {k: MetricSpec("mean") for k in (
            "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected", "pair_loss")}
        if cfg.loss_type in ("rpo", "orpo"):
            self.metric_specs["nll_loss"] = MetricSpec("mean")
        if self.categories:
            self.metric_specs["rewards/accuracies/"] = MetricSpec("mean", self.categories)

    @property
    def needs_reference(self) -> bool:
        return self.cfg.loss_type not in REFERENCE_FREE

    def __call__(self, inputs: ModelInputs, output: torch.Tensor) -> ObjectiveOutput:
        docs = inputs.docs
        dev = output.device
        if docs is None or docs.num_units == 0:
            return self.nothing(output)
        logp, n = doc_logps(inputs, output)
        ref = docs.values.get("ref_logp") if self.needs_reference else None
        (lc, lr), (nc, nr) = split_pairs(docs, logp), split_pairs(docs, n)
        if ref is not None:
            rc, rr = split_pairs(docs, ref.double())
        c, r = Side(lc, rc if ref is not None else None, nc), Side(lr, rr if ref is not None else None, nr)
        per_pair = self.pair_loss(c, r, self.cfg)
        loss_sum = per_pair.sum()
        n_units = float(docs.num_units)
        metrics = {"pair_loss": mean_metric(per_pair.detach().sum(), n_units)}
        if self.cfg.loss_type in ("rpo", "orpo"):
            nll_sum, nll_tokens_key = self._nll(inputs, output, c)
            weight = self.cfg.rpo_alpha if self.cfg.loss_type == "rpo" else 1.0
            n_tokens = max(self.counts.extra[nll_tokens_key], 1.0)
            loss_sum = loss_sum + weight * nll_sum * self.counts.units / n_tokens
            local_tokens = self._local_tokens
            metrics["nll_loss"] = mean_metric(nll_sum.detach(), local_tokens)
        with torch.no_grad():
            beta = self.cfg.beta
            if ref is not None:
                wc, wr = beta * (c.logp - c.ref), beta * (r.logp - r.ref)
            else:
                wc, wr = beta * c.logp / c.n, beta * r.logp / r.n
            correct = (wc > wr).double()
            metrics.update({
                "rewards/chosen": mean_metric(wc.sum(), n_units), "rewards/rejected": mean_metric(wr.sum(), n_units),
                "rewards/accuracies": mean_metric(correct.sum(), n_units), "rewards/margins": mean_metric((wc - wr).sum(), n_units),
                "logps/chosen": mean_metric(c.logp.sum(), n_units), "logps/rejected": mean_metric(r.logp.sum(), n_units)})
            if self.categories:
                metrics["rewards/accuracies/"] = grouped_mean(docs.unit_groups["category"], correct, len(self.categories))
        return ObjectiveOutput(loss_sum, torch.tensor(docs.num_units, device=dev), metrics)

    def _nll(self, inputs, output, c: Side):
        """−Σ log p over the chosen responses (RPO) or the whole chosen sequences (ORPO) of this micro-batch."""
        docs = inputs.docs
        if self.cfg.loss_type == "rpo":
            sums, counts = c.logp, c.n
            key = "chosen_response_tokens"
        else:
            full, n_full = doc_logps(inputs, output, all_tokens=True)
            sums, counts = split_pairs(docs, full)[0], split_pairs(docs, n_full)[0]
            key = "chosen_tokens"
        self._local_tokens = float(counts.sum())
        return -sums.sum(), key



class KTOObjective(Objective):
    """KTO (unit: example). Per example with log-ratio r = l − R (summed over the completion):
    desirable λ_D (1 − σ(β(r − z0))), undesirable λ_U (1 − σ(β(z0 − r))); z0 = max(0, mean over the global batch
    of the mismatched (prompt, completion) log-ratios), detached, set by the stage before the step."""

    unit = Unit.SEQUENCE

    def __init__(self, cfg, categories: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.z0 = 0.0
        self.categories = tuple(categories)
        self.metric_specs = {k: MetricSpec("mean") for k in (
            "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")}

    def __call__(self, inputs: ModelInputs, output: torch.Tensor) -> ObjectiveOutput:
        docs = inputs.docs
        dev = output.device
        if docs is None or docs.num_units == 0:
            return self.nothing(output)
        logp, _ = doc_logps(inputs, output)
        r = logp - docs.values["ref_logp"].double()
        desirable = docs.values["label"] > 0.5
        beta, z0 = self.cfg.beta, float(self.z0)
        loss = torch.where(desirable, self.cfg.kto_desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                           self.cfg.kto_undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))
        n = float(r.numel())
        with torch.no_grad():
            d, u = desirable.double(), (~desirable).double()
            metrics = {"kl": mean_metric(torch.tensor(z0 * n, device=dev), n),
                       "rewards/chosen": mean_metric((beta * r * d).sum(), d.sum()),
                       "rewards/rejected": mean_metric((beta * r * u).sum(), u.sum()),
                       "logps/chosen": mean_metric((logp * d).sum(), d.sum()), "logps/rejected": mean_metric((logp * u).sum(), u.sum())}
        return ObjectiveOutput(loss.sum(), torch.tensor(r.numel(), device=dev), metrics)
