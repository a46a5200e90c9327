"""The planner's formulas: exact parameter bookkeeping, the k-block models, schedules, and the 70B/16K answer."""

import math
from dataclasses import replace

import pytest

from megatron_align.models.arch import padded_vocab_size
from megatron_align.models.families import preset
from megatron_align.plan import activations as act
from megatron_align.plan.flops import recompute_overhead
from megatron_align.plan.kblock import detailed_curve, report_optimal_k, report_units, units_per_layer
from megatron_align.plan.memory import GiB, Dtypes, Layout, Workload, best_k, peak_memory
from megatron_align.plan.params import buffer_layout, rank_parameters, shard_elements
from megatron_align.plan.search import SearchSpace, search

OPTS = act.ActivationOptions()


@pytest.mark.parametrize("name", ["llama3-70b", "qwen2-72b", "qwen2-0.5b", "baichuan2-7b"])
@pytest.mark.parametrize("tp,pp,vpp", [(1, 1, None), (8, 1, None), (2, 4, None), (2, 2, 2)])
def test_rank_parameters_add_up_to_the_model(name, tp, pp, vpp):
    arch = preset(name)
    if arch.num_layers % (pp * (vpp or 1)) or arch.num_query_groups % tp:
        pytest.skip("layout does not divide this model")
    total = sum(p.numel for r in range(pp) for chunk in rank_parameters(arch, tp, pp, r, vpp) for p in chunk)
    norms = 2 * arch.num_layers * arch.hidden_size + arch.hidden_size  # replicated over TP
    vocab = padded_vocab_size(arch.vocab_size, 128, tp)
    extra_table = vocab * arch.hidden_size if (arch.tie_embeddings and pp > 1) else 0  # last stage's copy
    assert tp * (total - norms) + norms - extra_table == arch.num_parameters(vocab)


@pytest.mark.parametrize("dp", [1, 2, 3, 8, 64])
def test_distributed_optimizer_shards_cover_every_element(dp):
    chunk = rank_parameters(preset("qwen2-0.5b"), 1, 2, 1)[0]  # last stage: shared embedding bucket
    lay = buffer_layout(chunk, dp, True)
    assert len(lay.buckets) == 2 and lay.numel % math.lcm(dp, 128) == 0
    assert all(s % 64 == 0 for s, _ in lay.ranges)
    assert sum(shard_elements(lay, dp)) == sum(p.numel for p in chunk)
    plain = buffer_layout(chunk, dp, False)
    assert plain.numel == sum(p.numel for p in chunk) and len(plain.buckets) == 1


def test_report_model_optimum_is_sqrt_L_over_n():
    for L, n in [(80, 20.0), (80, 6.0), (32, 2.0), (60, 15.0)]:
        k_star = report_optimal_k(L, n)
        best = min(range(1, L + 1), key=lambda k: report_units(L, n, k))
        assert best in (math.floor(k_star), math.ceil(k_star))
        values = [report_units(L, n, k) for k in range(1, L + 1)]
        assert all(a >= b for a, b in zip(values[:best - 1], values[1:best]))  # decreasing up to k*
        assert all(a <= b for a, b in zip(values[best - 1:], values[best:]))  # increasing after


def test_detailed_kblock_terms_are_monotone_in_k():
    arch = preset("llama3-70b")
    kept = [act.retained_per_chunk(arch, 20, 8, True, "kblock", k, OPTS) for k in range(1, 21)]
    rebuilt = [act.recompute_transient(arch, 20, 8, True, "kblock", k, OPTS) for k in range(1, 21)]
    assert all(a >= b for a, b in zip(kept, kept[1:])) and all(a < b for a, b in zip(rebuilt, rebuilt[1:]))
    assert kept[0] == 20 * act.checkpoint_bytes_per_token(arch, 8, True, OPTS)  # k=1 is per-layer recompute


@pytest.mark.parametrize("tp,sp,pp", [(8, True, 1), (8, True, 4), (8, False, 4), (1, False, 1), (2, True, 8)])
def test_detailed_best_k_is_near_the_report_optimum(tp, sp, pp):
    arch = preset("llama3-70b")
    n = units_per_layer(arch, tp, sp, OPTS)
    curve = detailed_curve(arch, tp, pp, sp, OPTS)
    k_best = min(curve, key=lambda kv: kv[1])[0]
    k_star = report_optimal_k(arch.num_layers, n)
    assert abs(k_best - k_star) <= 1.0, (k_best, k_star)


def test_layer_formula_for_llama3_70b():
    """Per layer with TP+SP (units of β·h/t): norms 2 + linear inputs 2 + QKV buffer 1.25 + Q,K after RoPE
    1.125 + O 1 + SwiGLU 5·3.5 = 24.875, plus the replicated RoPE cos/sin (4·β·d) and fp32 LSE / rstd."""
    arch = preset("llama3-70b")
    t = act.layer_terms(arch, 8, True, OPTS)
    unit = 2 * arch.hidden_size / 8
    big = (t["norm_inputs"] + t["linear_inputs"] + t["qkv_buffer"] + t["qk_rope"] + t["attention_out"]
           + t["swiglu"])
    assert big == pytest.approx(24.875 * unit)
    assert t["rope_cos_sin"] == 4 * 2 * 128 and t["attention_lse"] == 4 * 64 / 8 and t["norm_rstd"] == 1
    no_sp = act.layer_terms(arch, 8, False, OPTS)
    assert no_sp["norm_inputs"] == 8 * t["norm_inputs"] and no_sp["swiglu"] == t["swiglu"]
    assert no_sp["rope_cos_sin"] == t["rope_cos_sin"]  # neither TP nor SP divides it
    fused = act.layer_terms(arch, 8, True, replace(OPTS, fused_swiglu=True))
    assert fused["swiglu"] == 0.6 * t["swiglu"]
    flex = act.layer_terms(arch, 8, True, replace(OPTS, attention="flex"), seq_length=16384)
    assert flex["attention_mask"] == 16 * 128 ** 2 / 16384  # four int32 [s/128, s/128] BlockMask tables


