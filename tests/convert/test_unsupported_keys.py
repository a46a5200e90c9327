"""config.json keys whose value we do not implement are refused with one line naming the key (issue 19):
Baichuan2's official code ignores rope_theta (always 10000) and we always use SiLU."""

import json
import os

import pytest

from megatron_align.cli import main
from megatron_align.convert.errors import ConvertError
from megatron_align.convert.hf_config import arch_from_hf
from megatron_align.models.families import FAMILIES, arch_from_hf_config

from hf_tiny_models import baichuan2

BASE = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_hidden_layers": 2,
        "vocab_size": 128, "max_position_embeddings": 256, "rms_norm_eps": 1e-6}
ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "baichuan2": "BaichuanForCausalLM"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_refuses_values_it_does_not_implement(family):
    cfg = dict(BASE, architectures=[ARCH[family]], hidden_act="silu")
    arch_from_hf(cfg, "config.json")  # the implemented values load
    assert FAMILIES[family].only_values and ("hidden_act", "silu") in FAMILIES[family].only_values
    for key, accepted in FAMILIES[family].only_values:
        bad = {"silu": "gelu", False: True, 1: 2, 10000.0: 500000.0}[accepted]
        with pytest.raises(ConvertError, match=rf"^m/config.json: {key}={bad!r} is not supported for {family}"):
            arch_from_hf(dict(cfg, **{key: bad}), "m/config.json")


def test_baichuan2_rope_theta_and_hidden_act(tmp_path, capsys):
    cfg = dict(BASE, architectures=["BaichuanForCausalLM"])
    assert arch_from_hf_config(dict(cfg, rope_theta=10000)).rope_theta == 10000.0  # an int 10000 is fine
    src = str(tmp_path / "b2")
    baichuan2(src)
    file = os.path.join(src, "config.json")
    with open(file) as f:
        good = json.load(f)
    for key, value in (("hidden_act", "gelu"), ("rope_theta", 1000000.0)):
        with open(file, "w") as f:
            json.dump(dict(good, **{key: value}), f)
        assert main(["convert", src, str(tmp_path / f"out_{key}")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{key}={value!r} is not supported for baichuan2" in err, err
        assert not os.path.exists(tmp_path / f"out_{key}")
