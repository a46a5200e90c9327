"""`megatron-align data preview`: the template chosen, rendered samples with trained spans marked, the summary."""

import ast
import json
import shutil

from megatron_align.cli import main
from megatron_align.data.config import DEFAULT_TOKENIZER

from chat_fixtures import conv, write_jsonl
from official_templates import QWEN2


def test_preview_marks_exactly_the_trained_tokens(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [conv("Hi", "Hello!\n", "Bye", "Goodbye!"), "{bad",
                                                 conv("What is 2 + 2?", "4")])
    overrides = [f"data.path={data}", "data.on_bad_line=skip", "model.name=tiny-llama"]
    assert main(["data", "preview", "--n", "5"] + overrides) == 0
    out = capsys.readouterr().out
    assert "template: built-in 'llama3'; system prompt: None" in out
    assert ("<|start_header_id|>assistant<|end_header_id|>\n\n[[Hello!<|eot_id|>]]<|start_header_id|>user"
            "<|end_header_id|>\n\nBye<|eot_id|>") in out  # content trimmed as Llama-3's template does
    assert "[[4<|eot_id|>]]" in out and out.count("[[") - out.count("[[...]]") == 3
    assert "summary: 2 units," in out and "skipped bad lines 1" in out
    # --ids: one line per token, trained flag T exactly on the assistant tokens
    assert main(["data", "preview", "--ids", "--n", "1"] + overrides + ["data.template=chatml"]) == 0
    lines = [ln.split(None, 3) for ln in capsys.readouterr().out.splitlines() if ln[:6].strip().isdigit()]
    trained = "".join(ast.literal_eval(t[3]) for t in lines if t[2] == "T")
    assert trained == "Hello!\n<|im_end|>Goodbye!<|im_end|>"
    assert "".join(ast.literal_eval(t[3]) for t in lines).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>")
    assert [t[0] for t in lines] == [str(k) for k in range(len(lines))]


def test_preview_uses_the_checkpoint_template_and_reports_errors(tmp_path, capsys):
    tokdir = tmp_path / "tok"
    shutil.copytree(DEFAULT_TOKENIZER, tokdir, ignore=shutil.ignore_patterns("*.jsonl", "*.md"))
    cfg = json.loads((tokdir / "tokenizer_config.json").read_text())
    (tokdir / "tokenizer_config.json").write_text(json.dumps(dict(cfg, chat_template=QWEN2)))
    data = write_jsonl(tmp_path / "d.jsonl", [conv("Hi", "Hello!")])
    assert main(["data", "preview", f"data.path={data}", f"data.tokenizer={tokdir}"]) == 0
    out = capsys.readouterr().out
    assert "the checkpoint's chat_template" in out and "tokenizer_config.json" in out
    assert ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n[[Hello!<|im_end|>]]\n") in out
    assert main(["data", "preview", f"data.path={data}", "data.template=vicuna"]) == 2
    assert "data.template" in capsys.readouterr().err
