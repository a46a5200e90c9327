"""`megatron-align plan`: per-GPU memory and the smallest layout that fits, per recompute mode.

Example: ``megatron-align plan --model llama3-70b --seq-length 16384 --gpus-per-node 8 --gpu-memory 80``.
See docs/planner.md for the model and its assumptions.
"""

from __future__ import annotations

import argparse
import json
import sys


def _ints(text: str):
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None, help="a preset name (llama3-70b, qwen2-72b, ...)")
    g.add_argument("--hf-config", default=None, help="a Hugging Face config.json (or its directory); overrides --model")
    g.add_argument("--seq-length", type=int, default=None, help="tokens per sequence (required with --model / --hf-config)")
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16: bf16 params/activations, fp32 grads, fp32 Adam + master; fp32: all fp32, no master")
    r = parser.add_argument_group("RL (a GRPO / PPO config)")
    r.add_argument("--config", default=None,
                   help="a GRPO / PPO YAML config: plan its layout with the policy, the critic (ppo), the frozen "
                        "reference / original / reward models, the KV cache and the rollout buffers, then search")
    r.add_argument("overrides", nargs="*", default=[], help="dotted overrides of --config (key=value)")
    r.add_argument("--stage", choices=("grpo", "ppo"), default="grpo", help="with --config: the RL stage")
    r.add_argument("--gpus", type=int, default=None,
                   help="with --config: GPUs of the run (DP = gpus / (tp*pp*cp)); default one model replica")
    h = parser.add_argument_group("hardware")
    h.add_argument("--gpus-per-node", type=int, default=8, help="TP stays within a node; GPU counts step by this")
    h.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU")
    h.add_argument("--reserve", type=float, default=0.10,
                   help="fraction of GPU memory kept free for fragmentation, NCCL and the CUDA context (default 0.10)")
    h.add_argument("--max-gpus", type=int, default=512)
    s = parser.add_argument_group("layouts")
    s.add_argument("--tp", type=_ints, default=(1, 2, 4, 8), help="TP sizes to try (comma-separated)")
    s.add_argument("--cp", type=_ints, default=(1, 2, 4, 8), help="CP sizes to try (comma-separated)")
    s.add_argument("--vpp", type=int, default=None, help="virtual pipeline stages (interleaved 1F1B)")
    s.add_argument("--no-sp", action="store_true", help="no sequence parallelism")
    s.add_argument("--no-distributed-optimizer", action="store_true", help="optimizer states not sharded over DP")
    s.add_argument("--num-microbatches", type=int, default=0, help="micro-batches per step (0: >= pipeline warm-up)")
    k = parser.add_argument_group("kernels")
    k.add_argument("--loss-backend", choices=("fused", "megatron", "te", "fused_linear"), default="fused",
                   help="model.loss_backend: fused CE (logits kept once, gradient in a second buffer), megatron-core's "
                        "(fp32 softmax kept), te (gradient computed into the logits in forward), fused_linear "
                        "(provisional: fp32 logits in chunks of --loss-chunk-size tokens, never the full logits)")
    k.add_argument("--loss-chunk-size", type=int, default=4096, help="tokens per logits chunk of fused_linear")
    k.add_argument("--attention", choices=("te", "flex", "sdpa"), default="te",
                   help="attention for packed rows: te (THD, cu_seqlens: no mask), flex (a BlockMask per layer), "
                        "sdpa (one [b,1,s,s] mask per micro-batch)")
    k.add_argument("--norm", choices=("fused", "local"), default="fused",
                   help="RMSNorm that keeps its input (TE) or our unfused torch one (fp32 copy + output)")
    k.add_argument("--fused-swiglu", action="store_true", help="SwiGLU keeps only its input (bias_swiglu fusion)")
    o = parser.add_argument_group("output")
    o.add_argument("--recompute", type=lambda t: tuple(t.split(",")), default=("none", "selective", "full", "kblock"),
                   help="recompute modes to search (comma-separated: none,selective,full,kblock)")
    o.add_argument("--top", type=int, default=20, help="rows of the feasible-configuration table")
    o.add_argument("--json", action="store_true", help="print a machine-readable dict")
    m = parser.add_argument_group("measure (check the activation model on this machine)")
    m.add_argument("--measure", action="store_true",
                   help="build the model at a small scale on CPU (TP = the launcher's world size, e.g. torchrun "
                        "--nproc-per-node 2), run one micro-batch per --recompute mode and print predicted vs "
                        "measured bytes per term (saved tensors, allocator peak)")
    m.add_argument("--measure-hidden", type=int, default=256, help="hidden size of the measured model")
    m.add_argument("--measure-layers", type=int, default=3, help="layers of the measured model")
    m.add_argument("--measure-seq", type=int, default=512, help="sequence length of the measured micro-batch")
    m.add_argument("--measure-k", type=int, default=2, help="k of the measured k-block recompute")
    m.add_argument("--packed", action="store_true", help="measure packed rows (three documents, document mask)")


