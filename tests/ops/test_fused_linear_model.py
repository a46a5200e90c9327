"""model.loss_backend=fused_linear in the real model and schedule: the output layer hands the loss
hidden states + weight (no logits) and the SFT loss and every parameter gradient equal loss_backend=fused,
at TP=1 and at TP=2 with sequence parallelism (gloo)."""

import pytest
import torch

from helpers.dist import run_distributed

pytestmark = pytest.mark.distributed


def model_worker(tp: int, sp: bool):
    from helpers.parity import MBS, SEQ, make_micro_batches
    from megatron_align.config import ModelConfig, ParallelConfig
    from megatron_align.engine.forward_backward import forward_backward
    from megatron_align.engine.wrap import wrap_ddp
    from megatron_align.models.builder import build_model
    from megatron_align.ops.fused_linear import LMHeadInput
    from megatron_align.runtime import setup_runtime

    par = ParallelConfig(tp=tp, pp=1, sp=sp)
    setup_runtime(par, seed=11)
    mcfg = ModelConfig(name="tiny-llama", num_layers=2, loss_backend="fused_linear", loss_chunk_size=5,
                       make_vocab_size_divisible_by=100)  # padded vocab: masked columns
    built = build_model(mcfg, par, seq_length=SEQ)
    model = built.chunks[0]
    out_layer = model.output_layer
    assert out_layer.lm_head_input and out_layer.loss_chunk_size == 5
    chunks = wrap_ddp(built.chunks, use_distributed_optimizer=False)
    mbs = make_micro_batches(built.arch.vocab_size)
    x = mbs[0]
    with torch.no_grad():
        head = model(x.tokens, x.position_ids, x.doc_ids)
    assert isinstance(head, LMHeadInput) and head.shape[:2] == x.tokens.shape
    assert head.vocab_size == built.arch.vocab_size < built.padded_vocab_size  # padding is masked
    res = {}
    for mode in ("fused", "fused_linear"):
        out_layer.lm_head_input = mode == "fused_linear"
        for c in chunks:
            c.zero_grad_buffer()
        totals = forward_backward(chunks, mbs, seq_length=SEQ, micro_batch_size=MBS, loss_backend=mode)
        grads = {n: p.main_grad.detach().clone() for n, p in chunks[0].named_parameters()}
        res[mode] = (totals["lm_loss"].clone(), grads)
    (loss_a, g_a), (loss_b, g_b) = res["fused"], res["fused_linear"]
    errs = {"loss": (loss_a - loss_b).abs().max().item()}
    for n in g_a:
        scale = g_a[n].abs().max().item() + 1e-12
        errs[n] = (g_a[n] - g_b[n]).abs().max().item() / scale
    errs["n_params"] = float(len(g_a))
    return errs


@pytest.mark.parametrize("tp,sp", [(1, False), (2, True)])
def test_sft_loss_and_grads_fused_linear_equal_fused(tp, sp):
    for rank, errs in enumerate(run_distributed(model_worker, tp, tp, sp, timeout=300)):
        n = errs.pop("n_params")
        assert n >= 5
        bad = {k: v for k, v in errs.items() if not v <= 2e-5}
        assert not bad, f"rank {rank}: {bad}"
