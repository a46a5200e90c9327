"""The planner's RL case (GRPO / PPO): each term by hand from its definition, the measured KV cache, frozen
weights and critic state of a tiny model on CPU, the search with the RL terms, the 70B GRPO example config,
and `plan --config` on tiny GRPO / PPO configs and bad input."""

import json
import math
import os

import pytest
import yaml

from megatron_align.cli import main
from megatron_align.config.base import load_config
from megatron_align.models.arch import padded_vocab_size
from megatron_align.models.families import preset
from megatron_align.plan.memory import GiB, Dtypes, Layout, Workload, rank_memory, static_memory
from megatron_align.plan.rl import (STAGE_CONFIGS, TOPK_SAVED_BYTES, FrozenModel, RLWorkload, Rollout, config_layout,
                                    config_workload, frozen_weights, kv_block_bytes, kv_cache, rl_peak,
                                    rl_rank_memory, rl_workload, rollout_buffer_bytes)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = preset("tiny-llama")  # L=4, h=64, 4 heads / 2 query groups, head dim 16, vocab 2048, untied
BF16 = Dtypes()


def _params(arch, padded_vocab, head="lm"):
    """Parameters of the whole model from the architecture (tp=1, pp=1), by hand."""
    h, f, d = arch.hidden_size, arch.ffn_hidden_size, arch.kv_channels
    q, kv = arch.num_attention_heads * d, 2 * arch.num_query_groups * d
    layer = 2 * h + q * h + (q + kv) * h + 3 * f * h
    table = padded_vocab * h
    out_layer = h if head != "lm" else (0 if arch.tie_embeddings else table)
    return arch.num_layers * layer + table + h + out_layer


# ------------------------------------------------------------------------------------------- by hand


def test_kv_cache_by_hand():
    # bf16 x (K, V) x 4/2 layers x 16 tokens x 2/2 query groups x 16 head dim
    assert kv_block_bytes(TINY, tp=2, pp=2, block_tokens=16, dtype_bytes=2) == 2 * 2 * 2 * 16 * 1 * 16 == 2048
    ro = Rollout(max_requests=3, max_prompt_length=25, max_new_tokens=15, block_size_tokens=16, kv_cache_gb=1e-5)
    kv = kv_cache(TINY, 2, 2, ro, 2)
    assert kv.allocated_blocks == int(1e-5 * GiB) // 2048 == 5 and kv.allocated == 5 * 2048
    assert kv.blocks_per_sequence == math.ceil(40 / 16) == 3
    assert kv.needed_blocks == 3 * 3 + 1 and kv.needed == 10 * 2048
    assert kv.concurrent_sequences == (5 - 1) // 3 == 1  # the dummy block is not usable
    # megatron's floor of two blocks for a tiny buffer
    assert kv_cache(TINY, 2, 2, Rollout(kv_cache_gb=1e-9, block_size_tokens=16), 2).allocated_blocks == 2
    # llama3-70b at TP8 x PP4, 64-token blocks: 20 layers x 1 KV head x 128 in bf16 = 0.625 MiB
    assert kv_block_bytes(preset("llama3-70b"), 8, 4, 64, 2) == 2 * 2 * 20 * 64 * 1 * 128 == 655360