def run(args: argparse.Namespace) -> int:
    from megatron_align.models.families import ModelSpecError, resolve_arch
    from megatron_align.plan.activations import ActivationOptions
    from megatron_align.plan.memory import GiB, Dtypes, Workload
    from megatron_align.plan.report import build_report, format_text
    from megatron_align.plan.search import SearchSpace, search

    if args.config:
        return _plan_rl(args)
    if args.overrides:
        print(f"error: {args.overrides[0]!r}: key=value overrides go with --config", file=sys.stderr)
        return 2
    try:
        if args.seq_length is None:
            raise ValueError("give --seq-length (or --config FILE.yaml for a GRPO / PPO config)")
        if not args.model and not args.hf_config:
            raise ModelSpecError("give --model PRESET or --hf-config path/config.json")
        arch = resolve_arch(args.model, args.hf_config)
        if not 0 <= args.reserve < 1:
            raise ValueError(f"--reserve must be in [0, 1), got {args.reserve}")
        if args.seq_length < 2 or args.micro_batch_size < 1:
            raise ValueError("--seq-length must be >= 2 and --micro-batch-size >= 1")
        dtypes = Dtypes.for_precision(args.precision)
        if args.measure:
            return _measure(arch, args)
        opts = ActivationOptions(act_bytes=dtypes.activations, norm=args.norm, fused_swiglu=args.fused_swiglu,
                                 loss_backend=args.loss_backend, attention=args.attention,
                                 loss_chunk_size=args.loss_chunk_size)
        work = Workload(seq_length=args.seq_length, micro_batch_size=args.micro_batch_size,
                        num_microbatches=args.num_microbatches, options=opts)
        space = SearchSpace(gpus_per_node=args.gpus_per_node, max_gpus=args.max_gpus,
                            tp=tuple(t for t in args.tp if t <= args.gpus_per_node), cp=args.cp, vpp=args.vpp,
                            sp=not args.no_sp, distributed_optimizer=not args.no_distributed_optimizer)
        budget = args.gpu_memory * (1 - args.reserve) * GiB
        result = search(arch, work, dtypes, space, budget, args.recompute)
    except (ModelSpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rep = build_report(arch, args.hf_config or args.model, work, dtypes, space, args.gpu_memory, args.reserve,
                       result, top=args.top)
    print(json.dumps(rep, indent=2) if args.json else format_text(rep))
    return 0


def _plan_rl(args: argparse.Namespace) -> int:
    """--config: the RL case (megatron_align.plan.rl) at the config's layout, then the search."""
    from megatron_align.config.base import ConfigError, load_config, read_yaml
    from megatron_align.models.families import ModelSpecError, resolve_arch
    from megatron_align.plan.memory import GiB
    from megatron_align.plan.rl import (STAGE_CONFIGS, config_layout, config_space, config_workload, layout_problem,
                                        model_names, precision_dtypes, rl_evaluate, rl_workload)
    from megatron_align.plan.rl_report import build_rl_report, format_rl_text
    from megatron_align.plan.search import search

    try:
        if args.model or args.hf_config or args.seq_length:
            raise ValueError("--config reads the model and sequence length from the file; drop --model / "
                             "--hf-config / --seq-length (override with model.name=... data.seq_length=...)")
        if not 0 <= args.reserve < 1:
            raise ValueError(f"--reserve must be in [0, 1), got {args.reserve}")
        if "rl" not in (read_yaml(args.config) or {}):
            raise ConfigError(f"{args.config}: no `rl` section; `plan --config` plans GRPO / PPO configs (for SFT, "
                              f"RM and DPO give --model or --hf-config and --seq-length)")
        cfg = load_config(STAGE_CONFIGS[args.stage], args.config, args.overrides)
        m = cfg.model
        try:
            arch = resolve_arch(m.name, m.hf_config, m.family, m.num_layers)
            rm = cfg.rl.reward_model
            reward_arch = resolve_arch(rm.name, rm.hf_config) if (rm.name or rm.hf_config) else arch
        except ModelSpecError as exc:
            raise ConfigError(f"{args.config}: {exc}") from None
        dtypes = precision_dtypes(m.precision)
        work = config_workload(cfg, dtypes)
        rl = rl_workload(cfg, args.stage, arch, reward_arch)
        layout = config_layout(cfg, args.gpus)
        problem = layout_problem(arch, layout, rl, args.gpus_per_node)
        if problem:
            raise ConfigError(f"{args.config}: {problem}")
        space = config_space(cfg, args.gpus_per_node, args.max_gpus, args.tp)
        budget = args.gpu_memory * (1 - args.reserve) * GiB
        result = search(arch, work, dtypes, space, budget, args.recompute,
                        evaluator=lambda lay, mode: rl_evaluate(arch, lay, work, rl, dtypes, mode, args.gpus_per_node))
    except (ConfigError, ModelSpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rep = build_rl_report(arch, m.hf_config or m.name, rl, work, dtypes, layout, space, args.gpu_memory,
                          args.reserve, result, model_names(cfg, rl), top=args.top)
    print(json.dumps(rep, indent=2) if args.json else format_rl_text(rep))
    return 0


def _measure(arch, args: argparse.Namespace) -> int:
    """--measure: the activation model against a small build of the same architecture on this machine."""
    from megatron_align.config import ParallelConfig
    from megatron_align.plan.measure import MeasureCase, format_comparison, run_measure, small_arch
    from megatron_align.runtime import detect_launch_env, setup_runtime

    if args.loss_backend not in ("fused", "megatron"):
        raise ValueError(f"--measure runs the loss backends that exist on CPU (fused, megatron), not {args.loss_backend}")
    if args.attention == "te":
        args.attention = "sdpa"  # the local spec on CPU
    if args.attention != "sdpa":
        raise ValueError("--measure runs on CPU: --attention sdpa (flex and TE need a GPU)")
    from megatron_align.plan.memory import RECOMPUTE_MODES

    bad = [m for m in args.recompute if m not in RECOMPUTE_MODES]
    if bad:
        raise ValueError(f"--recompute {bad[0]!r}: choose from {', '.join(RECOMPUTE_MODES)}")
    tp = detect_launch_env().world_size
    small = small_arch(arch, args.measure_hidden, args.measure_layers, tp=tp)
    sp = tp > 1 and not args.no_sp
    setup_runtime(ParallelConfig(tp=tp, sp=sp), seed=1)
    cases = [MeasureCase(tp=tp, sp=sp, recompute=mode, k=args.measure_k, precision=args.precision,
                         seq_length=args.measure_seq, loss_backend=args.loss_backend, packed=args.packed,
                         attention_backend="sdpa") for mode in args.recompute]
    results = run_measure(small, cases)
    import torch.distributed as dist

    if dist.get_rank() == 0:
        print(f"{small.num_layers} layers, h={small.hidden_size}, ffn={small.ffn_hidden_size}, heads "
              f"{small.num_attention_heads}/{small.num_query_groups}, vocab {small.vocab_size} "
              f"(the shape of {args.hf_config or args.model}); local spec on CPU, rank 0 of TP={tp}")
        for r in results:
            print(format_comparison(r["label"], r["predicted"], r["measured"]))
    return 0
