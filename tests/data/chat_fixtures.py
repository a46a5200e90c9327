"""Helpers of the data tests: write JSONL files, build conversation records."""

import json


def write_jsonl(path, records):
    """Records are dicts (dumped as JSON) or raw strings (written as they are)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def conv(*turns, system=None, category=None):
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for k, text in enumerate(turns):
        msgs.append({"role": "user" if k % 2 == 0 else "assistant", "content": text})
    rec = {"messages": msgs}
    if category is not None:
        rec["category"] = category
    return rec
