"""``pas augment``: the inference-time step. The PAS model writes a complement for each user prompt (batched
through the generation engine) and the prompt goes out with the complement appended; every other field is kept.

Output line = the input line with its prompt (``prompt`` / ``text``, or the last user turn of chat messages)
augmented, plus
``original_prompt`` and ``complement``. A prompt too long for the model's window is written unchanged with
``complement: null`` and counted; an empty complement likewise leaves the prompt as it was (counted).
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Dict, List

from megatron_align.pas import formats
from megatron_align.pas.config import PasAugmentConfig, TeacherConfig
from megatron_align.pas.records import PromptRecord, prompt_field, read_prompts


def augmented_record(rec: PromptRecord, complement) -> Dict:
    out = copy.deepcopy(rec.raw)
    text = formats.append_complement(rec.prompt, complement or "")
    key = prompt_field(out)
    if isinstance(out[key], str):
        out[key] = text
    else:  # chat messages: the last (user) turn
        out[key][-1]["content"] = text
    out["original_prompt"] = rec.prompt
    out["complement"] = complement
    return out


def pas_teacher_config(cfg: PasAugmentConfig) -> TeacherConfig:
    return TeacherConfig(kind="checkpoint", load=cfg.load, template=cfg.template, system_prompt=cfg.system_prompt,
                         max_seq_length=cfg.max_seq_length, max_requests=cfg.max_requests,
                         kv_cache_gb=cfg.kv_cache_gb, sampling=cfg.sampling)


def run_augment(cfg: PasAugmentConfig, model, *, writer: bool = True, log=print) -> Dict:
    """Augment every prompt of ``cfg.input`` with ``model`` (a teacher: ``complete(batch) -> replies``)."""
    t0 = time.perf_counter()
    records = read_prompts(cfg.input, cfg.id_field, category_field=None)
    counts = {"prompts": len(records), "augmented": 0, "too_long": 0, "empty_complement": 0}
    tmp = cfg.output + ".tmp"
    f = None
    if writer:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
        f = open(tmp, "w", encoding="utf-8")
    try:
        for start in range(0, len(records), cfg.batch_size):
            batch = records[start:start + cfg.batch_size]
            replies = model.complete([[{"role": "user", "content": formats.enhancer_user_turn(r.prompt)}]
                                      for r in batch])
            lines: List[str] = []
            for r, reply in zip(batch, replies):
                comp = None
                if reply is None:
                    counts["too_long"] += 1
                else:
                    comp = formats.clean_complement(reply)
                    if comp:
                        counts["augmented"] += 1
                    else:
                        counts["empty_complement"] += 1
                lines.append(json.dumps(augmented_record(r, comp), ensure_ascii=False) + "\n")
            if f is not None:
                f.writelines(lines)
                f.flush()
            log(f"[megatron-align pas augment] {start + len(batch)}/{len(records)} prompts")
    finally:
        if f is not None:
            f.close()
    if writer:
        os.replace(tmp, cfg.output)
    counts.update(output=cfg.output, seconds=round(time.perf_counter() - t0, 3),
                  prompts_per_s=round(len(records) / max(time.perf_counter() - t0, 1e-9), 2))
    return counts
