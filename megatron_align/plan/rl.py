"""The RL case of the planner (GRPO / PPO): the policy's training memory plus everything an RL step keeps.

Per GPU, on top of the policy's weights, gradients, optimizer states and training activations
(:func:`megatron_align.plan.memory.rank_memory`, the SFT model, at ``data.seq_length`` x
``train.micro_batch_size`` with the config's recompute):

- **critic** (PPO): a second trainable model, ``model.head=value``, at the policy's layout: weights + DDP grad
  buffer + Adam states like the policy, its fp32 scalar head in a buffer of its own instead of the output layer.
  Its activations are not added: it trains after the policy's backward has freed the policy's (same layers,
  no logits: never more than the policy's).
- **frozen models**, weights only (eval mode, ``requires_grad=False``, never DDP-wrapped, no optimizer): the
  reference (``rl.kl.beta > 0``), the original model (``rl.kl_sft.gamma > 0``), the reward model (a
  ``type: model`` reward), each at its own TP x PP over the same GPUs (``rl.reference_parallel``,
  ``rl.kl_sft.parallel``, ``rl.reward_model.parallel``; null: the policy's), and the generation replica when
  ``rl.rollout.tp`` is set (the policy at TP = rollout.tp, PP = 1, refreshed in memory). A frozen model laid
  out like the policy puts the same stage on the same GPU; one laid out differently is counted at its
  largest stage.
- **KV cache** of megatron-core's dynamic engine, as it allocates it: a block is
  ``dtype x 2 (K, V) x layers/PP x block_size_tokens x query_groups/TP x head_dim`` bytes and the buffer is
  ``max(2, floor(rl.rollout.kv_cache_gb GiB / block))`` blocks (``DynamicInferenceContext.__init__``,
  megatron-core 0.16.1, the same in 0.19.2; one block is the engine's dummy). The need of ``max_requests``
  sequences of ``max_prompt_length + max_new_tokens`` tokens is ``max_requests x ceil(tokens / block_size) + 1`` blocks:
  printed next to it, with how many full-length sequences the configured buffer holds at once (fewer than
  ``max_requests``: the engine pauses the rest and decodes slower; it still runs).
- **rollout buffers**: what the step stores per completion on each DP rank (``ceil(prompts_per_step / DP) x
  num_generations`` completions, groups never split): token ids (int64) and old log-probs (fp32) per token,
  the reference log-prob for k1/k3, the critic's old values and returns for PPO, and for the top-k KL the
  reference's top-k fp32 values + int64 ids per response token (``ops.topk_kl.reference_topk``:
  12·k bytes, the same on every TP rank), plus the original model's top-k on the step's SFT micro-batches
  (``rl.kl_sft``). Counted on every rank (conservative: only the last stage needs the top-k).
- **top-k KL working set**: the top-k KL keeps, per token of a training micro-batch on the last stage,
  the gathered policy and reference values (fp32), the column ids (int64) and the ownership mask (bool)
  for its backward: 17·k bytes; the larger k of the two KL terms (their micro-batches run separately).

Not modelled: forward-only transients of frozen models and of generation (prefill, one layer at a time,
no saved activations: smaller than the training pass), the top-k all-gather over TP while scoring
(TP x 12·k bytes per token, while no training activations live), the replica's vocabulary padding
(the policy's, here padded for the replica's TP: at most 128·TP rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

from megatron_align.config.base import ConfigError
from megatron_align.config.rl_job import GRPOJobConfig, PPOJobConfig, RLJobConfig
from megatron_align.config.sft import SFTConfig
from megatron_align.models.arch import ArchSpec
from megatron_align.plan.memory import (GiB, Dtypes, Layout, RankMemory, Workload, candidate_ranks, rank_memory,
                                        static_memory)
from megatron_align.plan.params import SCALAR_HEAD, check_layout, rank_parameters
from megatron_align.plan.search import Candidate, SearchSpace, evaluate

RL_STAGES = ("grpo", "ppo")
TOPK_STORED_BYTES = 4 + 8  # reference_topk: fp32 value + int64 global id per entry
TOPK_SAVED_BYTES = 4 + 4 + 8 + 1  # _TopkKL saves policy and reference values, column ids, ownership mask


@dataclass
class PlanGRPOConfig(GRPOJobConfig):
    """A GRPO config as the stage reads it, validated for its shape only: `plan` needs no prompt data and may try
    frozen-model layouts of their own (a what-if the stage does not run yet)."""

    def validate(self) -> None:
        self.validate_shape()


@dataclass
class PlanPPOConfig(PPOJobConfig):
    """A PPO config as the stage reads it, validated for its shape only (see :class:`PlanGRPOConfig`)."""

    def validate(self) -> None:
        self.validate_shape()


# stage -> the config class `plan --config` loads for it (the stages' own sections and checks)
STAGE_CONFIGS = {"grpo": PlanGRPOConfig, "ppo": PlanPPOConfig}


@dataclass(frozen=True)
class FrozenModel:
    role: str  # reference | original | reward_model | generation_replica
    arch: ArchSpec
    tp: Optional[int] = None  # None: the policy's
    pp: Optional[int] = None
    head: str = "lm"

    def at(self, layout: Layout) -> Tuple[int, int]:
        return (self.tp or layout.tp, self.pp or layout.pp)


@dataclass(frozen=True)
class Rollout:
    """What generation and the RL step hold (from ``rl``; see the module docstring)."""

    max_requests: int = 64
    max_prompt_length: int = 1024
    max_new_tokens: int = 256
    block_size_tokens: int = 64
    kv_cache_gb: float = 2.0
    generation_tp: Optional[int] = None  # rl.rollout.tp: a replica at (tp, PP=1); None: the training layout
    prompts_per_step: int = 8
    num_generations: int = 3
    kl_top_k: int = 0  # 0: no top-k KL to the reference
    ref_logprob: bool = False  # k1 / k3 KL: one reference log-prob per token
    critic: bool = False  # PPO: old values + returns per token, and the critic itself
    sft_top_k: int = 0  # 0: no KL to the original model
    sft_tokens: int = 0  # tokens of the SFT micro-batches of one step (per DP rank)

    @property
    def sequence_tokens(self) -> int:
        return self.max_prompt_length + self.max_new_tokens


@dataclass(frozen=True)
class RLWorkload:
    stage: str
    rollout: Rollout
    frozen: Tuple[FrozenModel, ...] = ()
    unused: Tuple[str, ...] = ()  # keys set for a model the config does not use (reported, not counted)


# ------------------------------------------------------------------------------------------------ KV cache


@dataclass(frozen=True)
class KVCache:
    tp: int
    pp: int
    block_bytes: int
    allocated_blocks: int  # incl. megatron's dummy block
    needed_blocks: int  # max_requests full-length sequences + the dummy block
    blocks_per_sequence: int

    @property
    def allocated(self) -> int:
        return self.allocated_blocks * self.block_bytes

    @property
    def needed(self) -> int:
        return self.needed_blocks * self.block_bytes

    @property
    def concurrent_sequences(self) -> int:
        """Full-length sequences the allocated buffer holds at once."""
        return (self.allocated_blocks - 1) // self.blocks_per_sequence

    def to_dict(self) -> Dict[str, float]:
        return {"layout": f"tp{self.tp} pp{self.pp}", "block_bytes": self.block_bytes,
                "allocated_blocks": self.allocated_blocks, "allocated_gib": self.allocated / GiB,
                "needed_blocks": self.needed_blocks, "needed_gib": self.needed / GiB,
                "concurrent_sequences": self.concurrent_sequences}


def kv_block_bytes(arch: ArchSpec, tp: int, pp: int, block_tokens: int, dtype_bytes: int) -> int:
    """Bytes of one paged KV block on a (tp, pp) rank: dtype x (K, V) x layers x tokens x groups/TP x head dim."""
    return dtype_bytes * 2 * (arch.num_layers // pp) * block_tokens * (arch.num_query_groups // tp) * arch.kv_channels


def kv_cache(arch: ArchSpec, tp: int, pp: int, rollout: Rollout, dtype_bytes: int) -> KVCache:
    block = kv_block_bytes(arch, tp, pp, rollout.block_size_tokens, dtype_bytes)
    allocated = max(2, int(rollout.kv_cache_gb * GiB) // block)
    per_seq = math.ceil(rollout.sequence_tokens / rollout.block_size_tokens)
    return KVCache(tp, pp, block, allocated, rollout.max_requests * per_seq + 1, per_seq)


def generation_layout(layout: Layout, rollout: Rollout) -> Tuple[int, int]:
    return (rollout.generation_tp, 1) if rollout.generation_tp else (layout.tp, layout.pp)


# ------------------------------------------------------------------------------------------------ models


@lru_cache(maxsize=4096)
def frozen_weights(arch: ArchSpec, tp: int, pp: int, pp_rank: int, head: str, param_bytes: int,
                   vocab_divisible_by: int = 128) -> int:
    """Bytes of a frozen model's weights on one (tp, pp_rank) rank: its parameters in the params dtype, a
    scalar head in fp32; no grad buffer, no optimizer state, no DDP padding."""
    total = 0
    for chunk in rank_parameters(arch, tp, pp, pp_rank, None, vocab_divisible_by, head):
        total += sum(p.numel * (4 if p.name == SCALAR_HEAD else param_bytes) for p in chunk)
    return total


def frozen_rank_bytes(model: FrozenModel, layout: Layout, pp_rank: int, dtypes: Dtypes, vocab_divisible_by: int
                      ) -> int:
    """On the GPU of the policy's stage ``pp_rank``: the same stage of a model laid out like the policy, the
    largest stage of one laid out differently."""
    tp, pp = model.at(layout)
    if (tp, pp) == (layout.tp, layout.pp):
        return frozen_weights(model.arch, tp, pp, pp_rank, model.head, dtypes.params, vocab_divisible_by)
    return max(frozen_weights(model.arch, tp, pp, r, model.head, dtypes.params, vocab_divisible_by)
               for r in candidate_ranks(pp))


def rollout_buffer_bytes(rollout: Rollout, dp: int) -> float:
    """What one RL step stores on a DP rank (module docstring)."""
    completions = math.ceil(rollout.prompts_per_step / dp) * rollout.num_generations
    per_token = 8 + 4 + (4 if rollout.ref_logprob else 0) + (8 if rollout.critic else 0)
    total = completions * (rollout.sequence_tokens * per_token
                           + rollout.max_new_tokens * rollout.kl_top_k * TOPK_STORED_BYTES)
    return total + rollout.sft_tokens * rollout.sft_top_k * TOPK_STORED_BYTES


@dataclass
class RLRankMemory:
    pp_rank: int
    policy: RankMemory
    critic: float  # weights + grads + optimizer of the PPO critic
    frozen: Dict[str, float]  # role -> weight bytes
    kv_cache: float
    rollout_buffers: float
    topk_kl_working: float

    @property
    def total(self) -> float:
        return (self.policy.total + self.critic + sum(self.frozen.values()) + self.kv_cache + self.rollout_buffers
                + self.topk_kl_working)

    def terms(self) -> Dict[str, float]:
        """Every term in bytes, in the order the report prints them; they sum to :attr:`total`."""
        p = self.policy
        out = {"policy_weights": p.weights, "policy_grads": p.grads, "policy_optimizer": p.optimizer,
               "policy_activations": p.activations + max(p.recompute_working, p.logits_and_loss)}
        if self.critic:
            out["critic_weights_grads_optimizer"] = self.critic
        out.update({f"{role}_weights": v for role, v in self.frozen.items()})
        out.update({"kv_cache": self.kv_cache, "rollout_buffers": self.rollout_buffers,
                    "topk_kl_working": self.topk_kl_working})
        return out

    def to_dict(self) -> Dict[str, float]:
        d = dict(self.terms())
        d.update({"pp_rank": self.pp_rank, "inflight": self.policy.inflight, "total": self.total,
                  "weights": self.policy.weights, "grads": self.policy.grads, "optimizer": self.policy.optimizer,
                  "activations": self.policy.activations, "recompute_working": self.policy.recompute_working,
                  "logits_and_loss": self.policy.logits_and_loss})
        return d


def rl_rank_memory(arch: ArchSpec, layout: Layout, work: Workload, rl: RLWorkload, pp_rank: int,
                   dtypes: Dtypes) -> RLRankMemory:
    policy = rank_memory(arch, layout, work, pp_rank, dtypes)
    critic = 0.0
    if rl.rollout.critic:
        st = static_memory(arch, layout.tp, layout.pp, pp_rank, layout.vpp, layout.dp * layout.cp,
                           layout.distributed_optimizer, dtypes, work.vocab_divisible_by, head="value")
        critic = float(st.weights + st.grads + st.optimizer)
    frozen = {m.role: float(frozen_rank_bytes(m, layout, pp_rank, dtypes, work.vocab_divisible_by))
              for m in rl.frozen}
    g_tp, g_pp = generation_layout(layout, rl.rollout)
    kv = kv_cache(arch, g_tp, g_pp, rl.rollout, dtypes.params).allocated
    working = 0.0
    if pp_rank == layout.pp - 1:
        k = max(rl.rollout.kl_top_k, rl.rollout.sft_top_k)
        working = work.seq_length * work.micro_batch_size / layout.cp * k * TOPK_SAVED_BYTES
    return RLRankMemory(pp_rank, policy, critic, frozen, float(kv),
                        float(rollout_buffer_bytes(rl.rollout, layout.dp)), working)


def rl_peak(arch: ArchSpec, layout: Layout, work: Workload, rl: RLWorkload, dtypes: Dtypes) -> RLRankMemory:
    return max((rl_rank_memory(arch, layout, work, rl, r, dtypes) for r in candidate_ranks(layout.pp)),
               key=lambda m: m.total)


def layout_problem(arch: ArchSpec, layout: Layout, rl: RLWorkload, gpus_per_node: int) -> Optional[str]:
    """Why the frozen models or the generation replica cannot be placed on this layout's GPUs (None: they can)."""
    placed = [(m.role, *m.at(layout)) for m in rl.frozen]
    for role, tp, pp in placed:
        if layout.gpus % (tp * pp):
            return f"{role} at tp{tp} pp{pp} does not divide the {layout.gpus} GPUs"
        if tp > gpus_per_node:
            return f"{role} at tp{tp} spans more than one node ({gpus_per_node} GPUs)"
    return None