def test_frozen_weights_are_parameters_times_dtype():
    v = padded_vocab_size(TINY.vocab_size, 128, 1)
    assert frozen_weights(TINY, 1, 1, 0, "lm", 2) == 2 * _params(TINY, v) == 2 * TINY.num_parameters(v)
    # a reward model: the fp32 [1, h] scalar head replaces the output layer
    n = _params(TINY, v, head="reward")
    assert frozen_weights(TINY, 1, 1, 0, "reward", 2) == 2 * (n - TINY.hidden_size) + 4 * TINY.hidden_size
    assert frozen_weights(TINY, 1, 1, 0, "reward", 4) == 4 * n
    # stages of a TP2 x PP2 layout add up to the model / TP (norms replicated over TP)
    h = TINY.hidden_size
    per_tp = sum(frozen_weights(TINY, 2, 2, r, "lm", 2) for r in (0, 1))
    replicated = TINY.num_layers * 2 * h + h
    assert per_tp == 2 * ((_params(TINY, v) - replicated) // 2 + replicated)


def _work(seq=256, mbs=2):
    return Workload(seq_length=seq, micro_batch_size=mbs, recompute="full", recompute_k=1)


def _rollout(**kw):
    base = dict(max_requests=4, max_prompt_length=24, max_new_tokens=40, block_size_tokens=16, kv_cache_gb=0.001,
                prompts_per_step=6, num_generations=3)
    return Rollout(**{**base, **kw})


def test_frozen_models_add_weights_only():
    layout = Layout(tp=2, pp=2, dp=2)
    work = _work()
    bare = RLWorkload("grpo", _rollout())
    ref = RLWorkload("grpo", _rollout(), (FrozenModel("reference", TINY),))
    other = RLWorkload("grpo", _rollout(), (FrozenModel("reference", TINY, tp=1, pp=1),))
    for r in (0, 1):
        a, b, c = (rl_rank_memory(TINY, layout, work, x, r, BF16) for x in (bare, ref, other))
        same_stage = frozen_weights(TINY, 2, 2, r, "lm", 2)
        assert b.total - a.total == same_stage == b.frozen["reference"]
        # laid out differently (TP1 x PP1: DP 4): the whole model on every GPU
        assert c.total - a.total == frozen_weights(TINY, 1, 1, 0, "lm", 2) == 2 * TINY.num_parameters(2048)
        assert (b.policy.weights, b.policy.grads, b.policy.optimizer) == (a.policy.weights, a.policy.grads,
                                                                          a.policy.optimizer)


def test_critic_adds_a_trainable_value_model():
    layout = Layout(tp=1, pp=1, dp=1, distributed_optimizer=False)
    work, fp32 = _work(), Dtypes.for_precision("fp32")
    grpo = rl_rank_memory(TINY, layout, work, RLWorkload("grpo", _rollout()), 0, fp32)
    ppo = rl_rank_memory(TINY, layout, work, RLWorkload("ppo", _rollout(critic=True)), 0, fp32)
    n = _params(TINY, 2048, head="value")
    # fp32: weights 4 + main_grad 4 + Adam 2 x 4 bytes per parameter, no master copy
    assert ppo.critic == n * (4 + 4 + 8)
    # the critic's old values and returns: 8 bytes per token of every stored completion
    assert ppo.rollout_buffers - grpo.rollout_buffers == 6 * 3 * 64 * 8
    assert ppo.total - grpo.total == ppo.critic + 6 * 3 * 64 * 8


def test_rollout_buffers_and_topk_working_by_hand():
    ro = _rollout(kl_top_k=50, sft_top_k=20, sft_tokens=512, prompts_per_step=7)
    completions = math.ceil(7 / 2) * 3  # groups never split: 4 prompts on the busier DP rank
    per = 64 * (8 + 4) + 40 * 50 * 12  # ids + old log-probs per token; fp32 + int64 top-k per response token
    assert rollout_buffer_bytes(ro, dp=2) == completions * per + 512 * 20 * 12
    layout, work = Layout(tp=2, pp=2, dp=2), _work(seq=256, mbs=2)
    rl = RLWorkload("grpo", ro)
    first, last = (rl_rank_memory(TINY, layout, work, rl, r, BF16) for r in (0, 1))
    assert first.topk_kl_working == 0
    assert last.topk_kl_working == 256 * 2 * 50 * TOPK_SAVED_BYTES == 256 * 2 * 50 * 17
    kv = kv_cache(TINY, 2, 2, ro, 2).allocated
    for m in (first, last):  # every term adds: policy (SFT model) + the RL terms
        policy = rank_memory(TINY, layout, work, m.pp_rank, BF16)
        assert m.total == pytest.approx(policy.total + kv + rollout_buffer_bytes(ro, 2) + m.topk_kl_working)
        assert sum(m.terms().values()) == pytest.approx(m.total)


def test_generation_replica_moves_the_kv_cache():
    """rl.rollout.tp set: generation runs in a TP=rollout.tp, PP=1 replica (its weights counted, all layers'
    KV on every GPU)."""
    layout, work = Layout(tp=2, pp=2, dp=1), _work()
    plain = RLWorkload("grpo", _rollout())
    replica = RLWorkload("grpo", _rollout(generation_tp=1), (FrozenModel("generation_replica", TINY, 1, 1),))
    a, b = (rl_rank_memory(TINY, layout, work, x, 0, BF16) for x in (plain, replica))
    assert a.kv_cache == kv_cache(TINY, 2, 2, _rollout(), 2).allocated
    assert b.kv_cache == kv_cache(TINY, 1, 1, _rollout(), 2).allocated
    assert b.frozen["generation_replica"] == 2 * TINY.num_parameters(2048)


# ------------------------------------------------------------------------------------------- measured


@pytest.mark.distributed
@pytest.mark.compat
def test_terms_equal_what_megatron_allocates():
    """TP=2 on two gloo ranks: the dynamic engine's KV buffer, a frozen reward model's parameters (bf16, the head
    fp32) and a bf16 critic's DDP buffers + Adam states are exactly the planner's numbers."""
    from helpers.dist import run_distributed
    from rl_plan_workers import KV, MODEL, SEQ, measure_rl

    arch = preset(MODEL)
    ro = Rollout(max_requests=KV["max_requests"], kv_cache_gb=KV["buffer_size_gb"],
                 block_size_tokens=KV["block_size_tokens"], max_prompt_length=SEQ - 16, max_new_tokens=16)
    kv = kv_cache(arch, 2, 1, ro, 2)
    st = static_memory(arch, 2, 1, 0, None, 1, True, BF16, head="value")
    for got in run_distributed(measure_rl, 2, 2):
        assert got["kv"] == {"bytes": kv.allocated, "blocks": kv.allocated_blocks, "block_bytes": kv.block_bytes}
        assert got["reward_bf16"] == frozen_weights(arch, 2, 1, 0, "reward", 2)
        c = got["critic"]
        opt = c["optimizer"]
        assert (c["weights"], c["grads"]) == (st.weights, st.grads)
        assert st.optimizer == opt["exp_avg"] + opt["exp_avg_sq"] + opt["main_params"]


# ------------------------------------------------------------------------------------------- configs


def _tiny_config(tmp_path, **rl_over):
    rl = {"prompts_per_step": 4, "num_generations": 3,
          "rollout": {"max_prompt_length": 48, "max_new_tokens": 16, "max_requests": 8, "kv_cache_gb": 0.01,
                      "block_size_tokens": 16},
          "kl": {"beta": 0.04, "top_k": 64},
          "kl_sft": {"gamma": 0.1, "data": "sft.jsonl", "top_k": 32},
          "rewards": [{"type": "model", "params": {"scorer": "rm"}}, {"type": "exact_match"}]}
    rl.update(rl_over)
    cfg = {"model": {"name": "tiny-llama", "precision": "fp32", "transformer_impl": "local",
                     "attention_backend": "sdpa"},
           "parallel": {"tp": 2, "pp": 2},
           "data": {"path": "prompts.jsonl", "tokenizer": "tok", "seq_length": 64},
           "train": {"micro_batch_size": 1}, "rl": rl}
    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_plan_tiny_rl_config(tmp_path, capsys, stage):
    path = _tiny_config(tmp_path)
    assert main(["plan", "--config", path, "--stage", stage, "--gpus", "8", "--gpu-memory", "1", "--max-gpus", "16",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["layout"] == "tp2 pp2 cp1 dp2" and rep["fits"]
    assert set(rep["frozen_layouts"]) == {"reference", "original", "reward_model"}
    # the numbers of the report are the module's
    cfg = load_config(STAGE_CONFIGS[stage], path)
    dtypes = Dtypes.for_precision("fp32")
    rl = rl_workload(cfg, stage, TINY, TINY)
    peak = rl_peak(TINY, config_layout(cfg, 8), config_workload(cfg, dtypes), rl, dtypes)
    assert rep["peak"]["total_gib"] == round(peak.total / GiB, 3)
    assert ("critic_weights_grads_optimizer" in rep["ranks"][0]) == (stage == "ppo")
    assert rep["kv_cache"]["block_bytes"] == kv_block_bytes(TINY, 2, 2, 16, 4)
    assert rep["rollout"]["kl_sft_tokens"] == 64 and rep["rollout"]["kl_top_k"] == 64
    assert main(["plan", "--config", path, "--stage", stage, "--gpus", "8", "--gpu-memory", "1",
                 "--max-gpus", "16"]) == 0
    text = capsys.readouterr().out
    for needle in ("reference weights (frozen)", "KV cache (allocated)", "rollout buffers", "fits",
                   "search with the RL terms"):
        assert needle in text


def test_search_counts_the_rl_terms(tmp_path, capsys):
    """llama3-8b on 40 GiB GPUs: the reference, original and reward models (3 x 16 GB of bf16 weights to spread)
    raise the smallest GPU count the search finds, and every feasible layout's total (frozen weights and KV
    cache included) is within the budget."""
    over = ["model.name=llama3-8b", "model.precision=bf16", "data.seq_length=2048", "--gpu-memory", "40",
            "--max-gpus", "32", "--json"]
    mins = {}
    for name, extra in (("bare", {"kl": {"beta": 0.0}, "kl_sft": {"gamma": 0.0}, "rewards": []}), ("frozen", {})):
        assert main(["plan", "--config", _tiny_config(tmp_path, **extra), *over]) == 0
        s = json.loads(capsys.readouterr().out)["search"]
        for c in s["feasible"]:
            m = c["memory_gib"]
            assert m["total"] <= 40 * 0.9 + 1e-3 and m["kv_cache"] > 0
            assert (m.get("reference_weights", 0) > 0) == (name == "frozen")
        mins[name] = s["min_gpus"]["full"]
    assert mins["bare"] is not None and mins["frozen"] is not None and mins["frozen"] > mins["bare"], mins


def test_grpo_llama3_70b_fits(capsys):
    """The example config: the report's GRPO at 70B (n=3, top-500 KL, kl_sft, a reward model) fits 80 GB H100s
    at its layout, with every frozen model and the KV cache counted."""
    path = os.path.join(ROOT, "examples", "configs", "grpo_llama3_70b.yaml")
    assert main(["plan", "--config", path, "--gpus", "32", "--max-gpus", "32", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["fits"] and rep["layout"] == "tp8 pp4 cp1 dp1"
    assert rep["peak"]["total_gib"] <= rep["assumptions"]["budget_gib"]
    assert rep["rollout"]["num_generations"] == 3 and rep["rollout"]["kl_top_k"] == 500
    assert rep["rollout"]["kl_sft_top_k"] == 500
    assert set(rep["frozen_layouts"]) == {"reference", "original", "reward_model"}
    assert rep["kv_cache"]["holds_max_requests"]
    stage0 = rep["ranks"][0]
    # three frozen 70B models on 32 GPUs: bf16 weights only, as many bytes as the policy's bf16 weights
    assert stage0["reference_weights"] == stage0["original_weights"] == stage0["policy_weights"]
    assert rep["search"]["min_gpus"]["kblock"] == 32


def test_bad_input_is_one_line(tmp_path, capsys):
    path = _tiny_config(tmp_path, reference_parallel={"tp": 3})
    assert main(["plan", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "rl.reference_parallel" in err and "tp=3" in err and "Traceback" not in err
    assert main(["plan", "--config", _tiny_config(tmp_path, bogus=1)]) == 2
    assert "rl.bogus" in capsys.readouterr().err
    assert main(["plan", "--config", _tiny_config(tmp_path), "--model", "llama3-8b"]) == 2
    assert "--config reads the model" in capsys.readouterr().err
    assert main(["plan", "--config", _tiny_config(tmp_path), "--gpus", "6"]) == 2
    assert "--gpus 6" in capsys.readouterr().err
    assert main(["plan", "--model", "llama3-8b"]) == 2
    assert "--seq-length" in capsys.readouterr().err
    sft = os.path.join(ROOT, "examples", "configs", "llama3_70b.yaml")
    assert main(["plan", "--config", sft]) == 2
    assert "no `rl` section" in capsys.readouterr().err
    assert main(["plan", "--config", _tiny_config(tmp_path), "model.head=reward"]) == 2
    assert "model.head" in capsys.readouterr().err


def test_notes_name_what_does_not_fit_a_row_or_the_cache(tmp_path, capsys):
    path = _tiny_config(tmp_path)
    assert main(["plan", "--config", path, "data.seq_length=32", "rl.rollout.kv_cache_gb=0.0001", "--max-gpus", "8"]) == 0
    text = capsys.readouterr().out
    assert "note: data.seq_length=32 is shorter than rl.rollout.max_prompt_length + max_new_tokens = 64" in text
    # fp32 KV at TP2 x PP2: 4 x 2 x 2 layers x 16 tokens x 1 group x 16 = 4096 B a block; 8 requests x 4 blocks + 1
    assert "raise kv_cache_gb to 0.00" in text and "SHORT" in text
    assert main(["plan", "--config", path, "rl.kl.beta=0", "rl.reference_parallel.tp=1", "--max-gpus", "8"]) == 0
    text = capsys.readouterr().out
    assert "note: rl.reference_parallel is set but rl.kl.beta is 0: that model is not loaded and not counted" in text
    assert "reference weights" not in text
    assert main(["plan", "--config", path, "parallel.vpp=2", "--max-gpus", "8"]) == 0
    assert "note: parallel.vpp=2: the generation engine takes one model chunk" in capsys.readouterr().out
    assert kv_cache(TINY, 2, 2, _rollout(max_requests=8, max_prompt_length=48, max_new_tokens=16), 4).needed == \
        (8 * 4 + 1) * 4096
