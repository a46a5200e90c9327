"""Fixtures of the PAS tests: the CLI in a subprocess, real `pas serve` servers, a tiny checkpoint."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "megatron_align", "assets", "tiny")
PROMPTS = os.path.join(TINY, "pas_prompts.jsonl")
GOLDEN = os.path.join(TINY, "pas_golden.jsonl")
REPLAY = os.path.join(TINY, "pas_replay.jsonl")


def cli(*args, timeout: float = 300):
    """`python -m megatron_align ARGS` from the repository root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "megatron_align", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def last_json(stdout: str):
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Server:
    """`megatron-align pas serve ARGS --port 0` in a subprocess; ``url`` once it listens; stopped by its pid."""

    def __init__(self, args, log_dir, startup_s: float = 120.0) -> None:
        self.stderr = open(os.path.join(str(log_dir), f"serve_{time.monotonic_ns()}.err"), "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "megatron_align", "pas", "serve", "--port", "0",
                                      *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=startup_s) or self.proc.poll() is not None:
            self.stop()
            self.stderr.seek(0)
            raise RuntimeError(f"pas serve did not start: {self.stderr.read()[-2000:]}")
        self.url = json.loads(self.proc.stdout.readline())["url"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.stderr.close()


@pytest.fixture
def start_server(tmp_path):
    servers = []

    def start(*args):
        servers.append(Server(args, tmp_path))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny Llama checkpoint with the bundled tokenizer (2 SFT steps on the bundled chat data)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    res = cli("sft", "--config", os.path.join(ROOT, "examples", "configs", "tiny_cpu.yaml"), "model.num_layers=2",
              "data.seq_length=128", "train.global_batch_size=4", "train.micro_batch_size=2", "train.max_steps=2",
              "train.eval_interval=0", "output.tensorboard=false", "parallel.tp=1", "optim.warmup_steps=0",
              f"output_dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    return str(out)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)
