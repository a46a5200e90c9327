"""SFT starting from a Hugging Face checkpoint converted with `megatron-align convert` (train.load),
at TP=2: the first step's loss equals the loss transformers computes for the same global batch, and the
trained result converts back to a checkpoint transformers loads."""

import json
import os

import pytest
import torch

from helpers.dist import run_distributed
from helpers.sft_runs import BASE, CONFIG, sft

pytestmark = [pytest.mark.distributed]


def _expected_first_loss(hf_model, overrides):
    """The trainer's first global batch (same sampler, unpacked rows), scored by transformers."""
    from megatron_align.config.base import load_config
    from megatron_align.config.sft import SFTConfig
    from megatron_align.data.batch import make_micro_batches
    from megatron_align.data.builder import build_data
    from megatron_align.data.sampler import GlobalBatchSampler

    cfg = load_config(SFTConfig, CONFIG, BASE + overrides)
    data = build_data(cfg.data, family="llama")
    ids = next(iter(GlobalBatchSampler(len(data.train), cfg.train.global_batch_size, seed=cfg.data.seed,
                                       shuffle=cfg.data.shuffle, max_steps=1)))
    total, count = 0.0, 0.0
    for mb in make_micro_batches(data.train.get_samples(ids), cfg.data.seq_length, 1, packing=False):
        with torch.no_grad():  # one sample per row, padding at the end: causal attention never sees it
            logits = hf_model(mb.tokens).logits.double()
        logp = torch.log_softmax(logits, -1)
        labels = mb.labels.clamp(min=0)
        nll = -logp.gather(-1, labels[..., None])[..., 0]
        total += (nll * mb.loss_mask).sum().item()
        count += mb.loss_mask.sum().item()
    return total / count


def test_sft_from_converted_hf_checkpoint(tmp_path):
    from hf_tiny_models import llama

    from megatron_align.convert.api import convert

    hf_dir, mc_dir, run_dir, back = (str(tmp_path / n) for n in ("hf", "mcore", "run", "hf_back"))
    hf_model = llama(hf_dir)
    convert(hf_dir, mc_dir)
    overrides = ["model.name=null", f"train.load={mc_dir}", "data.packing=false", "train.micro_batch_size=2",
                 "train.max_steps=3", "optim.lr=1e-3", "optim.warmup_steps=0"]
    outs = run_distributed(sft, 2, overrides + [f"output_dir={run_dir}", "parallel.tp=2"])
    assert outs[0]["step"] == 3
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if r.get("kind", "train") == "train"]
    expected = _expected_first_loss(hf_model, overrides)
    # fp32 forward at TP=2 vs transformers' fp32 forward (scored in fp64): reduction order only.
    assert abs(losses[0] - expected) <= 1e-5 * expected, (losses[0], expected)
    assert losses[-1] < losses[0]
    convert(run_dir, back)  # the trained run -> HF, loadable without remote code
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(back)
    assert trained.config.num_hidden_layers == hf_model.config.num_hidden_layers
    diff = max((a - b).abs().max().item() for a, b in zip(trained.state_dict().values(),
                                                          hf_model.state_dict().values()))
    assert diff > 0, "training changed nothing"
