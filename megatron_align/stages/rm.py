"""The reward-model stage on the trainer core: preference pairs -> (chosen, rejected) packed as two isolated
documents of one row -> scalar head read at each document's last token -> Bradley-Terry + alpha * MSE, the mean
over the pairs of the global batch. Eval reports accuracy overall, per ``category`` and per ``dataset``."""

from __future__ import annotations

import math
from typing import Dict, List

import numpy as np

from megatron_align.config.rm import RMConfig
from megatron_align.engine.trainer import Stage, StageData, Trainer, run_trainer


def open_pairs(path: str, cfg, template, vocab_size=None):
    from megatron_align.data.config import single_path
    from megatron_align.data.preference import PreferenceDataset

    path = single_path(path, "preference")
    return PreferenceDataset(path, template, cfg.seq_length, cfg.overlong, cfg.on_bad_line, vocab_size, cfg.format)


def normalize_scores(datasets: List, mode: str, score_range=None) -> Dict[str, Dict[str, float]]:
    """Normalise every document's ``score`` in place (the statistics of ``zscore`` come from the first dataset,
    the training set); returns the per-dataset {mean, std, n} used."""
    units = datasets[0].units()
    stats: Dict[str, Dict[str, float]] = {}
    if mode == "zscore":
        by_ds: Dict[str, List[float]] = {}
        for u in units:
            by_ds.setdefault(u.dataset, []).extend(d.values["score"] for d in u.docs if not math.isnan(d.values["score"]))
        for name, xs in by_ds.items():
            if xs:
                std = float(np.std(xs))
                stats[name] = {"mean": float(np.mean(xs)), "std": std if std > 0 else 1.0, "n": len(xs)}
    for ds in datasets:
        if ds is None:
            continue
        for u in ds.units():
            for d in u.docs:
                s = d.values["score"]
                if math.isnan(s) or mode == "none":
                    continue
                if mode == "range":
                    lo, hi = score_range
                    d.values["score"] = (s - lo) / (hi - lo)
                else:
                    st = stats.get(u.dataset)
                    d.values["score"] = (s - st["mean"]) / st["std"] if st else float("nan")
    return stats


class RMStage(Stage):
    name = "rm"
    value_keys = ("score", "alpha")

    def build_data(self, arch) -> StageData:
        from megatron_align.data.builder import tokenizer_and_template

        cfg = self.cfg
        tok, template = tokenizer_and_template(cfg.data, arch)
        train = open_pairs(cfg.data.path, cfg.data, template, arch.vocab_size)
        evalds = open_pairs(cfg.data.eval_path, cfg.data, template, arch.vocab_size) if cfg.data.eval_path else None
        normalize_scores([train, evalds], cfg.rm.score_normalization, cfg.rm.score_range)
        alphas = cfg.rm.mse_alpha
        scored = set()
        for ds in (train, evalds):
            for u in (ds.units() if ds is not None else []):
                a = float(alphas.get(u.dataset, 0.0))
                for d in u.docs:
                    d.values["alpha"] = a
                    if not math.isnan(d.values["score"]):
                        scored.add(u.dataset)
        self.warnings = [f"rm.mse_alpha names dataset {n!r}, which has no scored responses in data.path "
                         f"(its MSE term is 0)" for n in sorted(alphas) if alphas[n] and n not in scored]
        eval_units = evalds.units() if evalds is not None else []
        groups = {"category": tuple(sorted({u.category for u in eval_units if u.category is not None})),
                  "dataset": tuple(sorted({u.dataset for u in eval_units if u.dataset is not None}))}
        st = train.stats
        summary = (f"{len(train)} pairs (truncated {st.n_truncated}, dropped {st.n_dropped}, identical responses "
                   f"skipped {st.n_identical}, skipped bad lines {st.n_skipped_bad})")
        return StageData(tok, train, evalds, groups=groups, summary=summary)

    def train_objective(self, data: StageData):
        from megatron_align.losses.rm import BradleyTerryMSE

        return BradleyTerryMSE()

    def eval_objective(self, data: StageData):
        from megatron_align.losses.rm import BradleyTerryMSE

        return BradleyTerryMSE(data.groups)

    def record(self, metrics: Dict[str, float]) -> Dict[str, float]:
        if "reward_sq" in metrics and "reward_mean" in metrics:
            var = metrics.pop("reward_sq") - metrics["reward_mean"] ** 2
            metrics["reward_std"] = math.sqrt(max(var, 0.0))
        return metrics


class RMTrainer(Trainer):
    def __init__(self, cfg: RMConfig) -> None:
        super().__init__(cfg, RMStage(cfg))

    def setup(self) -> None:
        super().setup()
        for w in getattr(self.stage, "warnings", []):
            self.log(f"warning: {w}")


def run_rm(cfg: RMConfig):
    return run_trainer(RMTrainer(cfg))
