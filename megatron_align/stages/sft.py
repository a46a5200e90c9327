"""Supervised fine-tuning on the trainer core: chat data -> templates + loss masks -> packed samples ->
token-level cross-entropy (the mean over every loss token of the global batch).

Everything else (resume, checkpoints, signals, metrics, eval cadence) is the loop's: see engine/trainer.py.
"""

from __future__ import annotations

from typing import Dict, List

from megatron_align.config.sft import SFTConfig
from megatron_align.engine.trainer import Stage, StageData, Trainer, TrainingDivergedError, run_trainer  # noqa: F401


def eval_categories(dataset) -> List[str]:
    """The categories of a dataset's samples (for the per-category eval loss), without building the samples
    where the dataset stores them per document (the indexed format, the tokenization cache)."""
    return [] if dataset is None else dataset.category_names()


def data_summary(train) -> str:
    st = train.stats
    line = (f"{len(train)} samples (truncated {st.n_truncated}, dropped {st.n_dropped}, "
            f"skipped bad lines {st.n_skipped_bad}, nothing to train {st.n_nothing_to_train})")
    mixture = getattr(train, "summary", None)  # a mixture: each dataset's share of samples and trained tokens
    return line + (f", mixture [{mixture()}]" if mixture else "")


def eval_datasets(dataset) -> List[str]:
    """The dataset names of an evaluation set made of several datasets (for the per-dataset eval loss)."""
    return list(getattr(dataset, "names", []))


class SFTStage(Stage):
    name = "sft"

    def build_data(self, arch) -> StageData:
        from megatron_align.data.builder import build_data

        bundle = build_data(self.cfg.data, family=arch)
        self._mixture = bundle.train if hasattr(bundle.train, "fingerprint") else None
        cats = tuple(eval_categories(bundle.eval))
        return StageData(bundle.tokenizer, bundle.train, bundle.eval,
                         groups={"category": cats, "dataset": tuple(eval_datasets(bundle.eval))},
                         summary=data_summary(bundle.train))

    def state_dict(self):
        mixture = getattr(self, "_mixture", None)
        return {"data_mixture": mixture.fingerprint()} if mixture is not None else {}

    def load_state_dict(self, state) -> None:
        saved = state.get("data_mixture")
        mixture = getattr(self, "_mixture", None)
        now = mixture.fingerprint() if mixture is not None else None
        if saved != now:
            from megatron_align.config.base import ConfigError

            raise ConfigError(f"data.path: the checkpoint was trained on the mixture {saved}, this run has {now}; "
                              f"resuming would change which samples each step draws (keep data.path and data.seed, "
                              f"or start a new output_dir with train.load=<checkpoint> train.finetune=true)")

    def train_objective(self, data: StageData):
        from megatron_align.losses.sft import TokenCrossEntropy

        return TokenCrossEntropy(self.cfg.model.loss_backend)

    def eval_objective(self, data: StageData):
        from megatron_align.losses.sft import TokenCrossEntropy

        return TokenCrossEntropy(self.cfg.model.loss_backend, data.groups["category"], data.groups["dataset"])


class SFTTrainer(Trainer):
    def __init__(self, cfg: SFTConfig) -> None:
        super().__init__(cfg, SFTStage(cfg))


def run_sft(cfg: SFTConfig) -> Dict[str, float]:
    return run_trainer(SFTTrainer(cfg))
