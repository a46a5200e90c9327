#!/usr/bin/env python3
"""Generate the tiny bundled assets: a byte-level BPE tokenizer and learnable chat data.

    python tools/make_tiny_assets.py                 # writes megatron_align/assets/tiny/
    python tools/make_tiny_assets.py --out DIR       # elsewhere (tests compare against the bundled copy)

Deterministic (seeded ``random.Random``, single-threaded BPE training), no download. The chat data are simple,
regular tasks a tiny model learns in a few dozen steps (arithmetic, word reversal, counting, repetition, canned
greetings, templated code), with system prompts on some conversations, multi-turn on some, a ``category`` on
all, and a long-tailed length distribution (counting/repetition lengths are lognormal).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # BPE training order independent of thread scheduling

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "megatron_align", "assets", "tiny")

SEED = 20241018
VOCAB_SIZE = 1536
N_TRAIN, N_EVAL = 2000, 200
# Control tokens of every bundled chat template (llama3, chatml, baichuan) plus pad/bos/eos; ids 0..12.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>",
                  "<reserved_106>", "<reserved_107>"]
WORDS = ("apple river stone cloud green music paper light water house bread tiger smile chair table plant "
         "ocean forest candle window garden silver yellow orange purple rabbit dragon pencil basket rocket "
         "summer winter spring autumn mountain island bridge castle doctor friend letter number flower "
         "happy quiet bright little simple yellow coffee butter pepper monkey turtle lemon cherry banana "
         "planet comet meadow valley harbor market school teacher student kitten puppy pillow blanket "
         "mirror ladder hammer button ribbon pocket jacket helmet wagon engine camera guitar violin").split()
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
                  "You are a patient math tutor.", "Answer in one line."]
GREETINGS = [("Hello!", "Hello! How can I help you today?"),
             ("Hi there.", "Hi! How can I help you today?"),
             ("Good morning.", "Good morning! How can I help you today?"),
             ("Thank you.", "You are welcome!"),
             ("Thanks a lot!", "You are welcome!"),
             ("Who are you?", "I am a tiny assistant trained to answer simple questions."),
             ("What can you do?", "I can add numbers, reverse words, count, and repeat things."),
             ("Bye.", "Goodbye! Have a nice day.")]
CODE_OPS = [("sum", "+"), ("difference", "-"), ("product", "*")]
FUNC_NAMES = ["add", "combine", "calc", "compute", "f", "g", "op", "apply"]


def lognormal_int(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(round(math.exp(rng.gauss(math.log(median), sigma))))))


def words(rng: random.Random, n: int) -> list:
    return [rng.choice(WORDS) for _ in range(n)]


def task_math(rng):
    op = rng.choice("+-*")
    a, b = (rng.randint(0, 12), rng.randint(0, 12)) if op == "*" else (rng.randint(0, 50), rng.randint(0, 50))
    r = a + b if op == "+" else a - b if op == "-" else a * b
    q = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?"])
    return q.format(a=a, op=op, b=b), f"{a} {op} {b} = {r}."


def task_reverse(rng):
    ws = words(rng, rng.randint(2, 8))
    return "Reverse the words: " + " ".join(ws), " ".join(reversed(ws))


def task_count(rng):
    ws = words(rng, rng.randint(1, 9))
    n = len(ws)
    return f"How many words are in: {' '.join(ws)}?", f"There {'is' if n == 1 else 'are'} {n} word{'s' * (n != 1)}."


def task_chat(rng):
    return rng.choice(GREETINGS)


def task_code(rng):
    (what, sym), name = rng.choice(CODE_OPS), rng.choice(FUNC_NAMES)
    return (f"Write a Python function named {name} that returns the {what} of a and b.",
            f"def {name}(a, b):\n    return a {sym} b")


def task_list(rng):  # long tail: lognormal length
    n = lognormal_int(rng, 8, 1.0, 1, 300)
    return f"Count from 1 to {n}.", ", ".join(str(i) for i in range(1, n + 1)) + "."


def task_repeat(rng):  # long tail: lognormal length
    w, k = rng.choice(WORDS), lognormal_int(rng, 5, 1.0, 1, 200)
    return f"Repeat the word {w} {k} times.", " ".join([w] * k)


TASKS = {"math": (task_math, 0.3), "reverse": (task_reverse, 0.15), "count": (task_count, 0.15),
         "chat": (task_chat, 0.15), "code": (task_code, 0.1), "list": (task_list, 0.1),
         "repeat": (task_repeat, 0.05)}


def conversation(rng: random.Random) -> dict:
    names = list(TASKS)
    category = rng.choices(names, weights=[TASKS[n][1] for n in names])[0]
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    n_turns = 1 + min(int(rng.expovariate(1.2)), 6)  # ~70% single-turn, rare long dialogues
    for t in range(n_turns):
        task = TASKS[category if t == 0 or rng.random() < 0.5 else rng.choice(names)][0]
        q, a = task(rng)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": messages, "category": category}


# -- preference pairs (reward model, DPO): a learnable rule, chosen = a correct answer, rejected = a wrong one.
# "Name a fruit." -> chosen names a fruit, rejected a word of another class; the category is the class asked for.
N_PAIRS_TRAIN, N_PAIRS_EVAL = 1200, 200
PAIR_CLASSES = {"fruit": "apple banana cherry lemon orange".split(),
                "animal": "tiger rabbit monkey turtle kitten puppy".split(),
                "color": "green yellow purple silver".split(),
                "object": "chair table pencil basket hammer ladder".split()}
PAIR_ARTICLES = {"fruit": "a fruit", "animal": "an animal", "color": "a color", "object": "an object"}


def preference_pair(rng: random.Random) -> dict:
    asked = rng.choice(list(PAIR_CLASSES))
    other = rng.choice([k for k in PAIR_CLASSES if k != asked])
    rec = {"prompt": [{"role": "user", "content": f"Name {PAIR_ARTICLES[asked]}."}],
           "chosen": [{"role": "assistant", "content": rng.choice(PAIR_CLASSES[asked])}],
           "rejected": [{"role": "assistant", "content": rng.choice(PAIR_CLASSES[other])}], "category": asked}
    if rng.random() < 0.5:  # half the pairs carry absolute scores (1-10), like a rated preference set
        rec.update(dataset="rated", chosen_score=rng.randint(7, 10), rejected_score=rng.randint(1, 4))
    else:
        rec["dataset"] = "rules"
    return rec


def write_jsonl(path: str, records: list) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def train_tokenizer(texts: list):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: the bundled assets)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(SEED)
    train = [conversation(rng) for _ in range(N_TRAIN)]
    evals = [conversation(rng) for _ in range(N_EVAL)]
    write_jsonl(os.path.join(args.out, "chat_train.jsonl"), train)
    write_jsonl(os.path.join(args.out, "chat_eval.jsonl"), evals)

    prng = random.Random(SEED + 1)  # own stream: the pairs do not change the chat data or the tokenizer
    write_jsonl(os.path.join(args.out, "pairs_train.jsonl"), [preference_pair(prng) for _ in range(N_PAIRS_TRAIN)])
    write_jsonl(os.path.join(args.out, "pairs_eval.jsonl"), [preference_pair(prng) for _ in range(N_PAIRS_EVAL)])

    texts = ["system", "user", "assistant", "\n\n", "\n"] + [m["content"] for c in train for m in c["messages"]]
    texts += [" ".join(str(i) for i in range(k, k + 20)) for k in range(0, 2600, 20)]  # numbers to the max answer
    texts += [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tok = train_tokenizer(texts)
    tok.save(os.path.join(args.out, "tokenizer.json"), pretty=False)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "pad_token": "<pad>", "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    with open(os.path.join(args.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}: vocab {tok.get_vocab_size()}, {len(train)} train / {len(evals)} eval conversations",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
