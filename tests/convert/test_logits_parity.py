"""Converted checkpoints run in our megatron model at TP=1, TP=2, PP=2 and TP=2 x PP=2 and give the
logits of `transformers` (Llama with GQA + Llama-3.1 rope scaling, Qwen2 tied/untied with QKV biases) and
of a plain Baichuan2 reference (W_pack, NormHead); a checkpoint re-saved at TP=2 x PP=2 loads at TP=1 with
the same logits and converts back to the original HF tensors bitwise; `logprobs` at TP=2 x PP=2 equals
HF's token log-probs on packed rows.

Tolerance: fp32 on CPU. At TP=1 the converted model reproduces HF's logits exactly (measured max |diff|
0.0); under TP/PP the row-parallel matmuls and the TP-split vocab change the reduction order, measured
max |diff| <= 1.5e-6 on logits of magnitude ~2-4. We assert 1e-5 absolute: a wrong QKV grouping, a
swapped gate/up, a missed bias or NormHead moves logits by O(0.1). Log-probs: 2e-5 absolute per token
(log-softmax over 1600 ids adds one more reduction).
"""

import json
import os

import numpy as np
import pytest
import torch

from convert_workers import logits_at_layouts
from convert_zoo import CAUSAL
from helpers.dist import run_distributed

import hf_tiny_models as hm

pytestmark = [pytest.mark.distributed]

LAYOUTS = {"tp2pp2": (2, 2), "tp2": (2, 1), "pp2": (1, 2), "tp1": (1, 1)}  # tp2pp2 first: it writes the re-save
WORLD = 4  # one spawn visits every layout (spare ranks are data-parallel replicas)
SEQS = [[5, 17, 300, 42, 7, 99, 1200], list(range(100, 130)), [3, 4], [1500, 20, 20, 20, 9, 64, 800, 2, 11],
        list(range(1590, 1560, -3))]
MESSAGES = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi, how can I help?"}]


def _logprobs_inputs(root):
    data, out = os.path.join(root, "lp_in.jsonl"), os.path.join(root, "lp_out.jsonl")
    with open(data, "w") as f:
        for ids in SEQS:
            f.write(json.dumps({"input_ids": ids}) + "\n")
        f.write(json.dumps({"messages": MESSAGES}) + "\n")
    return data, out


@pytest.fixture(scope="module")
def runs(zoo):
    resaved = os.path.join(zoo.root, "resaved_tp2pp2")
    data, out = _logprobs_inputs(zoo.root)
    lp_argv = ["--load", zoo.mcore["llama"], "--data", data, "--out", out, "--seq-length", "40",
               "--micro-batch-size", "2", "parallel.tp=2", "parallel.pp=2", "model.precision=fp32"]
    jobs = {layout: {n: zoo.mcore[n] for n in CAUSAL} for layout in LAYOUTS}
    jobs["tp1"]["llama_resaved"] = resaved
    ranks = run_distributed(logits_at_layouts, WORLD, [(k, tp, pp) for k, (tp, pp) in LAYOUTS.items()], jobs,
                            zoo.tokens, ("tp2pp2", "llama", resaved), lp_argv)
    results = {}
    for layout in LAYOUTS:
        holders = [r[layout] for r in ranks if layout in r]
        assert len(holders) == 1, f"{layout}: exactly one rank (last stage, TP rank 0, DP rank 0) reports logits"
        results[layout] = holders[0]
    return results, resaved, out, [r.get("logprobs_rc") for r in ranks]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", CAUSAL)
def test_logits_match_reference(zoo, runs, layout, name):
    got = torch.from_numpy(runs[0][layout][name])
    ref = zoo.ref_logits[name]
    assert got.shape == ref.shape
    diff = (got - ref).abs().max().item()
    assert diff <= 1e-5, f"{name} at {layout}: max |diff| {diff:.3e}"


def test_resaved_tp2pp2_checkpoint_loads_at_tp1(runs):
    res = runs[0]["tp1"]
    assert np.array_equal(res["llama_resaved"], res["llama"])


def test_resaved_tp2pp2_checkpoint_converts_back_bitwise(zoo, runs, tmp_path):
    from safetensors.torch import load_file

    from megatron_align.cli import main

    assert main(["convert", runs[1], str(tmp_path / "hf")]) == 0
    back = {}
    for f in os.listdir(tmp_path / "hf"):
        if f.endswith(".safetensors"):
            back.update(load_file(str(tmp_path / "hf" / f)))
    orig = {k: v for k, v in zoo.models["llama"].state_dict().items()}
    assert set(back) == set(orig)
    for k, v in orig.items():
        assert torch.equal(back[k], v), k


def test_logprobs_command_tp2pp2_matches_hf(zoo, runs):
    from megatron_align.data.templates import build_template
    from megatron_align.data.tokenizer import ChatTokenizer

    assert runs[3] == [0] * WORLD
    with open(runs[2]) as f:
        lines = [json.loads(x) for x in f]
    tok = ChatTokenizer(zoo.hf_dirs["llama"])
    chat_ids = build_template("llama3", tok).encode([(m["role"], m["content"]) for m in MESSAGES]).ids
    assert len(lines) == len(SEQS) + 1
    for ids, line in zip(SEQS + [chat_ids], lines):
        want = hm.hf_token_logprobs(zoo.models["llama"], ids)
        got = torch.tensor(line["token_logprobs"], dtype=torch.float64)
        assert got.shape == (len(ids) - 1,)
        assert (got - want).abs().max().item() <= 2e-5
        assert abs(line["sum"] - want.sum().item()) <= 2e-4
