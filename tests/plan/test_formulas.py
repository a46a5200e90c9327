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
    """20.25·h/t bytes-units per token with TP+SP (plus fp32 LSE and rstd), Korthikanti's 34/t for GPT."""
    arch = preset("llama3-70b")
    terms = act.layer_terms(arch, 8, True, OPTS)
    big = terms["norm_inputs"] + terms["linear_inputs"] + terms["attention_qkvo"] + terms["swiglu_mlp"]
    assert big == 2 * arch.hidden_size * 20.25 / 8
    no_sp = act.layer_terms(arch, 8, False, OPTS)
    assert no_sp["norm_inputs"] == 8 * terms["norm_inputs"] and no_sp["swiglu_mlp"] == terms["swiglu_mlp"]
    fused = act.layer_terms(arch, 8, True, replace(OPTS, fused_swiglu=True))
    assert fused["swiglu_mlp"] == 0.75 * terms["swiglu_mlp"]


def test_megatron_ce_keeps_three_times_the_fused_logits():
    arch = preset("llama3-70b")
    fused = act.output_terms(arch, 128256, 8, True, OPTS)["logits"]
    meg = act.output_terms(arch, 128256, 8, True, replace(OPTS, fused_ce=False))["logits"]
    assert fused == 2 * 128256 / 8 and meg == 3 * fused


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
    # Without tensor parallelism (ZeRO-1 + CP + PP only), k-block is what brings 40 GPUs down to 32.
    no_tp = search(arch, Workload(seq_length=16384), Dtypes(), SearchSpace(tp=(1,)), 80 * GiB * 0.9,
                   modes=("full", "kblock"))
    assert no_tp.min_gpus == {"full": 40, "kblock": 32}
