"""Every config error path names the key; YAML + dotted overrides; the public key names exist."""

import pytest

from megatron_align.config import ConfigError, ModelConfig, ParallelConfig, describe, load_config
from megatron_align.config.base import apply_overrides, from_dict
from megatron_align.config.sft import SFTConfig


def test_public_keys_exist():
    keys = {row[0] for row in describe(SFTConfig)}
    for key in ("parallel.tp", "parallel.pp", "parallel.vpp", "parallel.cp", "parallel.sp", "model.name",
                "model.hf_config", "data.path", "data.packing", "data.seq_length", "train.micro_batch_size",
                "train.global_batch_size", "train.max_steps", "train.epochs", "output_dir"):
        assert key in keys, key
    assert all(row[3] for row in describe(SFTConfig)), "every field has a help text"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("parallel:\n  tp: 2\nmodel:\n  name: tiny-qwen2\n")
    cfg = load_config(SFTConfig, str(path), ["parallel.pp=2", "parallel.sp=true", "train.max_steps=7",
                                             "optim.lr=2e-5", "output_dir=/tmp/x"])
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.sp) == (2, 2, True)
    assert cfg.model.name == "tiny-qwen2" and cfg.train.max_steps == 7 and cfg.optim.lr == 2e-5
    assert cfg.output_dir == "/tmp/x"


@pytest.mark.parametrize("overrides,needle", [
    (["parallel.tpp=2"], "parallel.tpp"),
    (["nosuch.key=1"], "nosuch"),
    (["parallel.tp=two"], "parallel.tp"),
    (["parallel.tp=0"], "parallel.tp"),
    (["parallel.sp=maybe"], "parallel.sp"),
    (["parallel.sp=true"], "parallel.sp"),  # sp without tp
    (["parallel.vpp=2"], "parallel.vpp"),  # vpp without pp
    (["parallel.cp=0"], "parallel.cp"),
    (["model.recompute=sometimes"], "model.recompute"),
    (["model.recompute_k=0"], "model.recompute_k"),
    (["model.loss_backend=magic"], "model.loss_backend"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.adam_beta2=1.5"], "optim.adam_beta2"),
    (["optim.decay_style=step"], "optim.decay_style"),
    (["train.micro_batch_size=0"], "train.micro_batch_size"),
    (["train.global_batch_size=[1,2]"], "train.global_batch_size"),
    (["data.seq_length=0"], "data.seq_length"),
    (["data.overlong=ignore"], "data.overlong"),
    (["output.keep_last=-1"], "output.keep_last"),
    (["parallel=3"], "parallel"),
    (["noequals"], "noequals"),
])
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, overrides)
    assert needle in str(e.value)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTConfig, str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("parallel: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(SFTConfig, str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("parallel:\n  tq: 2\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml.*parallel\.tq"):
        load_config(SFTConfig, str(unknown))


def test_world_size_divisibility_names_setting():
    with pytest.raises(ConfigError, match=r"world size 6 .*tp\*pp\*cp"):
        ParallelConfig(tp=4).data_parallel_size(6)
    assert ParallelConfig(tp=2, pp=2).data_parallel_size(8) == 2


def test_apply_overrides_is_pure():
    base = {"a": {"b": 1}}
    out = apply_overrides(base, ["a.b=2", "a.c=x"])
    assert base == {"a": {"b": 1}} and out == {"a": {"b": 2, "c": "x"}}


def test_section_from_dict():
    m = from_dict(ModelConfig, {"name": "tiny-llama", "recompute": "kblock", "recompute_k": 2}, "model")
    assert m.recompute == "kblock" and m.recompute_k == 2
