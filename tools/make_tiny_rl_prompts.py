"""Write the bundled tiny RL prompt sets (deterministic, seeded): megatron_align/assets/tiny/rl_prompts_{train,eval}.jsonl.

Each prompt asks for text made of one letter (category = the letter); the `letter` field is what the example
reward (examples/rewards/tiny_rewards.py:letter_share) checks: the share of the response's letters that are it.
The eval prompts use phrasings the training prompts never do (held out).

    python tools/make_tiny_rl_prompts.py
"""

import json
import os
import random

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "megatron_align", "assets", "tiny")
LETTERS = ("a", "e", "o")
TRAIN = ("Write the letter {l} many times.", "Repeat {l} again and again.", "Say {l} as often as you can.",
         "Only type the letter {l}.", "Give me a line of {l}.", "Fill the answer with {l}.",
         "Answer using just {l}.", "Print {l} over and over.")
EVAL = ("Reply with nothing but {l}.", "Type {l} repeatedly.")


def rows(phrasings, n, rng):
    out = []
    for _ in range(n):
        letter = rng.choice(LETTERS)
        text = rng.choice(phrasings).format(l=letter)
        if rng.random() < 0.3:
            text = f"{text} Number {rng.randint(1, 99)}."
        out.append({"prompt": text, "category": letter, "letter": letter})
    return out


def main():
    rng = random.Random(1234)
    for name, phrasings, n in (("rl_prompts_train.jsonl", TRAIN, 256), ("rl_prompts_eval.jsonl", EVAL, 24)):
        with open(os.path.join(OUT, name), "w") as f:
            for r in rows(phrasings, n, rng):
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
