#!/usr/bin/env python3
"""Generate megatron_align/assets/tiny/prompts.jsonl: the bundled prompt set of `prompts select` (tests, demo).

    python tools/make_tiny_prompts.py              # writes megatron_align/assets/tiny/prompts.jsonl
    python tools/make_tiny_prompts.py --out FILE   # elsewhere (a test compares against the bundled copy)

55 lines, deterministic: 40 distinct prompts in 5 topics (category = topic; 8 each), then, shuffled, 5 planted
text duplicates of some of them (3 identical after normalisation: case, spacing, punctuation; 2 small edits
caught by MinHash, Jaccard ~0.86; ``of`` = the id of the original), 5 paraphrases (all-MiniLM-L6-v2 cosine 0.93-0.98 with their original, text
Jaccard < 0.6) and 5 junk lines (repetition, symbols, too short). Every 7th line stores its prompt as chat
``messages`` (system + user), every 11th as ``text``; the rest as ``prompt``.
"""

from __future__ import annotations

import argparse
import json
import os
import random

TOPICS = {
    "python": [
        "How do I reverse a linked list in Python?",
        "What is the difference between a list and a tuple in Python?",
        "How do I read a large CSV file in Python without running out of memory?",
        "Explain Python decorators with a short example.",
        "Why is my Python for loop slower than a numpy vectorised operation?",
        "What is the time complexity of binary search, and how do I write it in Python?",
        "How do I create and activate a virtual environment for a Python project?",
        "Show me how to write unit tests in Python with pytest.",
    ],
    "baking": [
        "Give me a simple recipe for banana bread without eggs.",
        "How long should I let bread dough rise before baking it?",
        "Which flour is best for baking a soft chocolate cake?",
        "How do I keep my homemade pie crust from shrinking in the oven?",
        "Why did my sourdough loaf come out of the oven dense and flat?",
        "What can I substitute for butter when baking cookies?",
        "Explain how to bake crusty French baguettes at home.",
        "What oven temperature should I use for baking blueberry muffins?",
    ],
    "space": [
        "Why do stars twinkle but planets usually do not?",
        "How far away is the Andromeda galaxy and how do astronomers measure it?",
        "What happens to a star like the Sun at the end of its life?",
        "Explain what a black hole event horizon is to a ten year old.",
        "Why does the Moon always show the same face to the Earth?",
        "What causes the northern lights?",
        "How do astronomers detect planets orbiting other stars?",
        "What is dark matter and what evidence do astronomers have for it?",
    ],
    "italy": [
        "Plan a three day itinerary for Rome in autumn.",
        "Is it better to buy a rail pass or single train tickets for a week in Italy?",
        "Which towns on the Amalfi Coast are easiest to visit by bus from Naples?",
        "What should I know about renting a car in Tuscany?",
        "Recommend quiet beaches in Sardinia for a family holiday.",
        "How many days do I need to see Venice, Florence and Milan?",
        "Write a packing checklist for a summer trip to Sicily.",
        "Which neighbourhoods in Rome are good to stay in on a first visit to Italy?",
    ],
    "investing": [
        "Explain compound interest on savings with a numeric example.",
        "What is the difference between a Roth IRA and a traditional IRA for retirement savings?",
        "How should I start investing with a small salary?",
        "Summarise the pros and cons of index funds versus picking individual stocks.",
        "How do bond prices react when interest rates rise?",
        "How much of my retirement portfolio should be in stocks versus bonds?",
        "What is dollar cost averaging and when does it make sense for investors?",
        "How are capital gains taxed on stocks held for less than a year in the US?",
    ],
}
# (index into the flat distinct list, variant): identical after normalisation, or a small edit (MinHash)
EXACT = [
    (0, "how do i reverse a linked list in python"),
    (9, "How long should I let bread dough rise before baking it??  "),
    (16, "WHY DO STARS TWINKLE BUT PLANETS USUALLY DO NOT?"),
    (24, "Plan a three day itinerary for Rome in autumn please."),
    (32, "Explain compound interest on savings with a numeric example, please."),
]
PARAPHRASE = [
    (3, "Can you explain decorators in Python using a brief example?"),
    (10, "For a soft chocolate cake, which flour should I bake with?"),
    (21, "What is the cause of the northern lights?"),
    (27, "What do I need to know before I rent a car in Tuscany?"),
    (36, "How do bond prices respond when interest rates go up?"),
]
JUNK = ["asdf asdf asdf asdf asdf asdf", "!!!!!!!!!!!!!!!!", "hi", "x7#k@p%2&q!z^9", "aaaaaaaaaaaaaaaaaaaaaaaa"]

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "megatron_align", "assets", "tiny", "prompts.jsonl")


def build_lines() -> list:
    rng = random.Random(20241018)
    flat = [(p, topic) for topic, ps in TOPICS.items() for p in ps]
    distinct = [{"prompt": p, "category": topic, "planted": "distinct", "of": i} for i, (p, topic) in enumerate(flat)]
    rng.shuffle(distinct)
    extra = [{"prompt": v, "category": flat[i][1], "planted": "exact_dup", "of": i} for i, v in EXACT]
    extra += [{"prompt": v, "category": flat[i][1], "planted": "paraphrase", "of": i} for i, v in PARAPHRASE]
    extra += [{"prompt": v, "category": "junk", "planted": "junk", "of": None} for v in JUNK]
    rng.shuffle(extra)
    line_of = {rec["of"]: n for n, rec in enumerate(distinct)}  # flat index -> line id of the original
    for rec in distinct:
        rec["of"] = None
    for rec in extra:
        rec["of"] = line_of.get(rec["of"])
    lines = []
    for n, rec in enumerate(distinct + extra):
        rec = {"id": n, **rec}
        if n % 7 == 3:
            rec["messages"] = [{"role": "system", "content": "You are a helpful assistant."},
                               {"role": "user", "content": rec.pop("prompt")}]
        elif n % 11 == 5:
            rec["text"] = rec.pop("prompt")
        lines.append(json.dumps(rec, ensure_ascii=False))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(build_lines()) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
