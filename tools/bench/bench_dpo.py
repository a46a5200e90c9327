#!/usr/bin/env python3
"""DPO benchmark: memory of the loss path, and pairs/s of a tiny DPO step against TRL's DPOTrainer.

    python tools/bench/bench_dpo.py [--part memory|head|step|all] [--quick] [--shapes 1024x32000,...]

1. Loss path (``memory``): per-sequence log-prob sums over packed rows from logits [T, V], forward + backward
   (the logits' gradient included), fused ``megatron_align.ops.packed_sequence_logprobs`` vs plain PyTorch
   (``log_softmax`` + ``gather`` + segment sums, ``bench_packed_logprobs.plain``). Each (variant, shape) runs in
   a fresh subprocess. Peak memory above the inputs: on CUDA ``max_memory_allocated`` after
   ``reset_peak_memory_stats``; on CPU the peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` once the
   inputs exist) minus ``VmRSS`` at that point, with ``MALLOC_MMAP_THRESHOLD_=1MB`` so freed buffers go back to
   the OS (PyTorch's CPU allocator does not cache). The first fwd+bwd is the measured one, then the median time
   of ``--reps`` more. A variant whose estimated need exceeds ``--mem-fraction`` of the free memory is skipped
   and reported (the plain path needs about 3 T·V fp32 buffers on top of the logits).
   ``head`` (CPU, TRL installed): the same from hidden states [T, H] and the LM head [V, H], ours (matmul + fused
   kernel) vs TRL 1.16's own loss path (``trl.kernels.chunked_logprob``, which never materialises the logits).
2. Step throughput (``step``): pairs/s of steady-state optimizer steps (after ``--warmup`` steps) of the same
   pairs (``megatron_align/assets/tiny/pairs_train.jsonl`` tokenized once by our template and fed to both as
   the same ids), the same random Llama (the ``tiny-llama`` preset's dims, written as a Hugging Face Llama
   checkpoint without importing transformers, converted for ours), the same global batch of pairs, online
   reference (a frozen copy), fp32: our DPO stage in one process (packed rows) vs TRL's ``DPOTrainer`` (padded
   batches, ``bf16=False``). Each trainer runs in its own subprocess, ``--repeats`` times alternating (medians
   reported). No activation recompute in either (TRL's DPOConfig defaults to gradient checkpointing; it is
   turned off here, as our ``model.recompute=none``). On CUDA only our stage runs (no TRL there), by default
   with a ~1B Llama (``--model 1b``) in bf16.
   CPU runs use one thread per process by default (``--threads``): see the note there.

CSVs: ``docs/benchmarks/<device>_dpo_memory.csv``, ``..._dpo_memory_head.csv``, ``..._dpo_step.csv`` (date,
device, commit per row). Figures and their reading: docs/benchmarks.md, section "DPO".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as C  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402

CPU_SHAPES = ((1024, 32000), (4096, 32000), (2048, 128256), (8192, 128256))
GPU_SHAPES = ((8192, 32000), (16384, 128256), (16384, 152064))
QUICK_SHAPE = ((256, 4096),)
HEAD_SHAPES = ((1024, 32000), (1024, 128256))
TINY = os.path.join(C.ROOT, "megatron_align", "assets", "tiny")

# Llama shapes as transformers configs: tiny = our `tiny-llama` preset (models/families.py); 1b for the GPU run.
MODELS = {
    "tiny": dict(num_hidden_layers=4, hidden_size=64, intermediate_size=176, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, max_position_embeddings=512, rope_theta=500000.0,
                 rms_norm_eps=1e-5, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "1b": dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, rope_theta=500000.0,
               rms_norm_eps=1e-5),
}


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", C.ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


THREADS = {"n": 0}  # CPU threads of the children (0: torch's default); set by --threads


def _child(args: List[str], timeout: float) -> dict:
    """Run this script in a fresh interpreter; its last stdout line is a JSON result."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=os.environ.get("MALLOC_MMAP_THRESHOLD_", "1048576"))
    if THREADS["n"]:
        env["OMP_NUM_THREADS"] = str(THREADS["n"])
    env["PYTHONPATH"] = C.ROOT + os.pathsep + env.get("PYTHONPATH", "")
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__)] + args, capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {p.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


# ================================================================================================ 1. loss path
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_hwm() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMeter:
    """Peak memory above the current use during a block: CUDA allocator peak, or CPU peak RSS."""

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev

    def __enter__(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            self.base = torch.cuda.memory_allocated(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.method = "cuda max_memory_allocated"
        else:
            reset = _reset_hwm()
            self.base = _status_kb("VmRSS" if reset else "VmHWM") * 1024
            self.method = "VmHWM reset via clear_refs - VmRSS" if reset else "VmHWM - VmHWM before (no reset)"
        return self

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            self.peak = torch.cuda.max_memory_allocated(self.dev) - self.base
        else:
            self.peak = _status_kb("VmHWM") * 1024 - self.base
        return False


def loss_variants(y, cu, m) -> Dict[str, object]:
    """From logits [T, V]: fn(logits) -> per-sequence sums."""
    from bench_packed_logprobs import plain

    from megatron_align.ops import packed_sequence_logprobs

    return {"fused": lambda x: packed_sequence_logprobs(x, y, cu, loss_mask=m),
            "torch": lambda x: plain(x, y, cu, m)}


def head_variants(y, cu, m) -> Dict[str, object]:
    """From the last hidden states [T, H] and the LM head [V, H] (the logits are the variant's business):
    ours materialises the logits and runs the fused kernel; TRL 1.16's DPOTrainer never materialises them
    (``trl.kernels.chunked_logprob``, vocabulary chunks, TRL's own chunk size), then the same segment sums."""
    from megatron_align.ops import packed_sequence_logprobs

    def trl_chunked(h, w):
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        lp = ChunkedLogProbFunction.apply(h, w, None, y, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ())[0] * m
        seg = torch.searchsorted(cu, torch.arange(h.shape[0], device=h.device), right=True) - 1
        return lp.new_zeros(cu.numel() - 1).index_add(0, seg, lp)

    return {"fused_head": lambda h, w: packed_sequence_logprobs(h @ w.t(), y, cu, loss_mask=m),
            "trl_chunked_head": trl_chunked}


def _runner(variant: str, T: int, V: int, H: int, dev: torch.device):
    """(fwd+bwd closure, bytes of the [T, V] logits at this dtype) for one variant on fresh random inputs."""
    from bench_packed_logprobs import make_inputs

    inputs = make_inputs(T, V, dev)
    y, cu, m = inputs["labels"], inputs["cu"], inputs["mask"]
    dtype = C.dtype_for(dev)
    if variant in loss_variants(y, cu, m):
        logits = inputs["make_logits"]()
        return C.fwd_bwd(loss_variants(y, cu, m)[variant], logits), logits.numel() * logits.element_size()
    g = torch.Generator(device=dev).manual_seed(1)
    h = torch.randn(T, H, device=dev, generator=g).to(dtype).requires_grad_(True)
    w = (0.02 * torch.randn(V, H, device=dev, generator=g)).to(dtype).requires_grad_(True)
    fn = head_variants(y, cu, m)[variant]

    def run():
        h.grad = w.grad = None
        fn(h, w).sum().backward()

    return run, T * V * torch.finfo(dtype).bits // 8


def memory_child(variant: str, T: int, V: int, reps: int, H: int = 1024) -> dict:
    from megatron_align.ops import active_backend

    dev = C.device()
    run, logits_bytes = _runner(variant, T, V, H, dev)
    _runner(variant, 64, V, H, dev)[0]()  # loads lazy kernels / thread pools outside the measured call
    with PeakMeter(dev) as meter:
        t0 = time.perf_counter()
        run()
        C._sync(dev)
        first = time.perf_counter() - t0
    t = C.time_fn(run, dev, warmup=0, reps=reps) if reps > 0 else {"median_ms": 1e3 * first}
    return {"peak_bytes": meter.peak, "method": meter.method, "median_ms": t["median_ms"], "first_ms": 1e3 * first,
            "logits_bytes": logits_bytes, "dtype": str(C.dtype_for(dev)).replace("torch.", ""),
            "backend": active_backend(dev) if variant.startswith("fused") else "torch",
            "threads": torch.get_num_threads()}


def _free_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    return _status_kb_file("/proc/meminfo", "MemAvailable") * 1024


def _status_kb_file(path: str, key: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _need_bytes(variant: str, T: int, V: int, dev: torch.device, H: int = 0) -> int:
    """Estimated peak of the process: inputs plus the variant's [T, V] buffers (fp32 for the plain path)."""
    el = 2 if dev.type == "cuda" else 4
    head = 2 * V * H * el if variant.endswith("_head") else 0  # the LM head and its gradient
    if variant == "trl_chunked_head":  # on CPU (no Triton) its tiles run in torch: ~9 T·V fp32 buffers measured
        return head + 9 * T * V * 4
    if variant.startswith("fused"):
        return head + 2 * T * V * el  # logits + their gradient
    # logits + fp32 upcast (bf16 only) + log_softmax + the gather's dense gradient + log_softmax's gradient
    # (+ the gradient cast back to bf16)
    return T * V * (el + 3 * 4 + (4 + el if el == 2 else 0))


def bench_memory(shapes, reps: int, mem_fraction: float, timeout: float, variants=("fused", "torch"),
                 hidden: int = 1024) -> List[dict]:
    dev = C.device()
    rows: List[dict] = []
    for T, V in shapes:
        res = {}
        for variant in variants:
            need, free = _need_bytes(variant, T, V, dev, hidden), _free_bytes(dev)
            if need > mem_fraction * free:
                print(f"  {variant:16s} T={T:6d} V={V:6d}  skipped: needs ~{need / 2**30:.1f} GiB, "
                      f"{free / 2**30:.1f} GiB free (--mem-fraction {mem_fraction})")
                rows.append(dict(variant=variant, T=T, V=V, status=f"skipped: needs ~{need / 2**30:.1f} GiB"))
                continue
            r = _child(["--child-memory", variant, str(T), str(V), str(reps), str(hidden)], timeout)
            if "error" in r:
                print(f"  {variant:16s} T={T:6d} V={V:6d}  failed: {r['error']}")
                rows.append(dict(variant=variant, T=T, V=V, status=f"failed: {r['error']}"))
                continue
            res[variant] = r
            row = dict(variant=variant, T=T, V=V, H=hidden if variant.endswith("_head") else "", status="ok",
                       threads=r["threads"], dtype=r["dtype"],
                       backend=r["backend"],
                       logits_mib=round(r["logits_bytes"] / 2**20, 1), peak_extra_mib=round(r["peak_bytes"] / 2**20, 1),
                       peak_over_logits=round(r["peak_bytes"] / r["logits_bytes"], 2),
                       median_ms=round(r["median_ms"], 2), first_ms=round(r["first_ms"], 2), method=r["method"])
            rows.append(row)
            print(f"  {variant:16s} T={T:6d} V={V:6d}  peak +{row['peak_extra_mib']:9.1f} MiB "
                  f"({row['peak_over_logits']:.2f}x the logits)  {row['median_ms']:9.1f} ms  [{r['method']}]")
        if len(res) == 2:
            (a, f), (b, p) = res.items()
            print(f"         -> {a} uses {p['peak_bytes'] / max(f['peak_bytes'], 1):.2f}x less memory than {b}, "
                  f"{p['median_ms'] / f['median_ms']:.2f}x faster")
    return rows


# ================================================================================================ 2. steps
def _has_trl() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def tokenized_pairs(out_path: str, seq_length: int) -> dict:
    """The bundled pairs through our data path (llama3 template, pair fitting) -> id records both trainers read."""
    from megatron_align.config.base import load_config
    from megatron_align.config.dpo import DPOConfig
    from megatron_align.data.builder import tokenizer_and_template
    from megatron_align.stages.rm import open_pairs

    cfg = load_config(DPOConfig, os.path.join(C.ROOT, "examples", "configs", "dpo_tiny_cpu.yaml"),
                      [f"data.seq_length={seq_length}"])
    _, template = tokenizer_and_template(cfg.data, "llama")
    ds = open_pairs(os.path.join(TINY, "pairs_train.jsonl"), cfg.data, template)
    n_tokens = 0
    with open(out_path, "w") as f:
        for u in ds.units():
            c, r = u.docs
            p = int(c.target_mask.argmax())
            assert (c.input_ids[:p] == r.input_ids[:p]).all() and not r.target_mask[:p].any()
            f.write(json.dumps({"prompt_ids": c.input_ids[:p].tolist(), "chosen_ids": c.input_ids[p:].tolist(),
                                "rejected_ids": r.input_ids[p:].tolist()}) + "\n")
            n_tokens += len(c) + len(r)
    return {"pairs": len(ds), "tokens_per_pair": n_tokens / max(len(ds), 1)}


def hf_model(path: str, model: str, dtype: torch.dtype, seed: int = 0) -> None:
    """A random Llama of the named shape written as a Hugging Face checkpoint (config.json + safetensors, the
    bundled tokenizer files) without importing transformers (absent on the GPU machine): normal(0, 0.02)
    matrices, unit norms."""
    from safetensors.torch import save_file

    c = MODELS[model]
    h, f, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], h), "model.norm.weight": (h,),
              "lm_head.weight": (c["vocab_size"], h)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    dev = C.device()
    g = torch.Generator(device=dev).manual_seed(seed)
    tensors = {k: (torch.ones(s, device=dev) if len(s) == 1 else 0.02 * torch.randn(s, device=dev, generator=g))
               .to(dtype).cpu().contiguous() for k, s in shapes.items()}
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config = dict(c, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                  attention_bias=False, mlp_bias=False, tie_word_embeddings=False, pad_token_id=0, bos_token_id=4,
                  eos_token_id=8, initializer_range=0.02, torch_dtype=str(dtype).replace("torch.", ""))
    config.setdefault("rope_scaling", None)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config, fh, indent=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TINY, name), os.path.join(path, name))


