"""Write the bundled tiny RL prompt sets (deterministic, seeded): megatron_align/assets/tiny/rl_prompts_{train,eval}.jsonl.

Each prompt asks for an answer in vowels (categories: `word`, `line`, `name`: what it asks for); the example reward
(examples/rewards/tiny_rewards.py:vowel_share) is the share of the response's letters that are vowels, a task the
tiny model learns from scratch in tens of GRPO steps. The eval prompts use phrasings the training prompts never use
(held out).

    python tools/make_tiny_rl_prompts.py
"""

import json
import os
import random

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "megatron_align", "assets", "tiny")
KINDS = ("word", "line", "name")
TRAIN = ("Write a {k} made of vowels.", "Give me a {k} with only vowels.", "Answer with a {k} of vowels only.",
         "Make up a {k} using vowels.", "Type a {k} that has no consonants.", "Say a vowel {k}.")
EVAL = ("Reply with a {k} of nothing but vowels.", "Invent a {k} without consonants, please.")


def rows(phrasings, n, rng):
    out = []
    for _ in range(n):
        kind = rng.choice(KINDS)
        text = rng.choice(phrasings).format(k=kind)
        if rng.random() < 0.3:
            text = f"{text} Number {rng.randint(1, 99)}."
        out.append({"prompt": text, "category": kind})
    return out


def main():
    rng = random.Random(1234)
    for name, phrasings, n in (("rl_prompts_train.jsonl", TRAIN, 256), ("rl_prompts_eval.jsonl", EVAL, 24)):
        with open(os.path.join(OUT, name), "w") as f:
            for r in rows(phrasings, n, rng):
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
