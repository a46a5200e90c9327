"""Host memory (RSS) of each rank while it saves a training checkpoint (model + optimizer + RNG).

``measure_save(...)`` runs one SFT step of a Llama-shaped model (``hidden``/``layers`` set through an HF
config) with the distributed optimizer, and records each rank's peak RSS above its RSS just before the
save; ``sharding`` picks the DistributedOptimizer checkpoint format. Used by the test and by
``python tests/helpers/save_memory.py`` (prints both formats at DP=2).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Dict, List


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds while active."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.base = self.peak = _rss_bytes()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


def measure_save(out_dir: str, sharding: str, hidden: int, layers: int) -> Dict[str, float]:
    from megatron_align.checkpoint import training
    from megatron_align.models.families import arch_to_hf_config, preset
    from megatron_align.stages import sft as sft_mod

    from helpers.sft_runs import sft

    training.OPTIM_SHARDING = sharding
    arch = preset("tiny-llama").replace(hidden_size=hidden, ffn_hidden_size=3 * hidden, num_layers=layers,
                                        num_attention_heads=hidden // 32, num_query_groups=hidden // 64)
    os.makedirs(out_dir, exist_ok=True)
    hf = os.path.join(out_dir, f"config_{os.environ['RANK']}.json")
    with open(hf, "w") as f:
        json.dump(arch_to_hf_config(arch, torch_dtype="float32"), f)
    seen: Dict[str, float] = {}
    orig = sft_mod.SFTTrainer.save

    def save(self, step):
        with PeakRSS() as m:
            path = orig(self, step)
        seen["peak_extra_mib"] = (m.peak - m.base) / 2 ** 20
        seen["params_m"] = arch.num_parameters() / 1e6
        return path

    sft_mod.SFTTrainer.save = save
    sft([f"output_dir={out_dir}/run", "model.name=null", f"model.hf_config={hf}", "model.num_layers=null",
         "train.max_steps=1", "data.eval_path=null", "parallel.distributed_optimizer=true",
         "train.micro_batch_size=1"])
    return seen


def compare(out_dir: str, hidden: int = 512, layers: int = 4) -> List[Dict[str, float]]:
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from helpers.dist import run_distributed

    rows = []
    for sharding in ("fully_reshardable", "dp_reshardable"):
        outs = run_distributed(measure_save, 2, f"{out_dir}/{sharding}", sharding, hidden, layers)
        rows.append({"sharding": sharding, **{f"rank{r}_peak_extra_mib": round(o["peak_extra_mib"], 1)
                                               for r, o in enumerate(outs)}, "params_m": outs[0]["params_m"]})
    return rows


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as d:
        for row in compare(d, *(int(a) for a in sys.argv[1:3])):
            print(json.dumps(row))