def rl_evaluate(arch: ArchSpec, layout: Layout, work: Workload, rl: RLWorkload, dtypes: Dtypes, recompute: str,
                gpus_per_node: int) -> Optional[Candidate]:
    """The layout's candidate for the search: k-block's k minimises the RL peak (1..layers per chunk)."""
    if layout_problem(arch, layout, rl, gpus_per_node):
        return None
    base = evaluate(arch, layout, work, dtypes, recompute)  # the recompute FLOPs overhead
    ks = [base.k]
    if recompute == "kblock":
        ks = range(1, arch.num_layers // (layout.pp * (layout.vpp or 1)) + 1)
    best = None
    for k in ks:
        mem = rl_peak(arch, layout, replace(work, recompute=recompute, recompute_k=max(k, 1)), rl, dtypes)
        if best is None or mem.total < best[1].total - 1e-6:
            best = (k, mem)
    return Candidate(layout, recompute, best[0], best[1], base.overhead)


# ------------------------------------------------------------------------------------------------ from a config


def precision_dtypes(precision: str) -> Dtypes:
    """model.precision: auto is bf16 on the GPUs the plan is for; fp16 prices like bf16."""
    return Dtypes.for_precision({"auto": "bf16", "fp16": "bf16"}.get(precision, precision))


def rl_workload(cfg: RLJobConfig, stage: str, policy: ArchSpec, reward_arch: ArchSpec) -> RLWorkload:
    if stage not in RL_STAGES:
        raise ConfigError(f"stage {stage!r}: the RL planner knows {', '.join(RL_STAGES)}")
    if cfg.model.head != "lm":
        raise ConfigError(f"model.head: the RL policy is a language model (model.head=lm), got {cfg.model.head!r}")
    rl, ro = cfg.rl, cfg.rl.rollout
    frozen: List[FrozenModel] = []
    if rl.kl.beta > 0:
        frozen.append(FrozenModel("reference", policy, *_layout_of(rl.reference_parallel)))
    if rl.kl_sft.gamma > 0:
        frozen.append(FrozenModel("original", policy, *_layout_of(rl.kl_sft.parallel)))
    if any(r.type == "model" for r in rl.rewards):
        frozen.append(FrozenModel("reward_model", reward_arch, *_layout_of(rl.reward_model.parallel), head="reward"))
    if ro.tp:
        frozen.append(FrozenModel("generation_replica", policy, ro.tp, 1))
    topk = rl.kl.beta > 0 and rl.kl.estimator == "topk"
    sft_tokens = rl.kl_sft.micro_batches * cfg.train.micro_batch_size * cfg.data.seq_length if rl.kl_sft.gamma > 0 \
        else 0
    rollout = Rollout(max_requests=ro.max_requests, max_prompt_length=ro.max_prompt_length,
                      max_new_tokens=ro.max_new_tokens, block_size_tokens=ro.block_size_tokens,
                      kv_cache_gb=ro.kv_cache_gb, generation_tp=ro.tp, prompts_per_step=rl.prompts_per_step,
                      num_generations=rl.num_generations, kl_top_k=rl.kl.top_k if topk else 0,
                      ref_logprob=rl.kl.beta > 0 and not topk, critic=stage == "ppo",
                      sft_top_k=rl.kl_sft.top_k if rl.kl_sft.gamma > 0 else 0, sft_tokens=sft_tokens)
    for m in frozen:  # a frozen layout the model cannot take is a config error, named
        tp, pp = m.tp or cfg.parallel.tp, m.pp or cfg.parallel.pp
        try:
            check_layout(m.arch, tp, pp)
        except ValueError as exc:
            raise ConfigError(f"{_FROZEN_KEYS[m.role]}: {exc}") from None
    roles = {m.role for m in frozen}
    rm = rl.reward_model
    unused = [key for key, role, is_set in (
        ("rl.reference_parallel", "reference", _is_set(rl.reference_parallel)),
        ("rl.kl_sft.parallel", "original", _is_set(rl.kl_sft.parallel)),
        ("rl.reward_model", "reward_model", bool(rm.name or rm.hf_config) or _is_set(rm.parallel)))
        if is_set and role not in roles]
    return RLWorkload(stage, rollout, tuple(frozen), tuple(unused))


def _is_set(frozen_layout) -> bool:
    return frozen_layout.tp is not None or frozen_layout.pp is not None


_FROZEN_KEYS = {"reference": "rl.reference_parallel", "original": "rl.kl_sft.parallel",
                "reward_model": "rl.reward_model.parallel", "generation_replica": "rl.rollout.tp"}


def _layout_of(frozen_layout) -> Tuple[Optional[int], Optional[int]]:
    return (frozen_layout.tp, frozen_layout.pp)


def config_layout(cfg: SFTConfig, gpus: Optional[int]) -> Layout:
    p = cfg.parallel
    mp = p.tp * p.pp * p.cp
    gpus = gpus or mp
    if gpus % mp:
        raise ConfigError(f"--gpus {gpus} is not a multiple of parallel.tp*pp*cp = {mp}")
    return Layout(tp=p.tp, pp=p.pp, cp=p.cp, dp=gpus // mp, vpp=p.interleaved_vpp, sp=p.sp,
                  distributed_optimizer=p.distributed_optimizer)


def config_space(cfg: SFTConfig, gpus_per_node: int, max_gpus: int, tp_grid: Tuple[int, ...]) -> SearchSpace:
    """The grid the RL search walks: the config's VPP, SP and optimizer sharding; CP = 1 (the trainer's
    parallel.cp must be 1)."""
    return SearchSpace(gpus_per_node=gpus_per_node, max_gpus=max_gpus,
                       tp=tuple(t for t in tp_grid if t <= gpus_per_node), cp=(1,), vpp=cfg.parallel.interleaved_vpp,
                       sp=cfg.parallel.sp, distributed_optimizer=cfg.parallel.distributed_optimizer)



def config_workload(cfg: SFTConfig, dtypes: Dtypes) -> Workload:
    """The policy's training pass as the SFT planner prices it: packed rows of data.seq_length, the config's
    micro-batch, recompute and kernels (transformer_impl auto / te: TE norm + THD attention on the GPU;
    local: our RMSNorm and the configured packed-row attention, auto = flex on CUDA)."""
    from megatron_align.plan.activations import ActivationOptions

    m = cfg.model
    te = m.transformer_impl in ("auto", "te")
    attention = "te" if te else {"auto": "flex"}.get(m.attention_backend, m.attention_backend)
    opts = ActivationOptions(act_bytes=dtypes.activations, norm="fused" if te else "local",
                             loss_backend=m.loss_backend, attention=attention, loss_chunk_size=m.loss_chunk_size)
    return Workload(seq_length=cfg.data.seq_length, micro_batch_size=cfg.train.micro_batch_size,
                    recompute=m.recompute, recompute_k=m.recompute_k,
                    vocab_divisible_by=m.make_vocab_size_divisible_by, options=opts)


def model_names(cfg: RLJobConfig, rl: RLWorkload) -> Dict[str, str]:
    """role -> what the report prints for it."""
    policy = cfg.model.hf_config or cfg.model.name or "the checkpoint's model"
    out = {"policy": f"{policy} (trainable)"}
    if rl.rollout.critic:
        out["critic"] = f"{policy}, head=value (trainable)"
    rm = cfg.rl.reward_model
    for m in rl.frozen:
        arch = (rm.hf_config or rm.name or policy) if m.role == "reward_model" else policy
        head = ", head=reward" if m.head != "lm" else ""
        out[m.role] = f"{arch}{head} (frozen)"
    return out
