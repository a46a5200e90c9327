"""GPU checks for issue 16 (run by tools/gpu/sft_te_gpu.sh; one CUDA device, single-process runs).

Each check runs one or more short SFT runs of the tiny config on CUDA and prints/records a JSON line:
  layouts      first-step loss/grad norm: packed micro-batch 2 (reference), packed mbs1, unpacked mbs1 (fp32)
  flex         attention_backend=flex (compiled block mask, FlexAttention backward) vs sdpa, fp32 and bf16
  fp16         fp16 first grad norm vs fp32 (loss scaling wired)
  resume       4 steps straight vs 2 + SIGUSR1-save + requeue, distributed optimizer (dp=1), bitwise losses
  mfu          the logged MFU and this device's name / peak entry
  te_*         the same with model.transformer_impl=te (THD, fused RoPE, TE FusedAdam resume), only if
               transformer_engine imports
usage: python tools/gpu/sft_gpu_checks.py OUT_DIR [CHECK ...]
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
CONFIG = os.path.join(ROOT, "examples", "configs", "tiny_cpu.yaml")
BASE = ["model.num_layers=2", "data.seq_length=128", "train.global_batch_size=8", "train.eval_interval=0",
        "output.tensorboard=false", "output.progress_bar=false", "parallel.tp=1", "optim.warmup_steps=0",
        "data.eval_path=null"]


def _env():
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(k, v)


def sft(out, overrides, stop_after=None):
    from megatron_align.config.base import load_config
    from megatron_align.config.sft import SFTConfig
    from megatron_align.stages import sft as sft_mod

    orig = sft_mod.SFTTrainer.train_step
    if stop_after is not None:
        def train_step(self, ids):
            res = orig(self, ids)
            if self.sampler.step == stop_after:
                os.kill(os.getpid(), signal.SIGUSR1)
            return res
        sft_mod.SFTTrainer.train_step = train_step
    try:
        return sft_mod.run_sft(load_config(SFTConfig, CONFIG, BASE + [f"output_dir={out}"] + list(overrides)))
    finally:
        sft_mod.SFTTrainer.train_step = orig


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if r.get("kind", "train") == "train"]


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def first(out, overrides):
    shutil.rmtree(out, ignore_errors=True)
    r = sft(out, list(overrides) + ["train.max_steps=1"])
    return {"loss": r["loss"], "grad_norm": r["grad_norm"]}


def check_layouts(out, impl):
    ref = first(f"{out}/ref", impl + ["train.micro_batch_size=2", "model.precision=fp32"])
    res = {"reference": ref}
    for name, ov in {"packed_mbs1": ["train.micro_batch_size=1"],
                     "unpacked_mbs1": ["data.packing=false", "train.micro_batch_size=1"]}.items():
        r = first(f"{out}/{name}", impl + ov + ["model.precision=fp32"])
        res[name] = dict(r, loss_rel=rel(r["loss"], ref["loss"]), grad_rel=rel(r["grad_norm"], ref["grad_norm"]))
    ok = all(v["loss_rel"] < 1e-5 and v["grad_rel"] < 1e-4 for k, v in res.items() if k != "reference")
    return ok, res


def check_flex(out, impl):
    res, ok = {}, True
    for prec, tol in (("fp32", 1e-4), ("bf16", 2e-2)):
        a = first(f"{out}/sdpa_{prec}", impl + [f"model.precision={prec}", "model.attention_backend=sdpa"])
        b = first(f"{out}/flex_{prec}", impl + [f"model.precision={prec}", "model.attention_backend=flex"])
        res[prec] = {"sdpa": a, "flex": b, "grad_rel": rel(b["grad_norm"], a["grad_norm"]),
                     "loss_rel": rel(b["loss"], a["loss"])}
        ok = ok and res[prec]["grad_rel"] < tol and res[prec]["loss_rel"] < tol
    return ok, res


def check_fp16(out, impl):
    a = first(f"{out}/fp32", impl + ["model.precision=fp32"])
    b = first(f"{out}/fp16", impl + ["model.precision=fp16"])
    r = {"fp32": a, "fp16": b, "grad_rel": rel(b["grad_norm"], a["grad_norm"])}
    return r["grad_rel"] < 1e-2, r


def check_resume(out, impl):
    common = impl + ["train.max_steps=4", "parallel.distributed_optimizer=true", "train.micro_batch_size=1",
                     "model.precision=bf16"]
    shutil.rmtree(out, ignore_errors=True)
    sft(f"{out}/straight", common)
    r = sft(f"{out}/resumed", common, stop_after=2)
    sft(f"{out}/resumed", common)
    a, b = losses(f"{out}/straight"), losses(f"{out}/resumed")
    return a == b and r.get("stopped_by_signal"), {"straight": a, "resumed": b}


def check_mfu(out, impl):
    import torch

    from megatron_align.engine.mfu import PEAK_BF16_TFLOPS

    if not torch.cuda.is_available():
        return False, {"error": "no CUDA device: MFU is reported on GPUs only"}
    shutil.rmtree(out, ignore_errors=True)
    sft(out, impl + ["train.max_steps=3", "model.precision=bf16"])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        mfus = [r.get("mfu") for r in map(json.loads, f) if r.get("kind", "train") == "train"]
    name = torch.cuda.get_device_name()
    return all(m is not None and 0 < m < 1 for m in mfus), {"device": name, "peak_tflops": PEAK_BF16_TFLOPS.get(name),
                                                           "mfu": mfus}


CHECKS = {"layouts": check_layouts, "flex": check_flex, "fp16": check_fp16, "resume": check_resume, "mfu": check_mfu}


def te_available():
    try:
        import transformer_engine  # noqa: F401

        return True
    except Exception as e:  # noqa: BLE001
        print(f"transformer_engine not importable ({type(e).__name__}: {e}); TE checks skipped", flush=True)
        return False


def main():
    _env()
    out_dir = sys.argv[1]
    names = sys.argv[2:] or list(CHECKS)
    os.makedirs(out_dir, exist_ok=True)
    impls = [("local", ["model.transformer_impl=local"])]
    if te_available():
        impls.append(("te", ["model.transformer_impl=te"]))
    results = []
    for impl_name, impl in impls:
        for name in names:
            if impl_name == "te" and name == "flex":
                continue  # the TE spec has its own attention
            t0 = time.time()
            try:
                ok, detail = CHECKS[name](os.path.join(out_dir, "runs", f"{impl_name}_{name}"), impl)
                row = {"check": f"{impl_name}_{name}", "ok": bool(ok), "detail": detail}
            except Exception:  # noqa: BLE001 - record and go on
                row = {"check": f"{impl_name}_{name}", "ok": False, "error": traceback.format_exc()[-3000:]}
            row["seconds"] = round(time.time() - t0, 1)
            results.append(row)
            print(json.dumps(row), flush=True)
            with open(os.path.join(out_dir, "sft_gpu_checks.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
    shutil.rmtree(os.path.join(out_dir, "runs"), ignore_errors=True)
    print("summary: " + ", ".join(f"{r['check']}={'ok' if r['ok'] else 'FAIL'}" for r in results))
    return sum(not r["ok"] for r in results)


if __name__ == "__main__":
    sys.exit(main())
