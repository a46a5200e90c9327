"""TRL 1.16's own preference losses, called on given per-token log-probs (no trainer, no accelerate).

``dpo_trl(...)`` runs ``DPOTrainer._compute_loss`` on a stub model whose output carries the per-token log-probs;
``cpo_trl`` / ``orpo_trl`` call ``CPOTrainer.cpo_loss`` and ``ORPOTrainer.odds_ratio_loss``. Skips (with the
reason) when TRL is missing or its internals moved.
"""

from __future__ import annotations

import collections
import types

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL 1.16 is a test-only dependency (pip install trl==1.16.0)")
if trl.__version__ != "1.16.0":
    pytest.skip(f"the comparison calls TRL 1.16.0 internals; found {trl.__version__}", allow_module_level=True)


class _Acc:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x


def _stub(cls, **attrs):
    obj = object.__new__(cls)
    obj.__dict__.update(accelerator=_Acc(), _metrics={"train": collections.defaultdict(list),
                                                       "eval": collections.defaultdict(list)}, **attrs)
    return obj


def dpo_trl(per_token: torch.Tensor, completion_mask: torch.Tensor, ref_chosen: torch.Tensor,
            ref_rejected: torch.Tensor, *, beta: float, loss_types, loss_weights=None, label_smoothing=0.0) -> float:
    """``per_token`` [2B, L-1] policy log-probs of the next tokens (0 outside completions), rows = chosen then
    rejected; ``completion_mask`` [2B, L] (1 on completion tokens)."""
    from trl import DPOTrainer

    n = per_token.shape[0]
    out = types.SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                                mean_logits=torch.zeros_like(per_token),
                                is_top1=torch.zeros_like(per_token, dtype=torch.bool))

    model = types.SimpleNamespace(training=True)
    trainer = _stub(DPOTrainer, model=model, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                    f_divergence_type="reverse_kl", loss_types=list(loss_types),
                    loss_weights=list(loss_weights or [1.0] * len(loss_types)), beta=beta,
                    label_smoothing=label_smoothing, use_weighting=False, _total_train_tokens=0, _tp_size=1)
    trainer.__dict__["model"] = types.SimpleNamespace(training=True)
    inputs = {"input_ids": torch.zeros(n, completion_mask.shape[1], dtype=torch.long),
              "attention_mask": torch.ones_like(completion_mask), "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = trainer._compute_loss(lambda **kw: out, inputs, return_outputs=False)
    return float(loss[0] if isinstance(loss, tuple) else loss)


def cpo_trl(chosen, rejected, *, loss_type: str, beta: float, label_smoothing=0.0, simpo_gamma=0.5) -> torch.Tensor:
    from trl.experimental.cpo import CPOTrainer

    t = _stub(CPOTrainer, alpha=0.0, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
              simpo_gamma=simpo_gamma)
    return t.cpo_loss(chosen, rejected)[0]


def orpo_trl(avg_chosen, avg_rejected, *, beta: float) -> torch.Tensor:
    from trl.experimental.orpo import ORPOTrainer

    t = _stub(ORPOTrainer, beta=beta)
    return t.odds_ratio_loss(avg_chosen, avg_rejected)[0]


class HFLogProbs:
    """A stand-in for TRL's patched model call ``model(input_ids, attention_mask, labels, fused_lm_head=True)``:
    the per-token log-probs of ``labels`` (0 where -100) from a real transformers model."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, attention_mask=None, labels=None, **unused):
        with torch.no_grad():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.double()
        tgt = labels[:, 1:]
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
        lp = torch.where(tgt == -100, torch.zeros_like(lp), lp).float()
        z = torch.zeros_like(lp)
        return types.SimpleNamespace(log_probs=lp, entropy=z, mean_logits=z, is_top1=z.bool(), aux_loss=None)


def kto_trl(model, batch, *, beta: float, desirable_weight=1.0, undesirable_weight=1.0) -> float:
    """TRL 1.16 ``KTOTrainer._compute_loss`` (loss_type kto, precomputed reference log-probs in ``batch``)."""
    from trl import KTOTrainer

    trainer = _stub(KTOTrainer, model=types.SimpleNamespace(training=True), calculate_KL=True, loss_type="kto",
                    beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                    precompute_ref_logps=True, aux_loss_enabled=False, _total_train_tokens=0, _tp_size=1)
    loss = trainer._compute_loss(HFLogProbs(model), batch, return_outputs=False)
    return float(loss[0] if isinstance(loss, tuple) else loss)
