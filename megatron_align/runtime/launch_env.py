"""Where a process sits in the job: read from torchrun or Slurm (srun) environment variables."""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from typing import List, Mapping, Optional


class LaunchError(RuntimeError):
    """The launcher environment is incomplete or inconsistent; the message names the variable."""


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" | "slurm" | "single"


def expand_nodelist(nodelist: str) -> List[str]:
    """Expand a Slurm hostlist such as ``gpu[01-03,07],login5`` into host names, in order."""
    hosts: List[str] = []
    # Split on commas that are not inside brackets.
    parts, depth, cur = [], 0, ""
    for ch in nodelist.strip():
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    for part in parts:
        m = re.fullmatch(r"([^\[\]]*)\[([^\]]+)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for rng in ranges.split(","):
            if "-" in rng:
                lo, hi = rng.split("-", 1)
                width = len(lo)
                for i in range(int(lo), int(hi) + 1):
                    hosts.append(f"{prefix}{str(i).zfill(width)}{suffix}")
            else:
                hosts.append(f"{prefix}{rng}{suffix}")
    return hosts


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except KeyError:
        raise LaunchError(f"environment variable {name} is not set") from None
    except ValueError:
        raise LaunchError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _slurm_port(env: Mapping[str, str]) -> int:
    if "MASTER_PORT" in env:
        return _int(env, "MASTER_PORT")
    # Deterministic per job so all tasks agree without talking; away from well-known ports.
    job = env.get("SLURM_JOB_ID", "0")
    return 20000 + zlib.crc32(job.encode()) % 20000


def detect_launch_env(env: Optional[Mapping[str, str]] = None) -> LaunchEnv:
    """torchrun variables win; otherwise Slurm's; otherwise a single process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(
            rank=_int(env, "RANK"),
            world_size=_int(env, "WORLD_SIZE"),
            local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500,
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and ("SLURM_NTASKS" in env or "SLURM_NPROCS" in env):
        ntasks_var = "SLURM_NTASKS" if "SLURM_NTASKS" in env else "SLURM_NPROCS"
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if "MASTER_ADDR" in env:
            addr = env["MASTER_ADDR"]
        elif nodelist:
            addr = expand_nodelist(nodelist)[0]
        else:
            raise LaunchError("Slurm environment without SLURM_JOB_NODELIST (or MASTER_ADDR): cannot find the first node")
        return LaunchEnv(
            rank=_int(env, "SLURM_PROCID"),
            world_size=_int(env, ntasks_var),
            local_rank=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            master_addr=addr,
            master_port=_slurm_port(env),
            launcher="slurm",
        )
    return LaunchEnv(0, 1, 0, env.get("MASTER_ADDR", "127.0.0.1"),
                     int(env.get("MASTER_PORT", "0") or 0), "single")
