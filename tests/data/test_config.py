import dataclasses

import pytest

from megatron_align.data.config import DataConfig


def test_every_field_documented_and_defaults_valid():
    for f in dataclasses.fields(DataConfig):
        assert f.metadata.get("help"), f.name
    DataConfig().validate()
    assert DataConfig().packing is True
    assert dataclasses.fields(DataConfig)[0].name == "path"
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(DataConfig)}
    assert choices["overlong"] == ("truncate", "drop") and choices["on_bad_line"] == ("error", "skip")
    assert choices["template"] == ("auto", "llama3", "llama3.1", "chatml", "baichuan")


def test_loads_through_the_config_system():
    from megatron_align.config.base import ConfigError, from_dict

    cfg = from_dict(DataConfig, {"seq_length": "64", "packing": "false", "template": "chatml"}, prefix="data")
    assert (cfg.seq_length, cfg.packing, cfg.template) == (64, False, "chatml")
    with pytest.raises(ConfigError, match=r"data\.overlong"):
        from_dict(DataConfig, {"overlong": "cut"}, prefix="data")
    with pytest.raises(ConfigError, match=r"data\.seq_length"):
        from_dict(DataConfig, {"seq_length": 1}, prefix="data")


@pytest.mark.parametrize("key,value", [
    ("path", ""), ("eval_path", ""), ("tokenizer", ""), ("path", []), ("path", [{"path": "a", "weight": 0}]), ("template", "vicuna"), ("system_prompt", 3),
    ("packing", "yes"), ("shuffle", 1), ("seq_length", 1), ("seq_length", True), ("overlong", "cut"),
    ("on_bad_line", "ignore"), ("seed", -1), ("balance_dp_by_tokens", None),
])
def test_validate_names_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^data\.{key}(\[\d+\]\.\w+)?: "):
        DataConfig(**{key: value}).validate()
