"""Write the tiny bundled PAS data (deterministic, no download): `python tools/make_tiny_pas_assets.py`.

megatron_align/assets/tiny/
  pas_prompts.jsonl  42 prompts {id, prompt, category} in the style of the bundled chat data (7 categories)
  pas_golden.jsonl   golden (prompt, complement) pairs, 2 per category: the few-shot examples of the teacher
  pas_replay.jsonl   canned teacher and critic replies for `megatron-align pas serve --replies` (a stand-in for
                     a large teacher on a CPU-only machine): most complements are approved, some are rejected
                     and rewritten by the critic, some first replies ignore the format (an over-long answer, a
                     critic reply without JSON) and are regenerated.
"""

from __future__ import annotations

import json
import os
import random
import re

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "megatron_align", "assets", "tiny")
WORDS = ["castle", "smile", "stone", "ocean", "autumn", "puppy", "banana", "purple", "engine", "bread", "pocket",
         "meadow", "spring", "river", "button", "turtle", "rabbit", "school", "paper", "summer", "table", "quiet"]
NAMES = ["calc", "op", "add", "combine", "mix", "merge"]

COMPLEMENTS = {
    "math": "Work the arithmetic out step by step, check the sign of the result, and end with the final number on "
            "its own line.",
    "reverse": "Keep every word exactly as written, only change their order, and answer with the reversed words "
               "on one line without commentary.",
    "count": "Count each word once, including repeated words, and answer with the number first, then a short "
             "note on how you counted.",
    "chat": "Reply in a friendly, concise tone, introduce yourself briefly as an assistant, and offer help without "
            "making assumptions about the user.",
    "code": "Write a complete Python function with the exact name requested, keep it minimal and correct, and "
            "add no explanation unless asked.",
    "list": "List the numbers in ascending order separated by commas, include both ends of the range, and add "
            "nothing else.",
    "repeat": "Repeat exactly the requested word the requested number of times, separated by single spaces, with "
              "no extra words.",
}
REWRITES = {  # what the critic writes instead of a rejected complement
    "math": "Compute the expression carefully and give the final number clearly.",
    "code": "Write a correct Python function with the requested name and behaviour; keep it short.",
    "chat": "Answer warmly and briefly in the user's language, and ask how you can help.",
}
# a first teacher reply that ignores the rules: it answers at length instead of supplementing
OVERLONG = " ".join(["Here is the full answer with every detail worked out for you"] * 8)


def prompts(rng: random.Random):
    out = []

    def add(cat, text):
        out.append({"id": f"p{len(out) + 1:03d}", "prompt": text, "category": cat})

    for _ in range(6):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        add("math", rng.choice([f"Compute {a} - {b}.", f"{a} * {b} = ?", f"What is {a} plus {b}?"]))
        add("reverse", "Reverse the words: " + " ".join(rng.sample(WORDS, rng.randint(3, 6))))
        add("count", "How many words are in: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) + "?")
        add("code", f"Write a Python function named {rng.choice(NAMES)} that returns the "
                    f"{rng.choice(['sum', 'difference', 'product'])} of a and b.")
        add("list", f"Count from 1 to {rng.randint(2, 40)}.")
        add("repeat", f"Repeat the word {rng.choice(WORDS)} {rng.randint(2, 9)} times.")
    for text in ["Hello!", "Who are you?", "Good morning!", "Can you help me?", "Hi there, how are you?",
                 "What can you do?"]:
        add("chat", text)
    seen, uniq = set(), []
    for r in out:  # random draws may repeat a prompt: keep the first
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            uniq.append(r)
    return uniq


def golden():
    pairs = []
    examples = {"math": ["Compute 3 - 9.", "7 * 6 = ?"], "reverse": ["Reverse the words: paper river stone"],
                "count": ["How many words are in: table table quiet?"], "chat": ["Hi!"],
                "code": ["Write a Python function named diff that returns the difference of a and b."],
                "list": ["Count from 1 to 5."], "repeat": ["Repeat the word stone 3 times."]}
    for cat, texts in examples.items():
        for t in texts:
            pairs.append({"category": cat, "prompt": t, "complement": COMPLEMENTS[cat]})
    pairs.append({"prompt": "Write a short story about a robot.",  # uncategorised: the fallback examples
                  "complement": "Tell a complete short story with a clear beginning, middle and end, vivid but "
                                "simple language, and a title."})
    return pairs


def replay_rules(items):
    rules = []
    for k, r in enumerate(items):
        p, cat = r["prompt"], r["category"]
        gen = f"^User prompt:\\n{re.escape(p)}\\n\\nWrite the complement\\.$"
        judge = f"^User prompt:\\n{re.escape(p)}\\n\\nComplement:\\n"
        first = [OVERLONG] if k % 9 == 4 else []  # ignores the format: counted as too long, regenerated
        rules.append({"match": gen, "replies": first + [COMPLEMENTS[cat]]})
        ok = {"reason": "It supplements the prompt without answering it.", "ok": "yes", "complement": COMPLEMENTS[cat]}
        if cat in REWRITES and k % 2 == 0:
            ok = {"reason": "It demands more than this simple prompt needs.", "ok": "no", "complement": REWRITES[cat]}
        verdicts = [json.dumps(ok)]
        if k % 7 == 3:  # the critic ignores the format once: unparsable, asked again
            verdicts.insert(0, "The complement looks reasonable to me.")
        rules.append({"match": judge, "replies": verdicts})
    return rules


def main() -> None:
    rng = random.Random(13)
    items = prompts(rng)
    files = {"pas_prompts.jsonl": items, "pas_golden.jsonl": golden(), "pas_replay.jsonl": replay_rules(items)}
    for name, rows in files.items():
        with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} lines")


if __name__ == "__main__":
    main()
