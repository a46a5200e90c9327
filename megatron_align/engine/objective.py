"""The objective contract every stage's loss follows.

An objective never divides. Per micro-batch it returns

- ``loss_sum``: the sum over its *units* in this micro-batch of each unit's loss (a tensor with grad);
- ``count``: how many units of this micro-batch carry loss;
- metrics: ``mean`` metrics as ``[sum, count]`` tensors (the reported value is Σsum / Σcount over the whole
  global batch), ``sum`` metrics, and ``max`` / ``min`` extrema. A metric may be a vector of ``[G, 2]``
  (one row per group, e.g. per category): the reported value is then one number per group.

Its ``unit`` says what ``count`` counts: TOKEN (SFT, GRPO ``bnpo``), SEQUENCE (GRPO ``grpo``), PAIR (RM, DPO),
GROUP. Megatron's schedules run with ``calculate_per_token_loss=True``: the micro-batch sums are
back-propagated as they are and ``finalize_model_grads`` divides the gradients by the global Σcount
(all-reduced over data-parallel ranks). So the loss is the mean over the units of the global batch, whatever the
packing, micro-batch size or TP/PP/DP layout.

A secondary term of another unit (RPO's NLL per token next to DPO's per-pair loss, the KL-to-original per token
next to GRPO) is added by the objective as ``w · sum_u · N_primary / N_u`` with the global counts of
:class:`StepCounts`, which the trainer all-reduces once per step before the first micro-batch; megatron's single
division then yields ``w · sum_u / N_u`` exactly.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch


class Unit(str, enum.Enum):
    TOKEN = "token"
    SEQUENCE = "sequence"
    PAIR = "pair"
    GROUP = "group"


# how a metric is combined over micro-batches, data-parallel ranks and pipeline stages
REDUCTIONS = ("mean", "sum", "max", "min")


@dataclass(frozen=True)
class MetricSpec:
    reduction: str  # one of REDUCTIONS
    groups: Tuple[str, ...] = ()  # named rows of a grouped metric (e.g. categories); () for a scalar

    @property
    def shape(self) -> Tuple[int, ...]:
        rows = (len(self.groups),) if self.groups else ()
        return rows + ((2,) if self.reduction == "mean" else ())


@dataclass
class StepCounts:
    """Global counts of one optimizer step (all micro-batches, all DP ranks), known before the first forward."""

    tokens: float = 0.0  # loss tokens
    sequences: float = 0.0  # documents
    units: float = 0.0  # data units: pairs of a preference stage, groups of GRPO (SFT: == sequences)
    extra: Dict[str, float] = field(default_factory=dict)  # stage counts (Stage.extra_counts), summed over DP

    def of(self, unit: Unit) -> float:
        return {Unit.TOKEN: self.tokens, Unit.SEQUENCE: self.sequences, Unit.PAIR: self.units,
                Unit.GROUP: self.units}[unit]


@dataclass
class ObjectiveOutput:
    loss_sum: torch.Tensor
    count: torch.Tensor  # units carrying loss in this micro-batch
    metrics: Dict[str, torch.Tensor] = field(default_factory=dict)  # name -> value shaped as its MetricSpec


class Objective(abc.ABC):
    """A loss over one micro-batch; see the module docstring for the contract."""

    unit: Unit = Unit.TOKEN
    #: the loss itself is always reported, as "loss" (mean over units)
    metric_specs: Dict[str, MetricSpec] = {}

    def begin_step(self, counts: StepCounts) -> None:
        """Called once per step with the global counts (for secondary terms of another unit)."""
        self.counts = counts

    @abc.abstractmethod
    def __call__(self, inputs, output: torch.Tensor) -> ObjectiveOutput:
        """``inputs``: the micro-batch's :class:`~megatron_align.engine.inputs.ModelInputs`; ``output``: the last
        pipeline stage's output for it (vocab-parallel logits [b, s, V/TP], or per-token scalars [b, s] of a
        reward / value head)."""

    def all_specs(self) -> Dict[str, MetricSpec]:
        return {"loss": MetricSpec("mean"), **self.metric_specs}

    def nothing(self, output: torch.Tensor) -> ObjectiveOutput:
        """The result of a micro-batch without units (padding to the DP maximum): zero loss, neutral metrics."""
        return ObjectiveOutput(empty_output(output), torch.zeros((), device=output.device),
                               {k: neutral(s, output.device) for k, s in self.metric_specs.items()})


def report_for_schedule(objective: Objective, out: ObjectiveOutput):
    """ObjectiveOutput -> megatron's ``(loss, num_tokens, report)`` 3-tuple (``num_tokens`` is our unit count)."""
    count = out.count.detach()
    report = {"loss": torch.stack([out.loss_sum.detach().float().reshape(()), count.float().reshape(())])}
    specs = objective.metric_specs
    for name, value in out.metrics.items():
        if name not in specs:
            raise KeyError(f"{type(objective).__name__} reported metric {name!r} it does not declare")
        report[name] = value.detach().float()
    return out.loss_sum, count.to(torch.int).reshape(()), report


