"""HF -> Megatron -> HF: every tensor bitwise equal, config equivalent, tokenizer files preserved;
Llama / Qwen2 outputs load with transformers (no remote code) and give the original logits exactly."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from convert_zoo import CAUSAL, SEQ_CLS

from megatron_align.cli import main
from megatron_align.models.families import arch_from_hf_config


def _tensors(path):
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, f)))
    return out


def _config(path):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def back(zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("back")
    out = {}
    for name in CAUSAL + SEQ_CLS:
        out[name] = str(root / name)
        assert main(["convert", zoo.mcore[name], out[name], "--max-shard-size", "150KB"]) == 0
    return out


@pytest.mark.parametrize("name", CAUSAL + SEQ_CLS)
def test_tensors_bitwise_equal(zoo, back, name):
    a, b = _tensors(zoo.hf_dirs[name]), _tensors(back[name])
    assert set(a) == set(b), set(a) ^ set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", CAUSAL + SEQ_CLS)
def test_config_and_tokenizer_files(zoo, back, name):
    src, dst = _config(zoo.hf_dirs[name]), _config(back[name])
    assert arch_from_hf_config(src) == arch_from_hf_config(dst)
    for key in ("architectures", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
                "num_labels", "id2label"):
        assert src.get(key) == dst.get(key), key
    for f in os.listdir(zoo.hf_dirs[name]):
        if f.startswith(("tokenizer", "special_tokens")) or f.endswith(".py"):
            with open(os.path.join(zoo.hf_dirs[name], f), "rb") as x, open(os.path.join(back[name], f), "rb") as y:
                assert x.read() == y.read(), f


def test_shards_respect_max_size_and_index(back):
    files = [f for f in os.listdir(back["llama"]) if f.endswith(".safetensors")]
    assert len(files) > 1
    with open(os.path.join(back["llama"], "model.safetensors.index.json")) as f:
        index = json.load(f)
    assert set(index["weight_map"].values()) == set(files)
    for f in files:  # a shard holds <= 150 KB of tensors, or one tensor larger than that (as transformers does)
        t = load_file(os.path.join(back["llama"], f))
        nbytes = sum(v.numel() * v.element_size() for v in t.values())
        assert nbytes <= 150_000 or len(t) == 1, (f, nbytes, list(t))


@pytest.mark.parametrize("name", ["llama", "qwen2_tied", "qwen2_untied", "llama_rm", "qwen2_rm"])
def test_transformers_loads_output(zoo, back, name):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if name.endswith("_rm") else AutoModelForCausalLM
    model = cls.from_pretrained(back[name], trust_remote_code=False).eval()
    with torch.no_grad():
        got = model(zoo.tokens).logits
        want = zoo.models[name](zoo.tokens).logits
    assert torch.equal(got, want)


def test_checkpoint_layout(zoo):
    from megatron_align.checkpoint import layout

    root = zoo.mcore["llama"]
    with open(os.path.join(root, "latest")) as f:
        assert f.read().strip() == "release"
    ckpt = layout.resolve(root)
    assert sorted(os.listdir(ckpt)) == ["COMPLETE", "arch.json", "model", "tokenizer"]
    arch = layout.read_arch(ckpt)
    assert arch.family == "llama" and arch.rope_scaling is not None and arch.num_query_groups == 2
    rm = layout.read_arch(layout.resolve(zoo.mcore["qwen2_rm"]))
    assert rm.extra["reward_head"] == {"num_labels": 1}
    with open(os.path.join(ckpt, "model", "metadata.json")) as f:
        assert json.load(f)["sharded_backend"] == "torch_dist"
    assert os.path.isfile(os.path.join(layout.resolve(zoo.mcore["baichuan2"]), "hf_code", "modeling_baichuan.py"))
