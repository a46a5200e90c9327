"""Peak memory and time of `megatron-align convert` in both directions, against the model size.

Generates a random Llama-style HF checkpoint (default ~0.8 GB fp32, written shard by shard), then runs
HF -> Megatron and Megatron -> HF each in a fresh subprocess and reports, per direction: model bytes,
the process's peak RSS (VmHWM) minus its RSS after imports, and wall time. Streaming means the delta is
about one layer (+ one 200 MB output shard for -> HF), not the model.

    python tools/bench/bench_convert.py [--layers 12 --hidden 1024 --ffn 2816 --vocab 32000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

SHARD = 200 * 10**6  # output shard size (-> hf): part of the expected peak


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def make_model(path: str, layers: int, hidden: int, ffn: int, vocab: int, heads: int, groups: int) -> int:
    import torch

    from megatron_align.convert.hf_io import ShardedSafetensorsWriter
    from megatron_align.models.arch import ArchSpec
    from megatron_align.models.families import arch_to_hf_config

    arch = ArchSpec(family="llama", num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn,
                    num_attention_heads=heads, num_query_groups=groups, vocab_size=vocab,
                    max_position_embeddings=4096, rope_theta=500000.0, norm_eps=1e-5)
    hn = hidden // heads
    w = ShardedSafetensorsWriter(path, 200 * 10**6)
    r = lambda *s: torch.randn(*s) * 0.02  # noqa: E731
    w.add("model.embed_tokens.weight", r(vocab, hidden))
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, t in (("self_attn.q_proj.weight", r(heads * hn, hidden)), ("self_attn.k_proj.weight", r(groups * hn, hidden)),
                        ("self_attn.v_proj.weight", r(groups * hn, hidden)), ("self_attn.o_proj.weight", r(hidden, heads * hn)),
                        ("mlp.gate_proj.weight", r(ffn, hidden)), ("mlp.up_proj.weight", r(ffn, hidden)),
                        ("mlp.down_proj.weight", r(hidden, ffn)), ("input_layernorm.weight", torch.ones(hidden)),
                        ("post_attention_layernorm.weight", torch.ones(hidden))):
            w.add(p + name, t)
    w.add("model.norm.weight", torch.ones(hidden))
    w.add("lm_head.weight", r(vocab, hidden))
    w.close()
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(arch_to_hf_config(arch, torch_dtype="float32"), f)
    return w.total_size


def child(src: str, dst: str) -> None:
    import megatron_align.convert.hf_to_mcore  # noqa: F401 - imports before the baseline
    import megatron_align.convert.mcore_to_hf  # noqa: F401
    import torch.distributed.checkpoint  # noqa: F401
    from megatron_align.convert.api import convert

    base = _status_kb("VmRSS")
    t = time.perf_counter()
    convert(src, dst, max_shard_size=SHARD)
    print(json.dumps({"seconds": time.perf_counter() - t, "rss_base_kb": base, "rss_peak_kb": _status_kb("VmHWM")}))


def run_child(src: str, dst: str) -> dict:
    # A fixed mmap threshold makes glibc return freed tensor buffers to the OS at once; with its default
    # (dynamic, up to 32 MB) freed blocks stay in the heap and RSS over-states what is held.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=os.environ.get("MALLOC_MMAP_THRESHOLD_", "1048576"))
    out = subprocess.run([sys.executable, __file__, "--child", src, dst], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = args.workdir or tempfile.mkdtemp(prefix="bench_convert_")
    try:
        hf, mc, back = (os.path.join(work, d) for d in ("hf", "mcore", "hf_back"))
        size = make_model(hf, args.layers, args.hidden, args.ffn, args.vocab, args.heads, args.groups)
        layer_bytes = 4 * (args.hidden * (args.hidden + 2 * args.groups * args.hidden // args.heads)
                           + args.hidden * args.hidden + 3 * args.hidden * args.ffn)
        print(f"model: {size / 1e9:.3f} GB fp32 ({args.layers} layers, one layer {layer_bytes / 1e6:.1f} MB, "
              f"embedding {4 * args.vocab * args.hidden / 1e6:.1f} MB)")
        for name, (s, d) in (("hf -> mcore", (hf, mc)), ("mcore -> hf", (mc, back))):
            r = run_child(s, d)
            delta = (r["rss_peak_kb"] - r["rss_base_kb"]) * 1024
            print(f"{name:12s}: peak RSS delta {delta / 1e6:8.1f} MB = {100 * delta / size:5.1f}% of the model, "
                  f"time {r['seconds']:.1f} s")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
