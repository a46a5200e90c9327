"""``pas generate``: a teacher writes a complement per prompt, a critic judges it, bad ones are redone or dropped.

Per batch of prompts, rounds repeat until every prompt is accepted or dropped:
- teacher round: a reply that is empty or longer than ``max_words`` is a bad reply (counted, asked again);
- critique round: an unparsable verdict is counted and the critic asked again; ``ok: yes`` accepts the
  complement; ``ok: no`` counts a rejection and either takes the critic's rewrite (``on_reject: rewrite``, the
  report's way; a bad rewrite falls back to regeneration) or asks the teacher again (``regenerate``);
- a prompt whose teacher or critic tries reach ``max_tries`` is dropped, with its reason, into the dropped ledger.
Each finished batch is appended to the output (accepted) and the ledger (dropped), so a re-run resumes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from megatron_align.pas import formats
from megatron_align.pas.config import PasGenerateConfig
from megatron_align.pas.records import AppendLog, PromptRecord, read_prompts, unique_by_id


def read_golden(path: Optional[str]) -> List[formats.GoldenPair]:
    """Golden (prompt, complement) pairs, ``{prompt, complement, category?}`` per line (errors name file:line)."""
    from megatron_align.data.jsonl import iter_records

    def parse(rec) -> formats.GoldenPair:
        if not isinstance(rec, dict):
            raise ValueError("expected a JSON object")
        for key in ("prompt", "complement"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise ValueError(f"field `{key}` must be a non-empty string")
        cat = rec.get("category")
        if cat is not None and not isinstance(cat, str):
            raise ValueError("field `category` must be a string")
        return formats.GoldenPair(rec["prompt"], rec["complement"], cat)

    return [g for _, g in iter_records(path, parse)] if path else []


def few_shot_for(golden: Sequence[formats.GoldenPair], category: Optional[str], k: int) -> List[formats.GoldenPair]:
    """Up to ``k`` pairs of the prompt's category; uncategorised pairs when the category has none."""
    same = [g for g in golden if category is not None and g.category == category]
    return (same or [g for g in golden if g.category is None])[:k]


@dataclass
class Pending:
    rec: PromptRecord
    state: str = "teacher"  # teacher -> critic -> done | dropped (critic may send it back to teacher)
    gen_tries: int = 0
    critic_tries: int = 0
    candidate: str = ""
    result: Optional[Dict] = None
    drop_reason: Optional[str] = None


@dataclass
class GenerateStats:
    prompts_in_file: int = 0
    duplicate_ids: int = 0
    already_done: int = 0
    attempted: int = 0
    accepted: int = 0
    dropped: int = 0
    teacher_calls: int = 0
    critic_calls: int = 0
    regenerated: int = 0
    counts: Counter = field(default_factory=Counter)  # bad_reply.*, critic_unparsable, approved, rejected, ...
    drop_reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> Dict:
        d = {k: v for k, v in self.__dict__.items() if not isinstance(v, Counter)}
        d.update({k: dict(sorted(v.items())) for k, v in self.__dict__.items() if isinstance(v, Counter)})
        return d