def test_logits_bytes_per_backend():
    """bf16, TP=8: kept + transient bytes per logit: fused 2+2, megatron 4+2, te 2+0; fused_linear keeps none
    and holds 2 fp32 [chunk, V/t] buffers."""
    arch = preset("llama3-70b")
    v = 128256 // 8
    got = {}
    for backend in act.LOSS_BACKENDS:
        o = replace(OPTS, loss_backend=backend)
        kept = act.output_terms(arch, 128256, 8, True, o)["logits"]
        extra = sum(act.output_peak_terms(arch, 128256, 8, o, 16384).values())
        got[backend] = (kept / v, extra / v)
    assert got["fused"] == (2, 2) and got["megatron"] == (4, 2) and got["te"] == (2, 0)
    assert got["fused_linear"] == (0, 2 * 4096 * 4 / 16384)
    assert act.output_peak_terms(arch, 128256, 8, replace(OPTS, loss_backend="megatron", act_bytes=4), 1)[
        "logits_transient"] == 0  # fp32: .float() is the logits themselves, the gradient is made in place
    with pytest.raises(ValueError, match="loss backend"):
        act.ActivationOptions(loss_backend="nope")


def test_sdpa_mask_is_kept_once_per_microbatch_without_recompute():
    arch = preset("llama3-8b")
    sdpa = replace(OPTS, attention="sdpa")
    assert act.microbatch_terms(arch, 1, False, "none", sdpa, 8192, False) == {"attention_mask": 2 * 8192}
    assert "attention_mask" not in act.microbatch_terms(arch, 1, False, "full", sdpa, 8192, False)
    assert act.recompute_transient(arch, 4, 1, False, "full", 1, sdpa, 8192) == pytest.approx(
        act.layer_bytes_per_token(arch, 1, False, sdpa, 8192) + 2 * 8192)


def test_pipeline_inflight_microbatches():
    assert [act.inflight_microbatches(4, r) for r in range(4)] == [4, 3, 2, 1]
    assert act.inflight_microbatches(4, 0, num_microbatches=2) == 2
    for pp, vpp in [(4, 2), (8, 5), (2, 4)]:  # stage 0 holds L·(1 + (pp-1)/(pp·vpp)) layers' worth
        L = 80
        chunks = act.inflight_microbatches(pp, 0, vpp)
        assert chunks * L / (pp * vpp) == pytest.approx(L * (1 + (pp - 1) / (pp * vpp)))


def test_recompute_cost():
    arch = preset("llama3-70b")
    full = recompute_overhead(arch, 16384, 128256, "full")
    sel = recompute_overhead(arch, 16384, 128256, "selective")
    assert 0.32 < full < 1 / 3 and 0.02 < sel < 0.08 and recompute_overhead(arch, 16384, 128256, "none") == 0


def test_kblock_never_needs_more_memory_than_per_layer():
    arch, d = preset("llama3-70b"), Dtypes()
    for layout in [Layout(tp=8, pp=4), Layout(tp=1, pp=16, cp=2), Layout(tp=8, pp=2, vpp=2, dp=2)]:
        w = Workload(seq_length=16384)
        k = best_k(arch, layout, w, d)
        kb = peak_memory(arch, layout, replace(w, recompute="kblock", recompute_k=k), d).total
        full = peak_memory(arch, layout, replace(w, recompute="full"), d).total
        none = peak_memory(arch, layout, w, d).total
        assert kb <= full < none


def test_llama3_70b_16k_minimum_gpus_are_stable():
    arch = preset("llama3-70b")
    res = search(arch, Workload(seq_length=16384), Dtypes(), SearchSpace(), 80 * GiB * 0.9)
    assert res.min_gpus == {"none": 64, "selective": 64, "full": 32, "kblock": 32}
    assert res.best["kblock"].k == 2 and res.best["kblock"].layout == Layout(tp=8, pp=4)
    assert res.best["kblock"].memory.total < res.best["full"].memory.total
    # Without tensor parallelism (ZeRO-1 + CP + PP only): 40 GPUs with per-layer or k-block recompute (PP=20,
    # 4 layers a stage, k=2), no recompute fits nowhere up to 512.
    no_tp = search(arch, Workload(seq_length=16384), Dtypes(), SearchSpace(tp=(1,)), 80 * GiB * 0.9,
                   modes=("none", "full", "kblock"))
    assert no_tp.min_gpus == {"none": None, "full": 40, "kblock": 40}
    assert no_tp.best["kblock"].k == 2 and no_tp.best["kblock"].layout == Layout(tp=1, pp=20, cp=2)
