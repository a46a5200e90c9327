"""Every converter / logprobs error names what is wrong (and nothing is half-written)."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_align.cli import main
from megatron_align.convert.api import convert
from megatron_align.convert.errors import ConvertError


def _copy_hf(zoo, name, tmp_path):
    dst = str(tmp_path / name)
    shutil.copytree(zoo.hf_dirs[name], dst)
    return dst


def _edit_config(path, **changes):
    file = os.path.join(path, "config.json")
    with open(file) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(file, "w") as f:
        json.dump(cfg, f)


def _edit_tensors(path, drop=(), add=None):
    file = os.path.join(path, "model.safetensors")
    sd = load_file(file)
    for k in drop:
        del sd[k]
    sd.update(add or {})
    save_file(sd, file, metadata={"format": "pt"})


def test_unknown_architecture(zoo, tmp_path):
    src = _copy_hf(zoo, "qwen2_tied", tmp_path)
    _edit_config(src, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ConvertError, match="unknown architecture.*GPT2LMHeadModel"):
        convert(src, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "latest")


def test_missing_tensor_is_named(zoo, tmp_path):
    src = _copy_hf(zoo, "qwen2_tied", tmp_path)
    _edit_tensors(src, drop=["model.layers.1.self_attn.k_proj.bias"])
    with pytest.raises(ConvertError, match=r"missing tensors: model\.layers\.1\.self_attn\.k_proj\.bias"):
        convert(src, str(tmp_path / "out"))


def test_extra_tensor_is_named(zoo, tmp_path):
    src = _copy_hf(zoo, "qwen2_tied", tmp_path)
    _edit_tensors(src, add={"model.layers.0.self_attn.o_proj.bias": torch.zeros(64)})
    with pytest.raises(ConvertError, match=r"unexpected tensors: model\.layers\.0\.self_attn\.o_proj\.bias"):
        convert(src, str(tmp_path / "out"))


def test_shape_mismatch(zoo, tmp_path):
    src = _copy_hf(zoo, "qwen2_tied", tmp_path)
    _edit_config(src, intermediate_size=128)
    with pytest.raises(ConvertError, match=r"shape mismatch: model\.layers\.0\.mlp\.gate_proj\.weight has shape "
                                           r"\(96, 64\), expected \(128, 64\)"):
        convert(src, str(tmp_path / "out"))


def test_vocab_mismatch(zoo, tmp_path):
    src = _copy_hf(zoo, "qwen2_tied", tmp_path)
    _edit_config(src, vocab_size=1700)
    with pytest.raises(ConvertError, match=r"vocabulary mismatch: model\.embed_tokens\.weight .*vocab_size=1700"):
        convert(src, str(tmp_path / "out"))


def test_checkpoint_of_another_family(zoo, tmp_path):
    with pytest.raises(ConvertError, match="is a llama model .*not baichuan2"):
        convert(zoo.hf_dirs["llama"], str(tmp_path / "a"), family="baichuan2")
    with pytest.raises(ConvertError, match="is a qwen2 model .*not llama"):
        convert(zoo.mcore["qwen2_tied"], str(tmp_path / "b"), family="llama")
    # weights of one family under another's config: named, with the family they look like
    src = _copy_hf(zoo, "baichuan2", tmp_path)
    _edit_config(src, architectures=["LlamaForCausalLM"], model_type="llama")
    with pytest.raises(ConvertError, match=r"missing tensors: .*q_proj.*unexpected tensors: .*W_pack.*look like a "
                                           r"baichuan2 checkpoint"):
        convert(src, str(tmp_path / "c"))


def test_megatron_checkpoint_not_matching_arch(zoo, tmp_path):
    from megatron_align.checkpoint import layout

    root = str(tmp_path / "ck")
    shutil.copytree(zoo.mcore["qwen2_tied"], root)
    ckpt = layout.resolve(root)
    layout.write_arch(ckpt, layout.read_arch(ckpt).replace(tie_embeddings=False))
    with pytest.raises(ConvertError, match=r"missing tensors: output_layer\.weight"):
        convert(root, str(tmp_path / "hf"))


def test_neither_hf_nor_megatron(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    assert main(["convert", str(tmp_path / "junk"), str(tmp_path / "out")]) == 2
    assert "neither a Hugging Face model directory" in capsys.readouterr().err


def _logprobs(zoo, tmp_path, lines, *overrides):
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return main(["logprobs", "--load", zoo.mcore["llama"], "--data", str(data), "--out", str(tmp_path / "o.jsonl"),
                 "--seq-length", "16", *overrides])


def test_logprobs_tp_not_dividing_heads(zoo, tmp_path, capsys):
    assert _logprobs(zoo, tmp_path, [{"input_ids": [1, 2]}], "parallel.tp=3") == 2
    assert "parallel.tp=3 does not divide num_attention_heads=4" in capsys.readouterr().err


def test_logprobs_errors_name_the_line(zoo, tmp_path, capsys):
    assert _logprobs(zoo, tmp_path, [{"input_ids": [1, 2]}, {"input_ids": list(range(17))}]) == 2
    assert "in.jsonl:2: sequence of 17 tokens is longer than --seq-length=16" in capsys.readouterr().err
    assert _logprobs(zoo, tmp_path, [{"input_ids": [1, 2]}, {"ids": [3]}]) == 2
    assert "in.jsonl:2: unknown record format: keys [ids]; accepted: messages (messages)" in capsys.readouterr().err
    assert _logprobs(zoo, tmp_path, [{"input_ids": [1, 99999]}]) == 2
    assert "token id 99999 outside the vocabulary" in capsys.readouterr().err


def test_logprobs_refuses_reward_checkpoint(zoo, tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text('{"input_ids": [1, 2]}\n')
    assert main(["logprobs", "--load", zoo.mcore["llama_rm"], "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "scalar (reward) head" in capsys.readouterr().err