class ComplementGenerator:
    """Runs the teacher/critic rounds for batches of prompts (no I/O: see :func:`run_generate`)."""

    def __init__(self, cfg: PasGenerateConfig, teacher, critic, golden: Sequence[formats.GoldenPair],
                 stats: GenerateStats) -> None:
        self.cfg, self.teacher, self.critic, self.golden, self.stats = cfg, teacher, critic, golden, stats

    def run_batch(self, records: Sequence[PromptRecord]) -> List[Pending]:
        items = self.current = [Pending(r) for r in records]  # kept: a failing endpoint still saves finished ones
        rnd = 0
        while True:
            todo = [p for p in items if p.state == "teacher"]
            if todo:
                self._teacher_round(todo, rnd)
            todo = [p for p in items if p.state == "critic"]
            if todo:
                self._critic_round(todo, rnd)
            if all(p.state in ("done", "dropped") for p in items):
                return items
            rnd += 1

    # -- rounds -----------------------------------------------------------------------------------------
    def _teacher_round(self, todo: List[Pending], rnd: int) -> None:
        c = self.cfg
        msgs = [formats.generation_messages(p.rec.prompt, few_shot_for(self.golden, p.rec.category,
                                                                       c.few_shot_per_prompt), c.max_words)
                for p in todo]
        replies = self.teacher.complete(msgs, round_index=rnd)
        self.stats.teacher_calls += len(todo)
        for p, reply in zip(todo, replies):
            p.gen_tries += 1
            if p.gen_tries > 1:
                self.stats.regenerated += 1
            if reply is None:
                self._drop(p, "prompt_too_long_for_teacher")
                continue
            comp = formats.clean_complement(reply)
            problem = formats.complement_problem(comp, c.max_words)
            if problem is not None:
                self.stats.counts[f"bad_reply.{problem}"] += 1
                self._again_or_drop(p, f"bad_reply.{problem}")
                continue
            if self.critic is None:
                self._accept(p, comp, None)
            else:
                p.candidate, p.state = comp, "critic"

    def _critic_round(self, todo: List[Pending], rnd: int) -> None:
        """Judge the candidates: accepted, back to the teacher, judged again (unparsable verdict) or dropped."""
        c = self.cfg
        replies = self.critic.complete([formats.critique_messages(p.rec.prompt, p.candidate) for p in todo],
                                       round_index=rnd)
        self.stats.critic_calls += len(todo)
        for p, reply in zip(todo, replies):
            p.critic_tries += 1
            if reply is None:
                self._drop(p, "prompt_too_long_for_critic")
                continue
            verdict = formats.parse_verdict(reply)
            if verdict is None:
                self.stats.counts["critic_unparsable"] += 1
                if p.critic_tries >= c.max_tries:
                    self._drop(p, "critic_unparsable")
                continue  # stays in state "critic": judged again next round
            if verdict.ok:
                self.stats.counts["approved"] += 1
                self._accept(p, p.candidate, verdict)
                continue
            self.stats.counts["rejected"] += 1
            if c.critic.on_reject == "rewrite":
                rewrite = formats.clean_complement(verdict.complement)
                problem = formats.complement_problem(rewrite, c.max_words)
                if problem is None:
                    self.stats.counts["rewritten"] += 1
                    self._accept(p, rewrite, verdict, rewritten=True)
                    continue
                self.stats.counts[f"bad_rewrite.{problem}"] += 1
            self._again_or_drop(p, "rejected")

    # -- outcomes -----------------------------------------------------------------------------------------
    def _again_or_drop(self, p: Pending, reason: str) -> None:
        """Back to the teacher if ``p`` has teacher tries left, else dropped."""
        if p.gen_tries >= self.cfg.max_tries:
            self._drop(p, reason)
        else:
            p.candidate, p.state = "", "teacher"

    def _accept(self, p: Pending, complement: str, verdict, rewritten: bool = False) -> None:
        rec = {k: v for k, v in p.rec.raw.items() if k not in ("prompt", "messages", "category")}
        rec["id"] = p.rec.id
        for key in ("prompt", "messages"):  # chat-message prompts are kept under another name
            if isinstance(p.rec.raw.get(key), list):
                rec[f"source_{key}"] = p.rec.raw[key]
        rec["prompt"] = p.rec.prompt
        rec["complement"] = complement
        if p.rec.category is not None:
            rec["category"] = p.rec.category
        rec["messages"] = formats.training_messages(p.rec.prompt, complement)
        rec["pas"] = {"teacher_tries": p.gen_tries, "critic_tries": p.critic_tries, "rewritten": rewritten,
                      "critic_reason": verdict.reason if verdict is not None else None}
        p.result, p.state = rec, "done"

    def _drop(self, p: Pending, reason: str) -> None:
        p.drop_reason, p.state = reason, "dropped"
        self.stats.drop_reasons[reason] += 1


def run_generate(cfg: PasGenerateConfig, teacher, critic, *, writer: bool = True, log=print) -> Dict:
    """Generate for every prompt of ``cfg.input`` not yet in the output or the dropped ledger.

    ``writer``: this process appends the results (global rank 0 under torchrun; the others compute the same).
    Returns the stats summary (also written to ``cfg.stats``)."""
    t0 = time.perf_counter()
    stats = GenerateStats()
    records = read_prompts(cfg.input, cfg.id_field, cfg.category_field)
    stats.prompts_in_file = len(records)
    records, stats.duplicate_ids = unique_by_id(records)
    golden = read_golden(cfg.few_shot)
    out = AppendLog(cfg.output, writable=writer)
    dropped = AppendLog(dropped_path(cfg), writable=writer)
    todo = [r for r in records if r.id not in out.done and r.id not in dropped.done]
    stats.already_done = len(records) - len(todo)
    if cfg.max_prompts is not None:
        todo = todo[:cfg.max_prompts]
    gen = ComplementGenerator(cfg, teacher, critic, golden, stats)

    def save(items: List[Pending]) -> None:
        accepted = [p.result for p in items if p.result is not None]
        gone = [{"id": p.rec.id, "reason": p.drop_reason, "where": p.rec.where} for p in items if p.drop_reason]
        if writer:
            out.append(accepted)
            dropped.append(gone)
        stats.accepted += len(accepted)
        stats.dropped += len(gone)

    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start:start + cfg.batch_size]
        try:
            items = gen.run_batch(batch)
        except Exception:  # an unreachable endpoint: keep what this batch finished, then fail
            save(gen.current)
            raise
        save(items)
        stats.attempted += len(batch)
        log(f"[megatron-align pas generate] {start + len(batch)}/{len(todo)} prompts: "
            f"{stats.accepted} accepted, {stats.dropped} dropped")
    summary = stats.as_dict()
    summary.update(output=cfg.output, dropped_ledger=dropped_path(cfg), seconds=round(time.perf_counter() - t0, 3),
                   teacher=getattr(teacher, "name", "?"), critic=getattr(critic, "name", None),
                   repaired_partial_line_bytes=out.repaired_bytes + dropped.repaired_bytes,
                   total_in_output=len(out.done), total_dropped=len(dropped.done))
    for t in (teacher, critic):
        client = getattr(t, "client", None)
        if client is not None:
            summary.setdefault("http", {})[t.name] = dict(client.stats.__dict__)
        if getattr(t, "too_long", 0):
            summary.setdefault("too_long", {})[t.name] = t.too_long
    if writer:
        path = cfg.stats or cfg.output + ".stats.json"
        with open(path, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


def dropped_path(cfg: PasGenerateConfig) -> str:
    return cfg.dropped or cfg.output + ".dropped.jsonl"

