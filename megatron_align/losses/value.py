"""PPO's value loss on the critic's per-token values (unit TOKEN: response tokens only).

Per response token t (a position whose ``loss_mask`` is set: the position that predicts the token)::

    loss_t = 0.5 · max((V_t − R_t)², (clip(V_t, V_old_t − c, V_old_t + c) − R_t)²)

with ``c = rl.ppo.value_clip`` (null: the unclipped ``0.5·(V_t − R_t)²``), the token mean over the global step
(loss sum / global response-token count, as the SFT objective). ``R`` (GAE returns) and ``V_old`` (the values
when the rollout was scored) come as ``[b, s]`` tensors in ``inputs.extra["returns"]`` / ``["old_values"]``,
aligned with the loss mask (:func:`megatron_align.stages.critic.set_token_values` writes them from per-document
tensors). Metrics are sums every layout reduces the same way; explained variance ``1 − Var(R − V) / Var(R)``
is formed from the token means of R, R², R − V and (R − V)² (:func:`explained_variance`).
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from megatron_align.engine.inputs import ModelInputs
from megatron_align.engine.objective import MetricSpec, Objective, ObjectiveOutput, Unit, mean_metric
from megatron_align.losses.rl import clipped_value_loss

RETURNS, OLD_VALUES = "returns", "old_values"


class ValueObjective(Objective):
    unit = Unit.TOKEN
    metric_specs: Dict[str, MetricSpec] = {
        "value_clipfrac": MetricSpec("mean"), "values_mean": MetricSpec("mean"), "returns_mean": MetricSpec("mean"),
        "returns_sq": MetricSpec("mean"), "residual_mean": MetricSpec("mean"), "residual_sq": MetricSpec("mean"),
    }

    def __init__(self, value_clip: Optional[float]) -> None:
        if value_clip is not None and not value_clip > 0:
            raise ValueError(f"value_clip must be > 0 or None, got {value_clip}")
        self.value_clip = value_clip

    def __call__(self, inputs: ModelInputs, output: torch.Tensor) -> ObjectiveOutput:
        mask = inputs.loss_mask.to(output.device).float()
        if not bool((mask > 0).any()):
            return self.nothing(output)
        if RETURNS not in inputs.extra or (self.value_clip is not None and OLD_VALUES not in inputs.extra):
            need = RETURNS if self.value_clip is None else f"{RETURNS} and {OLD_VALUES}"
            raise KeyError(f"ValueObjective: the micro-batch has no per-token {need} in inputs.extra "
                           f"(set them with stages.critic.set_token_values)")
        values = output.float().reshape(mask.shape)  # the THD (TE) forward hands [1, b*s]
        returns = inputs.extra[RETURNS].to(values)
        old = inputs.extra[OLD_VALUES].to(values) if OLD_VALUES in inputs.extra else values.detach()
        m = mask > 0
        # padding positions may hold anything (NaN included): zero them before they meet the graph
        returns, old = torch.where(m, returns, 0.0), torch.where(m, old, 0.0)
        per_token = clipped_value_loss(values, old, returns, self.value_clip)
        loss_sum = (per_token * mask).sum()
        n = mask.sum()
        with torch.no_grad():
            v = values.detach()
            if self.value_clip is None:
                clipped = torch.zeros_like(v)
            else:
                v_clip = old + (v - old).clamp(-self.value_clip, self.value_clip)
                clipped = ((v_clip - returns) ** 2 > (v - returns) ** 2).float()
            res = returns - v
            metrics = {"value_clipfrac": mean_metric((clipped * mask).sum(), n),
                       "values_mean": mean_metric((v * mask).sum(), n),
                       "returns_mean": mean_metric((returns * mask).sum(), n),
                       "returns_sq": mean_metric((returns.double() ** 2 * mask).sum(), n),
                       "residual_mean": mean_metric((res * mask).sum(), n),
                       "residual_sq": mean_metric((res.double() ** 2 * mask).sum(), n)}
        return ObjectiveOutput(loss_sum, n, metrics)


def explained_variance(metrics: Dict[str, float]) -> float:
    """``1 − Var(R − V) / Var(R)`` over the step's response tokens from the reduced token means (NaN when the
    returns do not vary)."""
    var_r = metrics["returns_sq"] - metrics["returns_mean"] ** 2
    var_res = metrics["residual_sq"] - metrics["residual_mean"] ** 2
    return 1.0 - var_res / var_r if var_r > 1e-12 else math.nan