def steady(times: List[float], warmup: int, pairs: int) -> dict:
    rest = times[warmup:]
    if not rest:
        raise RuntimeError(f"no steady-state steps ({len(times)} steps, warm-up {warmup})")
    rest_sorted = sorted(rest)
    med = rest_sorted[len(rest) // 2]
    return {"steps_timed": len(rest), "step_s_median": med, "step_s_mean": sum(rest) / len(rest),
            "pairs_per_s": pairs * len(rest) / sum(rest), "pairs_per_s_median_step": pairs / med}


def step_ours(work: str, data: str, gbs: int, mbs: int, seq: int, steps: int, warmup: int, precision: str) -> dict:
    from megatron_align.config.base import load_config
    from megatron_align.config.dpo import DPOConfig
    from megatron_align.runtime import teardown
    from megatron_align.stages.dpo import DPOTrainer

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    ckpt = os.path.join(work, "mcore")
    cfg = load_config(DPOConfig, os.path.join(C.ROOT, "examples", "configs", "dpo_tiny_cpu.yaml"), [
        "model.name=null", f"model.precision={precision}", "parallel.tp=1", f"data.path={data}",
        "data.eval_path=null", f"data.seq_length={seq}", f"train.micro_batch_size={mbs}",
        f"train.global_batch_size={gbs}", f"train.max_steps={steps}", f"train.load={ckpt}",
        f"dpo.reference_load={ckpt}", "dpo.loss_type=dpo", "dpo.reference=online", "optim.warmup_steps=0",
        "output.tensorboard=false", f"output_dir={os.path.join(work, 'run')}"])
    trainer = DPOTrainer(cfg)
    trainer.setup()
    times, tokens = [], 0
    try:
        for ids in trainer.sampler:
            t0 = time.perf_counter()
            m = trainer.train_step(ids)
            times.append(time.perf_counter() - t0)
            tokens = m["tokens"]
    finally:
        teardown()
    return dict(steady(times, warmup, gbs), tokens_per_step=tokens, loss_last=m["loss"],
                threads=torch.get_num_threads())


def step_trl(work: str, data: str, gbs: int, steps: int, warmup: int) -> dict:
    import datasets
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer as TRLTrainer

    class PreTokenized(TRLTrainer):
        """The same ids as our run: the records already hold prompt_ids / chosen_ids / rejected_ids."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    class Timer(TrainerCallback):
        def __init__(self):
            self.times: List[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(TINY, "tokenizer.json"), pad_token="<pad>",
                                  eos_token="<|eot_id|>", bos_token="<|begin_of_text|>")
    ds = datasets.load_dataset("json", data_files=data, split="train")
    model = LlamaForCausalLM.from_pretrained(os.path.join(work, "hf"), torch_dtype=torch.float32)
    args = TRLConfig(output_dir=os.path.join(work, "trl"), per_device_train_batch_size=gbs,
                     gradient_accumulation_steps=1, max_steps=steps, learning_rate=1e-3, lr_scheduler_type="cosine",
                     weight_decay=0.0, beta=0.1, loss_type=["sigmoid"], max_length=None, bf16=False, fp16=False,
                     use_cpu=True, report_to="none", gradient_checkpointing=False, save_strategy="no",
                     logging_steps=10**6,
                     dataloader_num_workers=0, seed=1, disable_tqdm=True)
    timer = Timer()
    trainer = PreTokenized(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer])
    out = trainer.train()
    tokens = sum(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in ds)
    return dict(steady(timer.times, warmup, gbs), loss_last=float(out.training_loss),
                tokens_per_pair=tokens / len(ds), threads=torch.get_num_threads())


def bench_steps(args) -> List[dict]:
    dev = C.device()
    model = args.model or ("1b" if dev.type == "cuda" else "tiny")
    precision = "bf16" if dev.type == "cuda" else "fp32"
    rows: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as work:
        data = os.path.join(work, "pairs_ids.jsonl")
        info = tokenized_pairs(data, args.seq)
        hf_model(os.path.join(work, "hf"), model, torch.bfloat16 if precision == "bf16" else torch.float32)
        from megatron_align.cli import main as cli

        t0 = time.perf_counter()
        if cli(["convert", os.path.join(work, "hf"), os.path.join(work, "mcore")]) != 0:
            raise RuntimeError("convert failed")
        print(f"DPO step on {C.device_name(dev)}: {info['pairs']} pairs, {info['tokens_per_pair']:.1f} tokens/pair, "
              f"model {model}, {precision}, global batch {args.gbs} pairs, {args.steps} steps "
              f"({args.warmup} warm-up); checkpoint converted in {time.perf_counter() - t0:.1f} s")
        common = [work, data, str(args.gbs), str(args.steps), str(args.warmup)]
        runs = [("ours", ["--child-step", "ours"] + common + [str(args.mbs), str(args.seq), precision])]
        if not args.skip_trl and _has_trl():
            runs.append(("trl", ["--child-step", "trl"] + common))
        got: Dict[str, List[float]] = {name: [] for name, _ in runs}
        for rep in range(args.repeats):  # alternate the trainers: a shared machine's load drifts over minutes
            for name, cmd in runs:
                r = _child(cmd, args.step_timeout)
                if "error" in r:
                    print(f"  {name:5s} failed: {r['error']}")
                    rows.append(dict(trainer=name, model=model, repeat=rep, status=f"failed: {r['error']}"))
                    continue
                got[name].append(r["pairs_per_s"])
                rows.append(dict(trainer=name, model=model, repeat=rep, status="ok", threads=r["threads"],
                                 precision=precision, gbs=args.gbs, tokens_per_pair=round(info["tokens_per_pair"], 1),
                                 steps_timed=r["steps_timed"], step_s_median=round(r["step_s_median"], 4),
                                 pairs_per_s=round(r["pairs_per_s"], 2), loss_last=round(r["loss_last"], 4)))
                print(f"  {name:5s} {r['pairs_per_s']:9.2f} pairs/s  (median step {r['step_s_median'] * 1e3:8.1f} "
                      f"ms over {r['steps_timed']} steps, loss {r['loss_last']:.4f})")
        med = {k: statistics.median(v) for k, v in got.items() if v}
        for k, v in med.items():
            print(f"  {k:5s} median of {len(got[k])} runs: {v:.2f} pairs/s")
        if len(med) == 2:
            ratio = med["ours"] / med["trl"]
            pairs = [a / b for a, b in zip(got["ours"], got["trl"])]
            rows.append(dict(trainer="ours/trl", model=model, status="ok", vs_trl=round(ratio, 2)))
            print(f"  -> ours / TRL = {ratio:.2f}x pairs/s (medians; per repeat {min(pairs):.2f}x-{max(pairs):.2f}x)")
    return rows


# ================================================================================================ driver
def write(op: str, rows: List[dict]) -> None:
    if not rows:
        return
    dev = C.device()
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    sha = commit()
    full = [dict({k: "" for k in keys}, commit=sha, **r) for r in rows]
    print(f"  -> {C.write_csv(op, full, dev, C.copy_bandwidth_gbs(dev))}")


def parse_shapes(text: str):
    return tuple(tuple(int(x) for x in s.lower().split("x")) for s in text.split(",") if s)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child-memory":
        variant, T, V, reps, H = argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])
        print(json.dumps(memory_child(variant, T, V, reps, H)))
        return 0
    if argv and argv[0] == "--child-step":
        which, work, data, gbs, steps, warmup = argv[1], argv[2], argv[3], int(argv[4]), int(argv[5]), int(argv[6])
        if which == "ours":
            r = step_ours(work, data, gbs, int(argv[7]), int(argv[8]), steps, warmup, argv[9])
        else:
            r = step_trl(work, data, gbs, steps, warmup)
        print(json.dumps(r))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("memory", "head", "step", "all"), default="all",
                    help="head: the loss path from hidden states, ours vs TRL's chunked kernel (CPU, TRL needed)")
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size of the head part")
    ap.add_argument("--quick", action="store_true", help="memory part on one small shape only (smoke)")
    ap.add_argument("--shapes", type=parse_shapes, default=None, help="TxV,TxV,... for the memory part")
    ap.add_argument("--reps", type=int, default=None, help="timed fwd+bwd after the measured one (default 3; 1 "
                                                           "for shapes over 2^29 elements on CPU)")
    ap.add_argument("--mem-fraction", type=float, default=0.6, help="skip a variant needing more than this "
                                                                    "fraction of the free memory")
    ap.add_argument("--model", choices=sorted(MODELS), default=None, help="default: tiny on CPU, 1b on CUDA")
    ap.add_argument("--gbs", type=int, default=32, help="pairs per optimizer step (both trainers)")
    ap.add_argument("--mbs", type=int, default=2, help="our packed rows per micro-batch")
    ap.add_argument("--seq", type=int, default=256, help="our packed row length")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each trainer, alternating")
    ap.add_argument("--skip-trl", action="store_true", help="our stage only (e.g. where TRL is not installed)")
    ap.add_argument("--step-timeout", type=float, default=600)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads per run (default 1 on CPU: on a shared, oversubscribed machine OpenMP's "
                         "barriers make every multi-threaded op ~40x slower; 0 keeps torch's default)")
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)
    dev = C.device()
    THREADS["n"] = args.threads if args.threads is not None else (1 if dev.type == "cpu" else 0)
    if args.part in ("memory", "all"):
        shapes = args.shapes or (QUICK_SHAPE if args.quick else (GPU_SHAPES if dev.type == "cuda" else CPU_SHAPES))
        print(f"DPO loss path on {C.device_name(dev)}: per-sequence log-prob sums, forward + backward, "
              f"fresh process per variant")
        rows = []
        for T, V in shapes:
            reps = args.reps if args.reps is not None else (1 if dev.type == "cpu" and T * V > 2**29 else 3)
            rows += bench_memory([(T, V)], reps, args.mem_fraction, args.step_timeout)
        if not args.no_csv:
            write("dpo_memory", rows)
    if args.part in ("head", "all") and not args.quick and dev.type == "cpu" and _has_trl():
        print(f"DPO loss path with the LM head on {C.device_name(dev)}: hidden [T, {args.hidden}] and head "
              f"[V, {args.hidden}] -> per-sequence sums, forward + backward, ours vs TRL 1.16's chunked log-probs")
        rows = []
        for T, V in args.shapes or HEAD_SHAPES:
            rows += bench_memory([(T, V)], args.reps if args.reps is not None else 2, args.mem_fraction,
                                 args.step_timeout, ("fused_head", "trl_chunked_head"), args.hidden)
        if not args.no_csv:
            write("dpo_memory_head", rows)
    if args.part in ("step", "all") and not args.quick:
        rows = bench_steps(args)
        if not args.no_csv:
            write("dpo_step", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
