"""`megatron-align merge` on tiny checkpoints: equal to mergekit on HF inputs; Megatron and mixed inputs give
the same tensors; outputs load in transformers; Megatron outputs round-trip through the converter."""

import json
import os

import pytest
import torch

from megatron_align.cli import main

mergekit_api = pytest.importorskip("mergekit.merge_methods", reason="mergekit 0.1.5 (test-only dependency)")

TOL = dict(rtol=2e-6, atol=2e-6)


def load_hf(path):
    from megatron_align.convert.hf_io import HFReader

    r = HFReader(path)
    return {n: r.get(n) for n in r.names()}


def run_merge(args, capsys):
    rc = main(["merge"] + [str(a) for a in args])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


CASES = {
    "linear": (["--weights", "0.3", "0.7"], dict(parameters={"weight": {"a": 0.3, "b": 0.7}})),
    "task_arithmetic": (["--weights", "0.8", "0.5", "--lambda", "0.9"],
                        dict(parameters={"weight": {"base": 0.0, "a": 0.8, "b": 0.5}, "lambda": 0.9}, base="base")),
    "model_stock": ([], dict(parameters={}, base="base")),
    "ties": (["--density", "0.4"], dict(parameters={"weight": {"base": 0.0, "a": 1.0, "b": 1.0}, "density": 0.4},
                                        base="base")),
}


@pytest.mark.parametrize("method", list(CASES))
def test_hf_inputs_equal_mergekit(mzoo, tmp_path, capsys, method):
    extra, mk = CASES[method]
    base = [] if method == "linear" else ["--base", mzoo["base"]]
    out = tmp_path / "out"
    summary = run_merge(["--method", method, "--models", mzoo["ft0"], mzoo["ft1"], *base, *extra, out], capsys)
    assert summary["format"] == "hf" and summary["tensors"] == 21
    models = {"a": load_hf(mzoo["ft0"]), "b": load_hf(mzoo["ft1"])}
    if "base" in mk:
        models["base"] = load_hf(mzoo["base"])
    theirs = mergekit_api.merge_state_dicts(models, method, **mk)
    mine = load_hf(out)
    assert set(mine) == set(theirs)
    for k in theirs:
        torch.testing.assert_close(mine[k], theirs[k], **TOL, msg=lambda s: f"{k}: {s}")
    # tokenizer and config come along; the output loads in transformers and runs
    assert os.path.isfile(out / "tokenizer.json")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    sd = model.state_dict()
    for k in theirs:
        torch.testing.assert_close(sd[k], mine[k], rtol=0, atol=0)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 1500, (1, 12))).logits).all()


def test_megatron_and_mixed_inputs_match_hf(mzoo, tmp_path, capsys):
    """Model Stock of Megatron checkpoints, merged in their dist-checkpoint form, and of mixed inputs:
    the same tensors as from the HF inputs; a Megatron output converts back to exactly those."""
    ref_dir = tmp_path / "ref"
    run_merge(["--method", "model_stock", "--models", mzoo["ft0"], mzoo["ft1"], "--base", mzoo["base"], ref_dir],
              capsys)
    ref = load_hf(ref_dir)

    mc = tmp_path / "mc"
    s = run_merge(["--method", "model_stock", "--models", mzoo["ft0_mcore"], mzoo["ft1_mcore"],
                   "--base", mzoo["base_mcore"], mc], capsys)
    assert s["format"] == "mcore"
    assert os.path.isfile(mc / "latest") and os.path.isfile(mc / "release" / "arch.json")
    from megatron_align.convert.api import convert

    back = tmp_path / "back"
    convert(str(mc), str(back))
    got = load_hf(back)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=lambda m: f"{k}: {m}")

    mixed = tmp_path / "mixed"
    s = run_merge(["--method", "model_stock", "--models", mzoo["ft0_mcore"], mzoo["ft1"], "--base", mzoo["base"],
                   "--to", "hf", mixed], capsys)
    assert s["format"] == "hf"
    got = load_hf(mixed)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=lambda m: f"{k}: {m}")


