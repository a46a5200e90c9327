"""SFT: token-level cross-entropy, the mean over every loss token of the global batch (unit TOKEN).

Evaluation adds the loss per category (``loss/<category>``: the token mean over that category's samples) and, for
an evaluation set of several named datasets, per dataset (``loss/dataset=<name>``).
"""

from __future__ import annotations

from typing import Sequence

import torch

from megatron_align.engine.inputs import ModelInputs
from megatron_align.engine.objective import MetricSpec, Objective, ObjectiveOutput, Unit


class TokenCrossEntropy(Objective):
    unit = Unit.TOKEN

    def __init__(self, loss_backend: str, categories: Sequence[str] = (), datasets: Sequence[str] = ()) -> None:
        self.loss_backend = loss_backend
        self.categories = tuple(categories)
        # metric name -> (unit group name, its labels)
        self.groups = {name: (group, tuple(labels)) for name, group, labels in
                       (("loss/", "category", categories), ("loss/dataset=", "dataset", datasets)) if labels}
        self.metric_specs = {name: MetricSpec("mean", labels) for name, (_, labels) in self.groups.items()}

    def __call__(self, inputs: ModelInputs, output: torch.Tensor) -> ObjectiveOutput:
        from megatron_align.engine.loss import per_token_loss

        per_token, mask = per_token_loss(inputs, self.loss_backend, output)
        loss_sum = (per_token * mask).sum()
        metrics = {}
        for name, (group, labels) in self.groups.items():
            metrics[name] = self._per_group(inputs, per_token.detach(), mask, group, len(labels))
        return ObjectiveOutput(loss_sum, mask.sum(), metrics)

    @staticmethod
    def _per_group(inputs: ModelInputs, per_token: torch.Tensor, mask: torch.Tensor, group: str, g: int
                   ) -> torch.Tensor:
        """[G, 2] (loss sum, loss tokens) per group (category, dataset), from each token's document -> unit ->
        group."""
        docs = inputs.docs
        out = torch.zeros(g, 2, dtype=torch.float64, device=per_token.device)
        if docs is None or docs.num_units == 0:
            return out
        unit_cat = docs.unit_groups[group]  # [n_units]
        doc_cat = torch.cat([unit_cat[docs.unit], unit_cat.new_full((1,), -1)])  # index -1 -> no category
        doc_of_token = inputs.doc_ids.reshape(-1).clone()
        doc_of_token[doc_of_token < 0] = docs.unit.numel()
        cat = doc_cat[doc_of_token]
        valid = (cat >= 0) & (mask > 0)
        idx = torch.where(valid, cat, torch.zeros_like(cat))
        out[:, 0].index_add_(0, idx, (per_token * mask * valid).double())
        out[:, 1].index_add_(0, idx, (mask * valid).double())
        return out
