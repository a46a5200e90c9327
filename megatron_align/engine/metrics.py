"""Per-step metrics: ``<output_dir>/metrics.jsonl`` (one JSON object a line) and TensorBoard events."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional


class MetricsWriter:
    """Written by rank 0 only; other ranks get a writer that does nothing."""

    def __init__(self, output_dir: str, *, enabled: bool, tensorboard: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        if resume_step and os.path.exists(self.path):
            self._truncate_after(resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"),
                                     purge_step=resume_step + 1 if resume_step else None)

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites the steps after its checkpoint (they were lost with the crash)."""
        with open(self.path) as f:
            lines = [ln for ln in f if ln.strip()]
        kept = []
        for ln in lines:
            try:
                if json.loads(ln).get("step", 0) <= step:
                    kept.append(ln if ln.endswith("\n") else ln + "\n")
            except json.JSONDecodeError:
                continue
        with open(self.path, "w") as f:
            f.writelines(kept)

    def log(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record["step"]
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if key in ("step", "kind") or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(output_dir: str, kind: Optional[str] = "train"):
    path = os.path.join(output_dir, "metrics.jsonl")
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            if kind is None or rec.get("kind", "train") == kind:
                out.append(rec)
    return out
