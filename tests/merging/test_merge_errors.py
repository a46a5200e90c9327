"""Every refused merge: one line on stderr naming what is wrong, exit code 2, no output written."""

import json
import os
import shutil

import pytest

from megatron_align.cli import main


def refused(args, capsys):
    rc = main(["merge"] + [str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(("megatron-align merge: error: ", "megatron-align evaluate: error: ")), err
    assert "Traceback" not in err
    return err


def test_architecture_mismatch_names_first_tensor(mzoo, tmp_path, capsys):
    err = refused(["--method", "linear", "--models", mzoo["ft0"], mzoo["qwen"], tmp_path / "o"], capsys)
    # qwen2 has q/k/v biases: the first tensor llama lacks
    assert "architecture mismatch" in err and "model.layers.0.self_attn.q_proj.bias" in err and mzoo["qwen"] in err
    assert not (tmp_path / "o").exists()


def test_vocabulary_mismatch_names_embedding(mzoo, tmp_path, capsys):
    err = refused(["--method", "task_arithmetic", "--models", mzoo["ft0"], mzoo["vocab"], "--base", mzoo["base"],
                   tmp_path / "o"], capsys)
    assert "vocabulary mismatch: model.embed_tokens.weight has shape [1600, 64]" in err and "[1664, 64]" in err


def test_vocabulary_mismatch_megatron_input(mzoo, tmp_path, capsys):
    err = refused(["--method", "linear", "--models", mzoo["ft0_mcore"], mzoo["vocab"], tmp_path / "o"], capsys)
    assert "vocabulary mismatch: model.embed_tokens.weight" in err


def test_arch_setting_mismatch(mzoo, tmp_path, capsys):
    other = tmp_path / "theta"
    shutil.copytree(mzoo["ft1"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["rope_theta"] = 10000.0
    cfg.pop("rope_parameters", None)
    (other / "config.json").write_text(json.dumps(cfg))
    err = refused(["--method", "linear", "--models", mzoo["ft0"], other, tmp_path / "o"], capsys)
    assert "architecture mismatch: rope_theta" in err


def test_model_stock_needs_two_models_and_a_base(mzoo, tmp_path, capsys):
    err = refused(["--method", "model_stock", "--models", mzoo["ft0"], "--base", mzoo["base"], tmp_path / "o"],
                  capsys)
    assert "at least 2 model(s)" in err
    err = refused(["--method", "model_stock", "--models", mzoo["ft0"], mzoo["ft1"], tmp_path / "o"], capsys)
    assert "needs --base" in err


@pytest.mark.parametrize("weights", [["1.0"], ["1", "2", "3"]])
def test_weights_count(mzoo, tmp_path, capsys, weights):
    err = refused(["--method", "linear", "--models", mzoo["ft0"], mzoo["ft1"], "--weights", *weights,
                   tmp_path / "o"], capsys)
    assert f"--weights has {len(weights)} value(s) but --models has 2" in err


def test_bad_weight_and_option_misuse(mzoo, tmp_path, capsys):
    err = refused(["--method", "linear", "--models", mzoo["ft0"], mzoo["ft1"], "--weights", "1", "x",
                   tmp_path / "o"], capsys)
    assert "--weights" in err
    err = refused(["--method", "linear", "--models", mzoo["ft0"], mzoo["ft1"], "--lambda", "0.5", tmp_path / "o"],
                  capsys)
    assert "takes no --lambda" in err
    err = refused(["--method", "linear", "--models", mzoo["ft0"], mzoo["ft1"], "--base", mzoo["base"],
                   tmp_path / "o"], capsys)
    assert "takes no --base" in err
    err = refused(["--method", "model_stock", "--models", mzoo["ft0"], mzoo["ft1"], "--base", mzoo["base"],
                   "--normalize", tmp_path / "o"], capsys)
    assert "takes no --normalize" in err
    err = refused(["--method", "ties", "--models", mzoo["ft0"], "--base", mzoo["base"], "--density", "0",
                   tmp_path / "o"], capsys)
    assert "--density must be in (0, 1]" in err
    err = refused(["--method", "linear", "--models", mzoo["ft0"]], capsys)
    assert "at least 2" in err or "output directory is missing" in err


def test_existing_output_needs_force(mzoo, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = refused(["--method", "linear", "--models", mzoo["ft0"], mzoo["ft1"], out], capsys)
    assert "already exists; pass --force" in err and str(out) in err
    assert (out / "keep.txt").read_text() == "mine"


def test_output_overlapping_an_input(mzoo, tmp_path, capsys):
    err = refused(["--method", "linear", "--models", mzoo["ft0"], mzoo["ft1"], "--force", mzoo["ft1"]], capsys)
    assert "overlaps the input" in err


def test_missing_tensor_hf(mzoo, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(mzoo["ft1"], broken)
    files = [f for f in os.listdir(broken) if f.endswith(".safetensors")]
    assert len(files) == 1
    sd = load_file(str(broken / files[0]))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(broken / files[0]), metadata={"format": "pt"})
    err = refused(["--method", "linear", "--models", mzoo["ft0"], broken, tmp_path / "o"], capsys)
    assert str(broken) in err and "missing tensors: model.layers.1.mlp.up_proj.weight" in err


def test_missing_tensor_megatron(mzoo, tmp_path, capsys):
    from megatron_align.convert.dcp_io import Chunk, DistCheckpointReader, write_dist_checkpoint

    src = os.path.join(mzoo["ft1_mcore"], "release")
    broken = tmp_path / "broken"
    shutil.copytree(mzoo["ft1_mcore"], broken)
    model_dir = broken / "release" / "model"
    shutil.rmtree(model_dir)
    reader = DistCheckpointReader(os.path.join(src, "model"))
    chunks = [Chunk(k, reader.shape(k), (0,) * len(reader.shape(k)), reader.shape(k), reader.dtype(k),
                    (lambda k=k: reader.read(k))) for k in reader.keys() if not k.endswith("linear_fc2.weight")]
    write_dist_checkpoint(str(model_dir), chunks)
    err = refused(["--method", "linear", "--models", mzoo["ft0_mcore"], broken, tmp_path / "o"], capsys)
    assert "missing tensors: decoder.layers.mlp.linear_fc2.weight" in err


def test_not_a_checkpoint(tmp_path, capsys, mzoo):
    (tmp_path / "empty").mkdir()
    err = refused(["--method", "linear", "--models", mzoo["ft0"], tmp_path / "empty", tmp_path / "o"], capsys)
    assert "neither a Hugging Face model directory" in err


def test_evaluate_refuses_missing_checkpoint_and_eval_set(tmp_path, capsys, mzoo):
    cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "examples", "configs", "tiny_cpu.yaml")
    rc = main(["evaluate", "--config", cfg, "--load", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(("megatron-align merge: error: ", "megatron-align evaluate: error: ")) and "nope does not exist" in err and len(err.splitlines()) == 1
    rc = main(["evaluate", "--config", cfg, "--load", mzoo["ft0_mcore"], "data.eval_path=null"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "data.eval_path is null" in err.splitlines()[-1]
