"""Reward model: Bradley-Terry plus the report's alpha-weighted MSE to absolute scores (unit PAIR).

Per pair (x, y_c, y_r) with rewards r_c, r_r read at each response's last token::

    loss = -log sigmoid(r_c - r_r) + alpha_d * [(r_c - s_c)^2 + (r_r - s_r)^2]

where s are the (normalised) absolute scores; a response without a score adds no squared error, and alpha_d is
the weight of the pair's dataset (``rm.mse_alpha``, default 0: pure Bradley-Terry for data without scores). The
loss is the mean over the pairs of the global batch (Baichuan Alignment report, section on the reward model).
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F

from megatron_align.engine.inputs import ModelInputs
from megatron_align.engine.objective import (MetricSpec, Objective, ObjectiveOutput, Unit, grouped_mean,
                                             mean_metric)


def pair_rewards(inputs: ModelInputs, values: torch.Tensor):
    """Per-token scalars [b, s] -> (rewards [n_docs], r_chosen [n_units], r_rejected [n_units]), partners found by
    unit id and role (0 chosen, 1 rejected), never by position."""
    docs = inputs.docs
    r = values.reshape(-1).float()[docs.last]
    n = docs.num_units
    chosen, rejected = docs.role == 0, docs.role == 1
    rc = torch.zeros(n, dtype=r.dtype, device=r.device).index_add(0, docs.unit[chosen], r[chosen])
    rr = torch.zeros(n, dtype=r.dtype, device=r.device).index_add(0, docs.unit[rejected], r[rejected])
    return r, rc, rr


class BradleyTerryMSE(Objective):
    unit = Unit.PAIR

    def __init__(self, groups: Dict[str, Sequence[str]] = None) -> None:
        self.groups = {k: tuple(v) for k, v in (groups or {}).items() if v}
        self.metric_specs = {
            "bt_loss": MetricSpec("mean"), "mse": MetricSpec("mean"), "accuracy": MetricSpec("mean"),
            "margin": MetricSpec("mean"), "reward_mean": MetricSpec("mean"), "reward_sq": MetricSpec("mean"),
            "reward_max": MetricSpec("max"), "reward_min": MetricSpec("min"),
        }
        for name, labels in self.groups.items():
            prefix = "" if name == "category" else f"{name}="
            self.metric_specs[f"accuracy/{prefix}"] = MetricSpec("mean", labels)

    def __call__(self, inputs: ModelInputs, output: torch.Tensor) -> ObjectiveOutput:
        docs = inputs.docs
        dev = output.device
        if docs is None or docs.num_units == 0:
            return self.nothing(output)
        r, rc, rr = pair_rewards(inputs, output)
        bt = -F.logsigmoid(rc - rr)
        score = docs.values["score"].to(r.dtype)
        alpha = docs.values["alpha"].to(r.dtype)
        has = ~torch.isnan(score)
        se = torch.where(has, (r - torch.nan_to_num(score)) ** 2, torch.zeros_like(r))
        loss_sum = bt.sum() + (alpha * se).sum()
        n, d = float(docs.num_units), float(r.numel())
        with torch.no_grad():
            correct = (rc > rr).double()
            metrics = {
                "bt_loss": mean_metric(bt.sum(), n), "mse": mean_metric(se.sum(), has.sum()), "accuracy": mean_metric(correct.sum(), n),
                "margin": mean_metric((rc - rr).sum(), n), "reward_mean": mean_metric(r.sum(), d), "reward_sq": mean_metric((r * r).sum(), d),
                "reward_max": r.max().double(), "reward_min": r.min().double(),
            }
            for name, labels in self.groups.items():
                prefix = "" if name == "category" else f"{name}="
                metrics[f"accuracy/{prefix}"] = grouped_mean(docs.unit_groups[name], correct, len(labels))
        return ObjectiveOutput(loss_sum, torch.tensor(docs.num_units, device=dev), metrics)
