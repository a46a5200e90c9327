"""DPO on a converted tiny Hugging Face model: our first-step loss and metrics equal TRL 1.16's losses computed
from transformers' log-probs of the same pairs (policy: one random Llama; reference: another)."""

import json
import os
import sys

import pytest
import torch

from helpers.dist import run_distributed
from helpers.stage_runs import cli, first_step

pytestmark = [pytest.mark.distributed]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "losses"))


@pytest.fixture(scope="module")
def reference(zoo, tmp_path_factory):
    import hf_tiny_models as hm

    root = tmp_path_factory.mktemp("ref")
    model = hm.llama(str(root / "hf"), seed=7)
    assert cli(["convert", str(root / "hf"), str(root / "mcore")]) == 0
    return model, str(root / "mcore")


def _pairs(path, n=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    recs = []
    for _ in range(n):
        p, c, r = (torch.randint(1, 1536, (int(k),), generator=g).tolist()
                   for k in torch.randint(2, 7, (3,), generator=g))
        recs.append({"prompt_ids": p, "chosen_ids": c, "rejected_ids": r})
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    return recs


def _token_logps(model, seq, start):
    """log p(seq[i+1] | seq[:i+1]) for the positions i >= start-1 predicting the response tokens."""
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].double()
    lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
    mask = torch.zeros(len(seq) - 1, dtype=torch.float64)
    mask[start - 1:] = 1
    return lp, mask


@pytest.mark.parametrize("loss_type", ["dpo", "orpo"])
def test_dpo_first_step_equals_trl_on_hf_models(zoo, reference, tmp_path, loss_type):
    from trl_reference import dpo_trl, orpo_trl

    ref_model, ref_ckpt = reference
    data = str(tmp_path / "pairs.jsonl")
    recs = _pairs(data)
    beta = 0.4
    out = run_distributed(first_step, 2, "dpo", [
        f"output_dir={tmp_path / 'run'}", f"train.load={zoo.mcore['llama']}", f"dpo.reference_load={ref_ckpt}",
        f"data.path={data}", "data.eval_path=null", "model.name=null", "model.num_layers=null",
        f"train.global_batch_size={len(recs)}", f"dpo.loss_type={loss_type}", f"dpo.beta={beta}",
        "parallel.tp=2", "data.seq_length=48"])[0]
    pol = zoo.models["llama"]
    L = max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in recs)
    rows, masks, sums, refs, ns, fulls, nfull = [], [], [], [], [], [], []
    for side in ("chosen_ids", "rejected_ids"):
        for r in recs:
            seq, start = r["prompt_ids"] + r[side], len(r["prompt_ids"])
            lp, m = _token_logps(pol, seq, start)
            rlp, _ = _token_logps(ref_model, seq, start)
            row = torch.zeros(L - 1, dtype=torch.float64)
            row[:len(lp)] = lp * m
            cm = torch.zeros(L)
            cm[start:len(seq)] = 1
            rows.append(row), masks.append(cm), sums.append((lp * m).sum()), refs.append((rlp * m).sum())
            ns.append(m.sum()), fulls.append(lp.sum()), nfull.append(len(lp))
    B = len(recs)
    sums, refs, ns = torch.stack(sums), torch.stack(refs), torch.stack(ns)
    if loss_type == "dpo":
        want = dpo_trl(torch.stack(rows).float(), torch.stack(masks), refs[:B].float(), refs[B:].float(), beta=beta,
                       loss_types=["sigmoid"])
        assert out["rewards/chosen"] == pytest.approx(beta * (sums[:B] - refs[:B]).mean().item(), abs=2e-6)
    else:
        avg = sums / ns
        nll = -torch.stack(fulls[:B]).sum() / sum(nfull[:B])  # token mean over prompt + response of chosen
        want = (nll - orpo_trl(avg[:B].float(), avg[B:].float(), beta=beta).mean()).item()
    assert out["loss"] == pytest.approx(want, rel=2e-5, abs=2e-6)
    assert out["logps/chosen"] == pytest.approx(sums[:B].mean().item(), rel=1e-5, abs=1e-5)


def _padded(seqs, starts):
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    att = torch.zeros(len(seqs), L, dtype=torch.long)
    comp = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, starts)):
        ids[i, :len(s)] = torch.tensor(s)
        att[i, :len(s)] = 1
        comp[i, p:len(s)] = 1
    return ids, att, comp


def test_kto_first_step_equals_trl_on_hf_models(zoo, reference, tmp_path):
    from trl_reference import HFLogProbs, kto_trl

    ref_model, ref_ckpt = reference
    g = torch.Generator().manual_seed(5)
    recs = []
    for i in range(8):
        p, c = (torch.randint(1, 1536, (int(k),), generator=g).tolist() for k in torch.randint(2, 7, (2,), generator=g))
        recs.append({"prompt_ids": p, "completion_ids": c, "label": bool(i % 3)})
    data = tmp_path / "kto.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    beta, wd, wu = 0.3, 1.2, 0.8
    out = run_distributed(first_step, 2, "dpo", [
        f"output_dir={tmp_path / 'run'}", f"train.load={zoo.mcore['llama']}", f"dpo.reference_load={ref_ckpt}",
        f"data.path={data}", "data.eval_path=null", "model.name=null", "model.num_layers=null", "data.shuffle=false",
        f"train.global_batch_size={len(recs)}", "dpo.loss_type=kto", f"dpo.beta={beta}",
        f"dpo.kto_desirable_weight={wd}", f"dpo.kto_undesirable_weight={wu}", "parallel.tp=2",
        "data.seq_length=48"])[0]
    seqs = [r["prompt_ids"] + r["completion_ids"] for r in recs]
    starts = [len(r["prompt_ids"]) for r in recs]
    kl_seqs = [r["prompt_ids"] + recs[k - 1]["completion_ids"] for k, r in enumerate(recs)]  # TRL's rotation
    ids, att, comp = _padded(seqs, starts)
    kl_ids, kl_att, kl_comp = _padded(kl_seqs, starts)
    ref = HFLogProbs(ref_model)
    ref_logps = ref(ids, att, ids.masked_fill(comp == 0, -100)).log_probs.sum(-1)
    ref_kl = ref(kl_ids, kl_att, kl_ids.masked_fill(kl_comp == 0, -100)).log_probs.sum(-1)
    batch = {"input_ids": ids, "attention_mask": att, "completion_mask": comp, "KL_input_ids": kl_ids,
             "KL_attention_mask": kl_att, "KL_completion_mask": kl_comp,
             "label": torch.tensor([r["label"] for r in recs]), "ref_logps": ref_logps, "ref_KL_logps": ref_kl}
    want = kto_trl(zoo.models["llama"], batch, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    assert out["loss"] == pytest.approx(want, rel=2e-5, abs=2e-6)
