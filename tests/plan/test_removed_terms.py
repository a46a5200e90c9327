"""The two code changes that remove activation terms instead of modelling them, checked for exact math:

- the padded-vocabulary mask of the output layer runs in place (no second logits buffer at the end of the
  forward, none in backward): values and gradients equal ``masked_fill``'s;
- the SDPA document mask is built once per micro-batch and shared by every layer (one saved [b,1,s,s]
  buffer instead of one per layer): attention output and gradients equal a float64 per-document reference.
"""

import torch
import torch.nn.functional as F

from megatron_align.models.attention import _sdpa, shared_additive_mask
from megatron_align.models.gpt import _MaskVocabPadding


def test_vocab_padding_mask_in_place_equals_masked_fill():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, 10, generator=g, dtype=torch.float64)
    pad = torch.arange(10) >= 7
    want = x.masked_fill(pad, float("-inf"))
    (want.masked_fill(pad, 0) * upstream).sum().backward()  # masked_fill's own backward zeroes the pad
    g_want = x.grad.clone()
    x.grad = None
    y = x * 1.0  # a non-leaf, like the linear's output
    storage = y.untyped_storage().data_ptr()
    out = _MaskVocabPadding.apply(y, 7)
    assert out.untyped_storage().data_ptr() == storage  # in place: no second buffer
    assert torch.equal(out, want)
    out.backward(upstream)
    assert torch.equal(x.grad, g_want) and x.grad[:, 7:].abs().sum() == 0
    # an expanded (non-dense) incoming gradient is zeroed on a copy, never written through
    x.grad = None
    _MaskVocabPadding.apply(x * 1.0, 7).sum().backward()
    assert torch.equal(x.grad, (~pad).double().expand(6, 10))


def _reference(q, k, v, doc, scale):
    """float64, one document at a time, causal inside it."""
    out = torch.zeros_like(q)
    for d in doc.unique():
        idx = (doc == d).nonzero().flatten()
        qi, ki, vi = q[:, :, idx], k[:, :, idx], v[:, :, idx]
        ki = ki.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        vi = vi.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        s = (qi @ ki.transpose(-1, -2)) * scale
        s = s.masked_fill(torch.ones(len(idx), len(idx), dtype=torch.bool).triu(1), float("-inf"))
        out[:, :, idx] = s.softmax(-1) @ vi
    return out


def test_shared_sdpa_mask_equals_per_document_attention_and_is_one_buffer():
    g = torch.Generator().manual_seed(1)
    b, s, heads, groups, d = 1, 24, 4, 2, 8
    doc = torch.tensor([0] * 7 + [1] * 11 + [2] * 6).expand(b, s)
    q = torch.randn(b, heads, s, d, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, groups, s, d, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, groups, s, d, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(b, heads, s, d, generator=g, dtype=torch.float64)
    scale = d ** -0.5
    got = _sdpa(q, k, v, doc, 0.0, scale)
    grads = torch.autograd.grad((got * up).sum(), (q, k, v))
    want = _reference(q, k, v, doc[0], scale)
    want_grads = torch.autograd.grad((want * up).sum(), (q, k, v))
    assert (got - want).abs().max() < 1e-12
    for a, w in zip(grads, want_grads):
        assert (a - w).abs().max() < 1e-12
    # every layer of the micro-batch gets the same storage; another micro-batch (or dtype) its own
    m1, m2 = shared_additive_mask(doc, torch.float32), shared_additive_mask(doc, torch.float32)
    assert m1 is m2 and m1.shape == (b, 1, s, s)
    assert shared_additive_mask(doc.clone(), torch.float32) is not m1
    assert shared_additive_mask(doc, torch.bfloat16).dtype == torch.bfloat16
    with torch.no_grad():  # the no-grad forward of a recompute block caches nothing
        assert shared_additive_mask(doc, torch.float16) is not shared_additive_mask(doc, torch.float16)
    allowed = m1[0, 0] == 0
    assert allowed[8, 7] and not allowed[7, 6] and not allowed[3, 4]  # doc 1 starts at 7; causal within doc 0