def combine_reports(objective: Objective, reports) -> Dict[str, torch.Tensor]:
    """Combine the per-micro-batch reports of one rank by each metric's reduction."""
    specs = objective.all_specs()
    totals: Dict[str, torch.Tensor] = {}
    for rep in reports or []:
        for key, value in rep.items():
            if key not in totals:
                totals[key] = value.clone()
                continue
            red = specs[key].reduction
            if red in ("mean", "sum"):
                totals[key] = totals[key] + value
            elif red == "max":
                totals[key] = torch.maximum(totals[key], value)
            else:
                totals[key] = torch.minimum(totals[key], value)
    return totals


def neutral(spec: MetricSpec, device) -> torch.Tensor:
    """The value a rank without the metric contributes (zeros for sums, ∓inf for extrema)."""
    fill = {"mean": 0.0, "sum": 0.0, "max": float("-inf"), "min": float("inf")}[spec.reduction]
    return torch.full(spec.shape, fill, dtype=torch.float64, device=device)


def finalize(specs: Dict[str, MetricSpec], values: Dict[str, torch.Tensor], prefix: str = "") -> Dict[str, float]:
    """Globally reduced values -> the numbers a metrics record holds (grouped metrics as ``name/group``;
    a mean with no count anywhere is left out)."""
    out: Dict[str, float] = {}
    for name, spec in specs.items():
        v = values[name].double()
        rows = list(zip(spec.groups, v)) if spec.groups else [(None, v)]
        for group, x in rows:
            key = prefix + (name if group is None else (name + group if name.endswith(("/", "=")) else f"{name}/{group}"))
            if spec.reduction == "mean":
                if float(x[1]) > 0:
                    out[key] = float(x[0] / x[1])
            elif torch.isfinite(x):
                out[key] = float(x)
    return out


def empty_output(output) -> torch.Tensor:
    """A zero loss still connected to the graph (a micro-batch with no unit must still run backward). ``output``
    is a tensor, or the fused LM-head input (hidden states + weight) of ``model.loss_backend=fused_linear``."""
    hidden = getattr(output, "hidden", None)
    return (hidden if hidden is not None else output).sum() * 0.0


def mean_metric(total: torch.Tensor, count) -> torch.Tensor:
    """A mean metric's ``[sum, count]`` (fp64, on the device of ``total``)."""
    count = torch.as_tensor(count, dtype=torch.float64, device=total.device)
    return torch.stack([total.double().reshape(()), count.reshape(())])


def grouped_mean(group_of_unit: torch.Tensor, values: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``[G, 2]`` (sum, count) of per-unit ``values`` by group index (-1: no group)."""
    out = torch.zeros(n_groups, 2, dtype=torch.float64, device=values.device)
    valid = group_of_unit >= 0
    idx = torch.where(valid, group_of_unit, torch.zeros_like(group_of_unit))
    out[:, 0].index_add_(0, idx, values.double() * valid)
    out[:, 1].index_add_(0, idx, valid.double())
    return out
