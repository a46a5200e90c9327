"""Defaults that cannot mislead: no eval set unless one is named, the checkpoint's own tokenizer, and a bad
command-line override blamed on the override (not on the YAML file)."""

import os
import shutil

import pytest
import yaml

from megatron_align.config.base import ConfigError, load_config
from megatron_align.config.sft import SFTConfig
from megatron_align.data.config import DEFAULT_EVAL_PATH, DEFAULT_TOKENIZER, TINY_ASSETS_DIR, DataConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_YAML = os.path.join(ROOT, "examples", "configs", "tiny_cpu.yaml")


def test_regression_eval_path_is_null_unless_named(tmp_path):
    """main: data.eval_path defaulted to the bundled demo eval set, whatever data.path was."""
    assert DataConfig().eval_path is None
    cfg = load_config(SFTConfig, None, [f"data.path={tmp_path / 'mine.jsonl'}"])
    assert cfg.data.eval_path is None and cfg.data.eval_sources() == []
    demo = yaml.safe_load(open(TINY_YAML))["data"]  # the demo config names the bundled eval set itself
    assert os.path.abspath(os.path.join(ROOT, demo["eval_path"])) == DEFAULT_EVAL_PATH


def _checkpoint(root, with_tokenizer):
    ckpt = root / "release"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("")
    (root / "latest").write_text("release")
    if with_tokenizer:
        shutil.copytree(TINY_ASSETS_DIR, ckpt / "tokenizer", ignore=shutil.ignore_patterns("*.jsonl", "*.md"))
    return str(root)


def test_regression_tokenizer_defaults_to_the_one_saved_with_train_load(tmp_path):
    """main: data.tokenizer was the bundled tiny tokenizer even when train.load carried its own."""
    load = _checkpoint(tmp_path / "converted", with_tokenizer=True)
    cfg = load_config(SFTConfig, None, [f"train.load={load}"])
    assert cfg.data.tokenizer == os.path.join(load, "release", "tokenizer")
    explicit = load_config(SFTConfig, None, [f"train.load={load}", f"data.tokenizer={DEFAULT_TOKENIZER}"])
    assert explicit.data.tokenizer == DEFAULT_TOKENIZER
    assert load_config(SFTConfig, None, []).data.tokenizer == DEFAULT_TOKENIZER  # no train.load: the tiny one
    bare = _checkpoint(tmp_path / "bare", with_tokenizer=False)
    with pytest.raises(ConfigError, match=r"data.tokenizer: null .* has no tokenizer/ directory; set data.tokenizer"):
        load_config(SFTConfig, None, [f"train.load={bare}"])
    with pytest.raises(ConfigError, match=r"data.tokenizer is null, so it comes from train.load, but .*nowhere"):
        load_config(SFTConfig, None, [f"train.load={tmp_path / 'nowhere'}"])


@pytest.mark.parametrize("override,key", [("data.seq_length=1", "data.seq_length"),
                                          ("data.path=[{path: a.jsonl, weight: -1}]", "data.path[0].weight"),
                                          ("parallel.tq=2", "parallel.tq"), ("output_dir=", "output_dir")])
def test_regression_a_bad_override_is_blamed_on_the_override(override, key):
    """main: `tiny_cpu.yaml: data.seq_length: ...` for a value the YAML file does not even set."""
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, TINY_YAML, ["train.max_steps=2", override])
    msg = str(err.value)
    assert msg.startswith(f"override {override}: ") and key in msg and "tiny_cpu.yaml" not in msg, msg


def test_a_bad_value_in_the_file_is_still_blamed_on_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  seq_length: 1\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: data.seq_length"):
        load_config(SFTConfig, str(bad), ["train.max_steps=2", "data.packing=false"])
    # an error naming two keys set on the command line names both overrides
    with pytest.raises(ConfigError, match=r"^override data.seq_length=128, override model.seq_length=64: "
                                          r"model.seq_length=64 is shorter than data.seq_length=128"):
        load_config(SFTConfig, TINY_YAML, ["data.seq_length=128", "model.seq_length=64"])
