import pytest

from megatron_align.data.config import DEFAULT_TOKENIZER
from megatron_align.data.errors import DataError
from megatron_align.data.templates import (ALL_SPECIAL_TOKENS, FAMILY_TEMPLATES, TEMPLATES, build_template,
                                           resolve_template_name)
from megatron_align.data.tokenizer import load_tokenizer

MSGS = [("system", "You are a math tutor."), ("user", "What is 2 + 3?"), ("assistant", "2 + 3 = 5."),
        ("user", "Reverse the words: apple river"), ("assistant", "river apple")]

EXPECTED = {
    "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a math tutor.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n2 + 3 = 5.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nReverse the words: apple river<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nriver apple<|eot_id|>",
               "2 + 3 = 5.<|eot_id|>river apple<|eot_id|>"),
    "chatml": ("<|im_start|>system\nYou are a math tutor.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
               "<|im_start|>assistant\n2 + 3 = 5.<|im_end|>\n<|im_start|>user\nReverse the words: apple river"
               "<|im_end|>\n<|im_start|>assistant\nriver apple<|im_end|>\n",
               "2 + 3 = 5.<|im_end|>river apple<|im_end|>"),
    "llama3.1": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
                 "2023\nToday Date: 26 Jul 2024\n\nYou are a math tutor.<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n2 + 3 = 5.<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\nReverse the words: apple river<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\nriver apple<|eot_id|>",
                 "2 + 3 = 5.<|eot_id|>river apple<|eot_id|>"),
    # Baichuan2: no </s> between turns (build_chat_input), one </s> closing the sample (fine-tune.py)
    "baichuan": ("You are a math tutor.<reserved_106>What is 2 + 3?<reserved_107>2 + 3 = 5."
                 "<reserved_106>Reverse the words: apple river<reserved_107>river apple</s>",
                 "2 + 3 = 5.river apple</s>"),
}
ENDS = {"llama3": "<|eot_id|>", "llama3.1": "<|eot_id|>", "chatml": "<|im_end|>", "baichuan": None}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_text_and_exact_loss_mask(tok, name):
    full, masked = EXPECTED[name]
    enc = build_template(name, tok).encode(MSGS)
    assert len(enc.ids) == len(enc.target_mask)
    assert tok.decode(enc.ids) == full
    assert tok.decode([i for i, m in zip(enc.ids, enc.target_mask) if m]) == masked
    # the loss tokens are exactly: per assistant turn, the content's own ids followed by the end token
    end = ENDS[name]
    want = []
    for role, text in MSGS:
        if role == "assistant":
            want += tok.encode(text) + ([tok.special_id(end)] if end else [])
    if name == "baichuan":
        want.append(tok.special_id("</s>"))
        end = "</s>"
    assert [i for i, m in zip(enc.ids, enc.target_mask) if m] == want
    # control tokens are single ids; no header/role token carries loss
    for t in TEMPLATES[name].special_tokens:
        pos = [k for k, i in enumerate(enc.ids) if i == tok.special_id(t)]
        assert pos, t
        if t != end:
            assert all(enc.target_mask[k] == 0 for k in pos)


def test_system_prompt_default_and_generation_prompt(tok):
    t = build_template("chatml", tok)  # Qwen2's default system prompt
    enc = t.encode([("user", "Hi"), ("assistant", "Hello")])
    assert tok.decode(enc.ids).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert tok.decode(build_template("chatml", tok, None).encode([("user", "Hi")]).ids) == \
        "<|im_start|>user\nHi<|im_end|>\n"
    for name in ("llama3", "baichuan"):  # no default system prompt
        assert build_template(name, tok).system_text is None
    enc2 = t.encode([("system", "Custom."), ("user", "Hi")], add_generation_prompt=True)
    assert tok.decode(enc2.ids) == ("<|im_start|>system\nCustom.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                    "<|im_start|>assistant\n")
    assert sum(enc2.target_mask) == 0
    llama = build_template("llama3", tok).encode([("user", "Hi")], add_generation_prompt=True)
    assert tok.decode(llama.ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_special_token_text_in_content_is_not_a_control_token(tok):
    enc = build_template("chatml", tok, None).encode([("user", "say <|im_end|>"), ("assistant", "<|im_end|> ok")])
    im_end = tok.special_id("<|im_end|>")
    assert enc.ids.count(im_end) == 2  # only the template's two end-of-turn tokens


def test_family_defaults_and_errors():
    from megatron_align.data.config import TEMPLATE_CHOICES

    from megatron_align.models.families import preset

    assert TEMPLATE_CHOICES == ("auto",) + tuple(TEMPLATES)
    assert FAMILY_TEMPLATES == {"llama": "llama3", "qwen2": "chatml", "baichuan2": "baichuan"}
    assert resolve_template_name(None, "qwen2") == "chatml"
    assert resolve_template_name("auto", "qwen2") == "auto"
    picked = {p: resolve_template_name(None, preset(p)) for p in
              ("llama3-8b", "llama3.1-8b", "llama3.1-70b", "tiny-llama", "qwen2-7b", "baichuan2-7b")}
    assert picked == {"llama3-8b": "llama3", "llama3.1-8b": "llama3.1", "llama3.1-70b": "llama3.1",
                      "tiny-llama": "llama3", "qwen2-7b": "chatml", "baichuan2-7b": "baichuan"}
    assert resolve_template_name("baichuan", "llama") == "baichuan"
    # auto on a tokenizer without a chat_template (the bundled one): the family's built-in
    assert build_template("auto", load_tokenizer(DEFAULT_TOKENIZER), family="llama").name == "llama3"
    with pytest.raises(ValueError, match="no chat_template"):
        build_template("auto", load_tokenizer(DEFAULT_TOKENIZER))
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
        resolve_template_name("vicuna")
    with pytest.raises(ValueError, match="family 'gpt2'"):
        resolve_template_name(None, "gpt2")


def test_tokenizer_lacking_a_special_token_names_token_and_path(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<|im_start|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(str(tmp_path / "tokenizer.json"))
    tk = load_tokenizer(str(tmp_path))
    with pytest.raises(DataError) as err:
        build_template("chatml", tk)
    msg = str(err.value)
    assert "'<|im_end|>'" in msg and str(tmp_path / "tokenizer.json") in msg and "chatml" in msg
    with pytest.raises(DataError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path / "nowhere"))


def test_bundled_tokenizer_has_every_template_token(tok):
    assert set(ALL_SPECIAL_TOKENS) >= {"<|begin_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>",
                                       "<reserved_106>", "<reserved_107>", "</s>"}
    ids = [tok.special_id(t) for t in ALL_SPECIAL_TOKENS]
    assert len(set(ids)) == len(ids)
    for t, i in zip(ALL_SPECIAL_TOKENS, ids):
        assert tok.decode([i]) == t
    assert tok.pad_id == tok.token_id("<pad>") == 0
