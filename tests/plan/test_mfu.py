"""MFU (issue 16 item 10): the planner's FLOPs model with per-document causal attention, no embedding
FLOPs, and the exact device's peak.

The linear part is checked against torch's FlopCounterMode on a float64 reference layer stack of the same
shapes (the embedding lookup counts zero there too); attention against the dense per-document QKᵀ/AV count
halved to the causal triangle (n(n+1)/2 of the n² scores).
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megatron_align.engine.mfu import PEAK_BF16_TFLOPS, peak_flops_per_gpu, step_mfu
from megatron_align.models.arch import ArchSpec
from megatron_align.plan.flops import attention_core_flops, step_model_flops

ARCH = ArchSpec(family="llama", num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=4,
                num_query_groups=2, vocab_size=100, max_position_embeddings=64, rope_theta=10000.0, norm_eps=1e-5)
VOCAB = 128


def _reference_forward(doc_lengths, gen):
    """One forward of a Llama-shaped stack, each document on its own (so attention is per document)."""
    a, d = ARCH, ARCH.kv_channels
    h, f, nq, nkv = a.hidden_size, a.ffn_hidden_size, a.num_attention_heads, a.num_query_groups
    w = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    emb, out = w(a.vocab_size, h), w(VOCAB, h)
    layers = [dict(qkv=w((nq + 2 * nkv) * d, h), o=w(h, nq * d), fc1=w(2 * f, h), fc2=w(h, f))
              for _ in range(a.num_layers)]
    counter = FlopCounterMode(display=False)
    with counter:
        for n in doc_lengths:
            x = emb[torch.randint(0, a.vocab_size, (n,), generator=gen)]
            for p in layers:
                qkv = x @ p["qkv"].T
                q = qkv[:, :nq * d].reshape(n, nq, d).transpose(0, 1)
                k = qkv[:, nq * d:(nq + nkv) * d].reshape(n, nkv, d).transpose(0, 1).repeat_interleave(nq // nkv, 0)
                v = qkv[:, (nq + nkv) * d:].reshape(n, nkv, d).transpose(0, 1).repeat_interleave(nq // nkv, 0)
                s = (q @ k.transpose(-1, -2)).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -1e9)
                x = x + (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(n, nq * d) @ p["o"].T
                g, u = (x @ p["fc1"].T).chunk(2, -1)
                x = x + (torch.nn.functional.silu(g) * u) @ p["fc2"].T
            x @ out.T
    return counter.get_total_flops()


def test_step_flops_match_counted_reference():
    gen = torch.Generator().manual_seed(0)
    docs = [int(n) for n in torch.randint(3, 30, (5,), generator=gen)]
    counted = _reference_forward(docs, gen)
    q = ARCH.num_attention_heads * ARCH.kv_channels
    dense_attention = ARCH.num_layers * sum(4 * q * n * n for n in docs)  # QKᵀ + AV over full n×n
    causal_attention = ARCH.num_layers * sum(4 * q * n * (n + 1) / 2 for n in docs)
    expected = 3 * (counted - dense_attention + causal_attention)
    assert step_model_flops(ARCH, VOCAB, docs) == pytest.approx(expected, rel=1e-12)
    assert attention_core_flops(ARCH, docs) == pytest.approx(causal_attention, rel=1e-12)


def test_attention_is_per_document_not_per_row():
    one_row_of_four_docs = [64, 64, 64, 64]
    assert attention_core_flops(ARCH, one_row_of_four_docs) == pytest.approx(
        attention_core_flops(ARCH, [256]) * (4 * 64 * 65) / (256 * 257))


def test_embedding_parameters_are_not_counted():
    wide_vocab_embedding_only = ARCH.replace(vocab_size=50_000)  # output layer size held by padded_vocab
    assert step_model_flops(wide_vocab_embedding_only, VOCAB, [10]) == step_model_flops(ARCH, VOCAB, [10])


def test_peak_by_exact_device_name():
    assert peak_flops_per_gpu("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops_per_gpu("NVIDIA H100 PCIe") == 756.5e12  # a substring "H100" match gave SXM's 989
    assert peak_flops_per_gpu("NVIDIA H200") == 989.4e12
    assert peak_flops_per_gpu("NVIDIA H100") is None and peak_flops_per_gpu(None) is None
    assert peak_flops_per_gpu("NVIDIA H100 PCIe", env="500") == 500e12
    assert all(v > 100 for v in PEAK_BF16_TFLOPS.values())


def test_step_mfu():
    docs = [100, 37, 512]
    flops = step_model_flops(ARCH, VOCAB, [100, 37, 256])  # cut at seq_length 256
    assert step_mfu(ARCH, docs, 0.5, 8, seq_length=256, padded_vocab=VOCAB, peak=1e15) == \
        pytest.approx(flops / 0.5 / 8e15)
    assert step_mfu(ARCH, docs, 0.5, 8, peak=0.0) is None
