"""Packed-row core attention: SDPA repeats K/V under a mask (item 7); FlexAttention builds its block
mask once per micro-batch and reuses it in every layer and in recompute (item 5). Issue 16.

References are float64 softmax attention over the block-diagonal causal mask; fresh random inputs.
"""

import pytest
import torch
import torch.nn.functional as F

from megatron_align.models import attention as attn

B, S, NP, NG, HN = 2, 40, 4, 2, 8


def _doc_ids(gen):
    rows = []
    for _ in range(B):
        cuts = sorted(torch.randint(1, S, (2,), generator=gen).tolist())
        lengths = [cuts[0], cuts[1] - cuts[0], S - cuts[1]]
        rows.append(torch.cat([torch.full((n,), i) for i, n in enumerate(lengths) if n > 0]))
    return torch.stack(rows)


def _qkv(gen, requires_grad=False):
    q = torch.randn(B, NP, S, HN, generator=gen)
    k = torch.randn(B, NG, S, HN, generator=gen)
    v = torch.randn(B, NG, S, HN, generator=gen)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _reference(q, k, v, doc_ids, scale):
    q, k, v = (t.double() for t in (q, k, v))
    k, v = k.repeat_interleave(NP // NG, 1), v.repeat_interleave(NP // NG, 1)
    scores = q @ k.transpose(-1, -2) * scale
    scores = scores.masked_fill(~attn.document_causal_mask(doc_ids), float("-inf"))
    return torch.softmax(scores, -1) @ v


def test_sdpa_with_mask_repeats_kv_instead_of_enable_gqa(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    q, k, v = _qkv(gen)
    doc_ids = _doc_ids(gen)
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q_, k_, v_, **kw):
        calls.append((q_.shape[1], k_.shape[1], kw.get("enable_gqa", False), kw.get("attn_mask") is not None))
        return real(q_, k_, v_, **kw)

    monkeypatch.setattr(attn.F, "scaled_dot_product_attention", spy)
    out = attn._sdpa(q, k, v, doc_ids, 0.0, HN ** -0.5)
    assert calls == [(NP, NP, False, True)]
    torch.testing.assert_close(out.double(), _reference(q, k, v, doc_ids, HN ** -0.5), rtol=1e-5, atol=1e-5)
    attn._sdpa(q, k, v, None, 0.0, HN ** -0.5)  # no mask: the kernel's own GQA (no copies)
    assert calls[-1] == (NP, NG, True, False)


def test_repeat_kv_layout_matches_enable_gqa():
    gen = torch.Generator().manual_seed(2)
    q, k, v = _qkv(gen)
    kr, vr = attn.repeat_kv(k, v, NP)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, kr, vr, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))


def _count_block_masks(monkeypatch):
    import torch.nn.attention.flex_attention as fa

    count = [0]
    real = fa.create_block_mask

    def counting(*a, **kw):
        count[0] += 1
        return real(*a, **kw)

    monkeypatch.setattr(fa, "create_block_mask", counting)
    attn._BLOCK_MASKS.clear()
    return count


def test_flex_builds_block_mask_once_per_micro_batch_with_recompute(monkeypatch):
    """Every layer's forward, then every layer's forward again as full recompute does in backward
    (FlexAttention has no CPU backward; the GPU script runs the real backward)."""
    count = _count_block_masks(monkeypatch)
    layers, micro_batches = 3, 2
    scale = HN ** -0.5
    gen = torch.Generator().manual_seed(3)
    for mb in range(micro_batches):
        doc_ids = _doc_ids(gen)  # a fresh tensor per micro-batch, as ModelInputs.to(device) makes
        q, k, v = _qkv(gen)
        inputs, x, ref = [], q, q.double()
        for _ in range(layers):
            inputs.append(x)
            x = attn._flex(x, k, v, doc_ids, 0.0, scale)
            ref = _reference(ref, k, v, doc_ids, scale)
        torch.testing.assert_close(x.double(), ref, rtol=1e-4, atol=1e-5)
        for i in reversed(range(layers)):  # recompute in backward order
            again = attn._flex(inputs[i], k, v, doc_ids, 0.0, scale)
            torch.testing.assert_close(again, inputs[i + 1] if i + 1 < layers else x, rtol=0, atol=0)
        assert count[0] == mb + 1, f"micro-batch {mb}: {count[0]} block masks built"


def test_flex_mask_rebuilt_when_doc_ids_change_in_place(monkeypatch):
    count = _count_block_masks(monkeypatch)
    gen = torch.Generator().manual_seed(4)
    doc_ids = _doc_ids(gen)
    q, k, v = _qkv(gen)
    attn._flex(q, k, v, doc_ids, 0.0, 1.0)
    doc_ids.zero_()  # same tensor, new contents: the cached mask must not be reused
    out = attn._flex(q, k, v, doc_ids, 0.0, 1.0)
    assert count[0] == 2
    torch.testing.assert_close(out.double(), _reference(q, k, v, doc_ids, 1.0), rtol=1e-4, atol=1e-5)


def test_flex_cache_is_bounded(monkeypatch):
    _count_block_masks(monkeypatch)
    monkeypatch.setattr(attn, "BLOCK_MASK_CACHE_SIZE", 3)
    gen = torch.Generator().manual_seed(5)
    q, k, v = _qkv(gen)
    for _ in range(5):
        attn._flex(q, k, v, _doc_ids(gen), 0.0, 1.0)
    assert len(attn._BLOCK_MASKS) == 3


def test_flex_refuses_dropout():
    gen = torch.Generator().manual_seed(6)
    q, k, v = _qkv(gen)
    with pytest.raises(ValueError, match="dropout"):
        attn._flex(q, k, v, None, 0.1, 1.0)