def test_megatron_output_from_hf_inputs_loads_like_converted(mzoo, tmp_path, capsys):
    """--to mcore from HF inputs writes the converter's layout (same keys, shapes, vocab padding)."""
    from megatron_align.convert.dcp_io import DistCheckpointReader

    out = tmp_path / "m"
    run_merge(["--method", "linear", "--models", mzoo["ft0"], mzoo["ft1"], "--to", "mcore", "--dtype", "bf16", out],
              capsys)
    merged = DistCheckpointReader(str(out / "release" / "model"))
    conv = DistCheckpointReader(os.path.join(mzoo["ft0_mcore"], "release", "model"))
    assert sorted(merged.keys()) == sorted(conv.keys())
    for k in conv.keys():
        assert merged.shape(k) == conv.shape(k) and merged.dtype(k) == torch.bfloat16
    a, b = conv.read("embedding.word_embeddings.weight"), \
        DistCheckpointReader(os.path.join(mzoo["ft1_mcore"], "release", "model")).read("embedding.word_embeddings.weight")
    torch.testing.assert_close(merged.read("embedding.word_embeddings.weight").float(),
                               ((a + b) / 2).to(torch.bfloat16).float(), rtol=0, atol=0)


def test_reward_models_merge_and_load(mzoo, tmp_path, capsys):
    out = tmp_path / "rm"
    run_merge(["--method", "linear", "--models", mzoo["rm0"], mzoo["rm1"], out], capsys)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)
    want = (load_hf(mzoo["rm0"])["score.weight"] + load_hf(mzoo["rm1"])["score.weight"]) / 2
    torch.testing.assert_close(model.score.weight.detach(), want, rtol=0, atol=1e-7)


def test_force_replaces_output(mzoo, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    run_merge(["--method", "linear", "--models", mzoo["ft0"], mzoo["ft1"], "--force", out], capsys)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-merge" in p or ".old-" in p]


def test_dare_is_seeded_per_tensor(mzoo, tmp_path, capsys):
    outs = []
    for seed, name in ((3, "a"), (3, "b"), (4, "c")):
        run_merge(["--method", "dare_linear", "--models", mzoo["ft0"], mzoo["ft1"], "--base", mzoo["base"],
                   "--density", "0.5", "--seed", seed, tmp_path / name], capsys)
        outs.append(load_hf(tmp_path / name))
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(outs[0][k], outs[1][k]) and not torch.equal(outs[0][k], outs[2][k])


def test_megatron_input_saved_in_other_chunks(mzoo, tmp_path, capsys):
    """A dist-checkpoint stored in TP/PP-like pieces (each key split along the layer axis and its last axis, as
    a TP=2 x PP=2 save stores it) merges to exactly the tensors of the unsplit one."""
    import shutil

    from megatron_align.convert.dcp_io import Chunk, DistCheckpointReader, write_dist_checkpoint

    split = tmp_path / "split"
    shutil.copytree(mzoo["ft1_mcore"], split)
    model_dir = split / "release" / "model"
    shutil.rmtree(model_dir)
    reader = DistCheckpointReader(os.path.join(mzoo["ft1_mcore"], "release", "model"))
    chunks = []
    for k in reader.keys():
        shape = reader.shape(k)
        axes = [0, len(shape) - 1] if k.startswith("decoder.layers.") and len(shape) > 1 else [len(shape) - 1]
        blocks = [((0,) * len(shape), shape)]
        for ax in axes:  # halve every block along each axis
            nxt = []
            for off, size in blocks:
                h = size[ax] // 2
                for o, s in ((off[ax], h), (off[ax] + h, size[ax] - h)):
                    nxt.append((off[:ax] + (o,) + off[ax + 1:], size[:ax] + (s,) + size[ax + 1:]))
            blocks = nxt
        for off, size in blocks:
            chunks.append(Chunk(k, shape, off, size, reader.dtype(k), (lambda k=k, o=off, s=size: reader.read(k, o, s))))
    assert len(chunks) > 2 * len(reader.keys())
    write_dist_checkpoint(str(model_dir), chunks)

    outs = {}
    for name, second in (("whole", mzoo["ft1_mcore"]), ("pieces", split)):
        outs[name] = tmp_path / name
        run_merge(["--method", "model_stock", "--models", mzoo["ft0_mcore"], second, "--base", mzoo["base_mcore"],
                   "--to", "hf", outs[name]], capsys)
    a, b = load_hf(outs["whole"]), load_hf(outs["pieces"])
    for k in a:
        assert torch.equal(a[k], b[k]), k
