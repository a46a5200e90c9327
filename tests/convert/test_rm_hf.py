"""The reward model against Hugging Face: the RM loss equals a plain PyTorch computation on transformers'
LlamaForSequenceClassification, and a trained RM converts back to *ForSequenceClassification whose scores equal
`megatron-align score` within 1e-5 (unpadded sequences), at TP=2 and PP=2."""

import json

import pytest
import torch
import torch.nn.functional as F

from helpers.dist import run_distributed
from helpers.stage_runs import cli, stage, stage_first_loss

pytestmark = [pytest.mark.distributed]


def _pairs(path, n=12, seed=0):
    """Pre-tokenized pairs (ids 1..1535: inside the tiny tokenizer, no pad id) with scores on every other pair."""
    g = torch.Generator().manual_seed(seed)
    recs = []
    for i in range(n):
        p, c, r = (torch.randint(1, 1536, (int(k),), generator=g).tolist()
                   for k in torch.randint(3, 9, (3,), generator=g))
        rec = {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "dataset": "rated" if i % 2 else "plain",
               "category": "a" if i % 3 else "b"}
        if i % 2:
            rec.update(chosen_score=float(torch.randint(5, 10, (1,), generator=g)),
                       rejected_score=float(torch.randint(1, 5, (1,), generator=g)))
        recs.append(rec)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    return recs


def _hf_scores(model, seqs):
    with torch.no_grad():
        return torch.stack([model(torch.tensor([s])).logits[0, 0].float() for s in seqs])


def test_rm_loss_equals_plain_pytorch_on_hf_model(zoo, tmp_path):
    data = str(tmp_path / "pairs.jsonl")
    recs = _pairs(data)
    alpha = 0.3
    common = [f"train.load={zoo.mcore['llama_rm']}", "train.finetune=true", f"data.path={data}", "data.eval_path=null",
              "model.name=null", "model.num_layers=null", f"train.global_batch_size={len(recs)}",
              "data.shuffle=false", f"rm.mse_alpha.rated={alpha}", "rm.score_normalization=range",
              "rm.score_range=[1,10]", "data.seq_length=64"]
    out = run_distributed(stage_first_loss, 2, common + [f"output_dir={tmp_path / 'run'}", "parallel.tp=2"])[0]
    hf = zoo.models["llama_rm"]
    rc = _hf_scores(hf, [r["prompt_ids"] + r["chosen_ids"] for r in recs])
    rr = _hf_scores(hf, [r["prompt_ids"] + r["rejected_ids"] for r in recs])
    loss = -F.logsigmoid(rc - rr)
    for i, r in enumerate(recs):
        if "chosen_score" in r:
            norm = lambda s: (s - 1) / 9  # noqa: E731
            loss[i] += alpha * ((rc[i] - norm(r["chosen_score"])) ** 2 + (rr[i] - norm(r["rejected_score"])) ** 2)
    assert abs(out["loss"] - loss.mean().item()) <= 1e-5 * max(1.0, loss.mean().item()), (out, loss.mean())
    assert abs(out["accuracy"] - (rc > rr).double().mean().item()) < 1e-9


@pytest.mark.parametrize("layout", [("parallel.tp=2",), ("parallel.pp=2",)])
def test_trained_rm_converts_to_hf_and_scores_match(zoo, tmp_path, layout):
    from transformers import AutoModelForSequenceClassification

    data = str(tmp_path / "pairs.jsonl")
    recs = _pairs(data, seed=1)
    run = str(tmp_path / "run")
    run_distributed(stage, 1, "rm", [f"train.load={zoo.mcore['llama_rm']}", "train.finetune=true", f"data.path={data}",
                                     "data.eval_path=null", "model.name=null", "model.num_layers=null",
                                     "train.global_batch_size=4", "train.max_steps=2", f"output_dir={run}",
                                     "data.seq_length=64"])
    hf_dir = str(tmp_path / "hf")
    assert cli(["convert", run, hf_dir, "--to", "hf"]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    lines = str(tmp_path / "score_in.jsonl")
    seqs = [r["prompt_ids"] + r["chosen_ids"] for r in recs] + [r["prompt_ids"] + r["rejected_ids"] for r in recs]
    with open(lines, "w") as f:
        f.writelines(json.dumps({"input_ids": s, "k": i}) + "\n" for i, s in enumerate(seqs))
    out = str(tmp_path / "scores.jsonl")
    run_distributed(cli, 2, ["score", "--load", run, "--data", lines, "--out", out, "--seq-length", "48",
                             "--micro-batch-size", "2", *layout])
    got = [json.loads(ln) for ln in open(out)]
    assert [g["k"] for g in got] == list(range(len(seqs)))
    ours = torch.tensor([g["reward"] for g in got])
    ref = _hf_scores(model, seqs)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), (ours - ref).abs().max()
    assert ours.std() > 1e-3  # not a constant


def test_score_and_rm_user_errors(zoo, tmp_path, capsys):
    from megatron_align.cli import main

    lines = tmp_path / "x.jsonl"
    lines.write_text('{"prompt": "hi"}\n')
    assert main(["score", "--load", zoo.mcore["llama"], "--data", str(lines), "--out", str(tmp_path / "o")]) == 2
    assert "language-model head" in capsys.readouterr().err
    assert main(["score", "--load", zoo.mcore["llama_rm"], "--data", str(lines), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "x.jsonl:1: missing 'response'" in err and "Traceback" not in err
