"""Tiny tokenizers with the real pre-tokenizer rules of Llama-3 and Qwen2 (the structure of their tokenizer.json:
a Split on the model's regex, then ByteLevel without its own regex; Qwen2 also NFC-normalizes), and a tiny
sentencepiece model shaped like Baichuan2's (``<reserved_106>``/``<reserved_107>`` user-defined pieces, ``</s>``).
Vocabularies are trained on a few sentences: small, but ids are produced by the same splitting as the real ones."""

import json
import os

# tokenizer.json pre_tokenizer patterns of meta-llama/Meta-Llama-3-8B-Instruct and Qwen/Qwen2-7B-Instruct
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = ["You are a helpful assistant. What is 2 + 3? The answer is 5.",
          "Reverse the words: apple river. river apple", "Hello there!\n\nHow are you today?",
          "Grüße aus München – 你好，世界 🙂", "def f(x):\n    return x * 2\n", "  spaces   and\ttabs\n\n\n"] * 20

SPECIALS = {
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}
TOKENS = {"llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
          "qwen2": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}}


def make_bpe_dir(path, kind, chat_template=None):
    """Write tokenizer.json + tokenizer_config.json of a tiny ``kind`` ('llama3' or 'qwen2') tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    pattern = LLAMA3_PATTERN if kind == "llama3" else QWEN2_PATTERN
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    if kind == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS[kind], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **TOKENS[kind], "clean_up_tokenization_spaces": False}
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    return str(path)


def make_sentencepiece_dir(path):
    """A tiny BPE sentencepiece tokenizer.model only (like Baichuan2's: no tokenizer.json)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=400, model_type="bpe",
        user_defined_symbols=["<reserved_106>", "<reserved_107>"], byte_fallback=True, character_coverage=1.0,
        add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    return str(path)
