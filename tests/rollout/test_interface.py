"""The engine-independent pieces of the rollout interface: sampling parameters, stop truncation,
prompt screening, the tokenizer adapter, and the megatron engine's parameter mapping."""

import pytest

from megatron_align.rollout import FinishReason, GenerationEngine, SamplingParams, screen_prompts
from megatron_align.rollout.engine import Generation, truncate_at_stop


def test_sampling_params_validation():
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_k=1).greedy
    assert not SamplingParams(temperature=0.7).greedy
    assert SamplingParams(stop_ids=[3, 4]).stop_ids == (3, 4)
    for bad, msg in [(dict(temperature=-1), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_k=-2), "top_k"),
                     (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=float("nan")), "temperature")]:
        with pytest.raises(ValueError, match=msg):
            SamplingParams(**bad)


def test_truncate_at_stop():
    g = truncate_at_stop([5, 6, 2, 7, 2], [-0.1, -0.2, -0.3, -0.4, -0.5], stop_ids=(2, 9), max_new_tokens=10)
    assert g == Generation([5, 6, 2], [-0.1, -0.2, -0.3], FinishReason.STOP)
    g = truncate_at_stop([5, 6, 7], [-0.1, -0.2, -0.3], stop_ids=(2,), max_new_tokens=2)
    assert g.token_ids == [5, 6] and g.finish_reason is FinishReason.LENGTH
    with pytest.raises(ValueError, match="2 generated ids but 1 log-probs"):
        Generation([1, 2], [0.0], FinishReason.LENGTH)


def test_screen_prompts_counts_what_it_skips():
    s = screen_prompts([[1, 2], [], [1] * 9, [3], []], max_prompt_length=8)
    assert s.kept == [0, 3] and s.empty == 2 and s.too_long == 1 and s.skipped == 3


def test_tokenizer_adapter_round_trip():
    from megatron_align.data.tokenizer import load_tokenizer
    from megatron_align.rollout.tokenizer import IdsOnlyTokenizer, MegatronTokenizerAdapter

    tok = load_tokenizer("megatron_align/assets/tiny")
    eos = tok.token_id("</s>")
    ad = MegatronTokenizerAdapter(tok, eod=eos)
    ids = ad.tokenize("hello world")
    assert ids and ad.detokenize(ids) == tok.decode(ids) and ad.eod == eos and ad.vocab_size == tok.vocab_size
    assert IdsOnlyTokenizer().detokenize([4, 5]) == "4 5"
    with pytest.raises(ValueError, match="no tokenizer"):
        IdsOnlyTokenizer().tokenize("x")


def test_megatron_engine_parameter_mapping():
    from megatron_align.rollout.megatron_engine import MegatronGenerationEngine

    assert issubclass(MegatronGenerationEngine, GenerationEngine)
    to_m = MegatronGenerationEngine._megatron_params
    g = to_m(None, SamplingParams(temperature=0.0, top_p=0.5, max_new_tokens=7, stop_ids=(2, 3)))
    assert (g.top_k, g.temperature, g.top_p, g.num_tokens_to_generate, g.termination_id) == (1, 1.0, 0.0, 7, 2)
    s = to_m(None, SamplingParams(temperature=0.7, top_p=0.9))
    assert (s.top_k, s.temperature, s.top_p, s.termination_id, s.return_log_probs) == (0, 0.7, 0.9, -1, True)
    with pytest.raises(ValueError, match="top_k and top_p cannot be combined"):
        to_m(None, SamplingParams(top_k=20, top_p=0.9))


def test_megatron_api_generation_by_version():
    """One builder per megatron-core inference API generation; the 0.17+ one keeps the stop token (megatron
    drops a matched stop word unless detokenize_stop_sequence); an unsupported version is one clear error."""
    from megatron_align.rollout import mcore_inference as mi

    assert mi.api_for("0.16.1").build is mi._build_0_16 and mi.api_for("0.16.1").sampling_kwargs == {}
    new = mi.api_for("0.19.2")
    assert new.build is mi._build_0_17 and new.sampling_kwargs == {"detokenize_stop_sequence": True}
    assert mi.api_for("0.17.0") is new
    for bad in ("0.15.3", "0.20.0"):
        with pytest.raises(RuntimeError, match=f"does not support megatron-core {bad}; supported: >=0.16,<0.17, "
                                               r">=0.17,<0.20"):
            mi.api_for(bad)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_attention_with_fewer_queries_than_keys_is_bottom_right_causal(backend):
    """New tokens against a KV cache: query i sits at position sk - sq + i (float64 reference: the last
    rows of full causal attention). torch's is_causal would align top-left."""
    import torch
    import torch.nn.functional as F

    from megatron_align.models.attention import ATTENTION_KERNELS

    g = torch.Generator().manual_seed(0)
    k, v = (torch.randn(2, 2, 7, 8, generator=g, dtype=torch.float64) for _ in range(2))
    q_full = torch.randn(2, 4, 7, 8, generator=g, dtype=torch.float64)
    want = F.scaled_dot_product_attention(q_full, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                          is_causal=True)[:, :, 4:]
    got = ATTENTION_KERNELS[backend](q_full[:, :, 4:], k, v, None, 0.0, 8 ** -0.5)
    assert (got - want).abs().max() < 1e-12
