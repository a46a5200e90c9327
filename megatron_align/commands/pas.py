"""`megatron-align pas generate|augment|serve`: the Prompt Augmentation System (see docs/pas.md).

  pas generate --config pas_generate.yaml [--input IN] [--out OUT] [--max-prompts N] [dotted overrides]
  pas augment  --load PAS_CKPT --input user_prompts.jsonl --out augmented.jsonl [--config C] [overrides]
  pas serve    (--load CKPT | --replies RULES.jsonl) [--port 8000] [--fail-first K --fail-status 503]

Checkpoint teachers and the PAS model run through the generation engine at any TP/PP: launch under torchrun
with parallel.tp/parallel.pp covering every rank (data parallelism is not used here); rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

from megatron_align.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    g = sub.add_parser("generate", help="teacher complements + critique -> SFT chat JSONL (resumable)")
    g.add_argument("--config", default=None, help="YAML (see examples/configs/pas_generate_*.yaml)")
    g.add_argument("--input", default=None, help="selected prompts JSONL (= input)")
    g.add_argument("--out", default=None, help="SFT chat JSONL, appended per prompt (= output)")
    g.add_argument("--max-prompts", type=int, default=None, help="stop after N new prompts (= max_prompts)")
    g.add_argument("overrides", nargs="*", help="dotted overrides, e.g. teacher.base_url=http://... critic.mode=none")

    a = sub.add_parser("augment", help="append the PAS model's complement to each user prompt")
    a.add_argument("--config", default=None, help="optional YAML (keys of PasAugmentConfig)")
    a.add_argument("--load", default=None, help="PAS model checkpoint (= load)")
    a.add_argument("--input", default=None, help="user prompts JSONL (= input)")
    a.add_argument("--out", default=None, help="augmented JSONL (= output)")
    a.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sampling.max_new_tokens=64 parallel.tp=2")

    s = sub.add_parser("serve", help="minimal OpenAI-compatible server over a checkpoint (or canned replies)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--load", default=None, help="checkpoint to serve")
    src.add_argument("--replies", default=None, help='canned replies: JSONL {"match": regex, "replies": [...]}')
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0: any free port (the chosen URL is printed)")
    s.add_argument("--model-name", default=None, help="the name /v1/models reports (default: the checkpoint path)")
    s.add_argument("--template", default=None, help="chat template (default: the model family's)")
    s.add_argument("--system-prompt", default=None, help="system prompt for requests without one (default: none)")
    s.add_argument("--max-seq-length", type=int, default=1024, help="prompt + reply tokens at most")
    s.add_argument("--max-requests", type=int, default=16, help="requests batched into one engine call at most")
    s.add_argument("--fail-first", type=int, default=0, help="answer the first K completions with --fail-status")
    s.add_argument("--fail-status", type=int, default=503, help="status of the injected failures (503, 429, ...)")


def _flag_overrides(pairs) -> List[str]:
    return [f"{key}={json.dumps(value)}" for key, value in pairs if value is not None]


def _start_runtime(parallel):
    import torch.distributed as dist

    from megatron_align.runtime import setup_runtime

    rt = setup_runtime(parallel, seed=0)
    if rt.dp != 1:
        raise UserError(f"pas runs one model replica: parallel.tp*parallel.pp must equal the world size "
                        f"({rt.world_size}), got tp={parallel.tp} pp={parallel.pp}")
    return dist.get_rank() == 0


def run_generate(args: argparse.Namespace) -> int:
    from megatron_align.config.base import load_config
    from megatron_align.pas.config import PasGenerateConfig
    from megatron_align.pas.generate import run_generate as generate
    from megatron_align.pas.teachers import build_teacher
    from megatron_align.runtime import teardown

    flags = _flag_overrides([("input", args.input), ("output", args.out), ("max_prompts", args.max_prompts)])
    cfg = load_config(PasGenerateConfig, args.config, flags + list(args.overrides))
    uses_engine = cfg.teacher.kind == "checkpoint" or (cfg.critic.mode == "separate"
                                                       and cfg.critic.teacher.kind == "checkpoint")
    if not uses_engine and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("an endpoint teacher runs in one process; launch without torchrun (concurrency is "
                        "teacher.concurrency)")
    writer = _start_runtime(cfg.parallel) if uses_engine else True
    try:
        teacher = build_teacher(cfg.teacher, cfg.model, cfg.parallel)
        critic = {"none": None, "teacher": teacher}.get(cfg.critic.mode) if cfg.critic.mode != "separate" else \
            build_teacher(cfg.critic.teacher, cfg.model, cfg.parallel)
        summary = generate(cfg, teacher, critic, writer=writer, log=print if writer else (lambda *_: None))
        if writer:
            print(json.dumps(summary), flush=True)
    finally:
        if uses_engine:
            teardown()
    return 0


def run_augment(args: argparse.Namespace) -> int:
    from megatron_align.config.base import load_config
    from megatron_align.pas.augment import pas_teacher_config, run_augment as augment
    from megatron_align.pas.config import PasAugmentConfig
    from megatron_align.pas.teachers import CheckpointTeacher
    from megatron_align.runtime import teardown

    flags = _flag_overrides([("load", args.load), ("input", args.input), ("output", args.out)])
    cfg = load_config(PasAugmentConfig, args.config, flags + list(args.overrides))
    writer = _start_runtime(cfg.parallel)
    try:
        model = CheckpointTeacher(pas_teacher_config(cfg), cfg.model, cfg.parallel)
        counts = augment(cfg, model, writer=writer, log=print if writer else (lambda *_: None))
        if writer:
            print(json.dumps(counts), flush=True)
    finally:
        teardown()
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from megatron_align.pas.config import SamplingSection, TeacherConfig
    from megatron_align.pas.server import EngineBackend, PasServer, ReplayBackend

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"megatron-align pas serve: warning: binding {args.host}: the server has no authentication",
              file=sys.stderr)
    defaults = SamplingSection(temperature=1.0, max_new_tokens=128)
    if args.replies:
        backend, name = ReplayBackend(args.replies), args.model_name or "replay"
    else:
        from megatron_align.config import ModelConfig, ParallelConfig
        from megatron_align.pas.teachers import CheckpointTeacher

        _start_runtime(ParallelConfig())
        teacher = CheckpointTeacher(TeacherConfig(kind="checkpoint", load=args.load, template=args.template,
                                                  system_prompt=args.system_prompt,
                                                  max_seq_length=args.max_seq_length,
                                                  max_requests=args.max_requests), ModelConfig(), ParallelConfig())
        backend, name = EngineBackend(teacher), args.model_name or args.load
    try:
        server = PasServer((args.host, args.port), backend, name, defaults, args.fail_first, args.fail_status,
                           max_batch=args.max_requests)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    print(json.dumps({"url": f"http://{host}:{port}/v1", "model": name}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


ACTIONS = {"generate": run_generate, "augment": run_augment, "serve": run_serve}


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)
