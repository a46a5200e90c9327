"""Preference pairs: the record schema, tokenization with the chat template, and the in-memory dataset.

One record is one pair (read through :class:`~megatron_align.data.formats.RecordReader`: the ``preference``
format; messages take every field of the chat ``messages`` format: text parts, ``developer``, tool calls)::

    {"prompt": [messages...] | "text", "chosen": [assistant message(s)] | "text", "rejected": ...,
     "chosen_score": 7.5, "rejected_score": 3, "dataset": "helpsteer", "category": "math"}
    {"prompt_ids": [...], "chosen_ids": [...], "rejected_ids": [...]}             # pre-tokenized

Without ``prompt``, ``chosen`` and ``rejected`` may be whole conversations: their longest common prefix of
messages is the prompt (TRL's implicit-prompt form). A pair is a :class:`~megatron_align.data.samples.Unit` of
two documents, prompt + chosen (role 0) and prompt + rejected (role 1); ``target_mask`` marks the response tokens
(the assistant content and its end-of-turn token). Per document ``values["score"]`` holds the absolute score
(NaN when the line has none). Pairs whose two responses tokenize identically are counted and skipped.
"""

from __future__ import annotations

import abc

import math
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from megatron_align.data.jsonl import iter_records
from megatron_align.data.samples import ChatDataset, DataStats, Sample, Unit
from megatron_align.data.formats import RecordReader
from megatron_align.data.schema import Message, RecordError, optional_str, parse_messages
from megatron_align.data.templates import ChatTemplate

Messages = Tuple[Message, ...]

CHOSEN, REJECTED = 0, 1


@dataclass(frozen=True)
class PairRecord:
    prompt: Optional[Messages]  # None for pre-tokenized records
    chosen: Optional[Messages]
    rejected: Optional[Messages]
    prompt_ids: Optional[Tuple[int, ...]] = None
    chosen_ids: Optional[Tuple[int, ...]] = None
    rejected_ids: Optional[Tuple[int, ...]] = None
    chosen_score: Optional[float] = None
    rejected_score: Optional[float] = None
    dataset: Optional[str] = None
    category: Optional[str] = None


def _messages(value: Any, field: str, default_role: str) -> Messages:
    """A string (one ``default_role`` message) or a list of chat messages; a system message only opens the prompt."""
    out = parse_messages(value, field, default_role)
    for k, m in enumerate(out):
        if m.role == "system" and (k != 0 or field != "prompt"):
            raise RecordError(f"{field}[{k}]: a system message may only be the first message of the prompt")
    return out


def _ids(value: Any, field: str) -> Tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                              for i in value):
        raise ValueError(f"'{field}' must be a list of non-negative integer token ids")
    return tuple(value)


def _score(obj: dict, field: str) -> Optional[float]:
    value = obj.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"'{field}' must be a finite number, got {value!r}")
    return float(value)


_optional_str = optional_str


def parse_pair(obj: object) -> PairRecord:
    """Validate a decoded JSON value; raise ``ValueError(reason)`` (the caller adds file:line)."""
    if not isinstance(obj, dict):
        raise ValueError(f"record must be a JSON object, got {type(obj).__name__}")
    common = dict(chosen_score=_score(obj, "chosen_score"), rejected_score=_score(obj, "rejected_score"),
                  dataset=_optional_str(obj, "dataset"), category=_optional_str(obj, "category"))
    if "chosen_ids" in obj or "rejected_ids" in obj:
        for f in ("prompt_ids", "chosen_ids", "rejected_ids"):
            if f not in obj:
                raise ValueError(f"missing '{f}' (a pre-tokenized pair needs prompt_ids, chosen_ids, rejected_ids)")
        c, r = _ids(obj["chosen_ids"], "chosen_ids"), _ids(obj["rejected_ids"], "rejected_ids")
        if not c or not r:
            raise ValueError("'chosen_ids' and 'rejected_ids' must not be empty")
        return PairRecord(None, None, None, _ids(obj["prompt_ids"], "prompt_ids"), c, r, **common)
    for f in ("chosen", "rejected"):
        if f not in obj:
            raise ValueError(f"missing '{f}' (a pair needs prompt, chosen and rejected)")
    if "prompt" in obj:
        prompt = _messages(obj["prompt"], "prompt", "user")
        chosen = _messages(obj["chosen"], "chosen", "assistant")
        rejected = _messages(obj["rejected"], "rejected", "assistant")
    else:  # implicit prompt: the longest common prefix of two whole conversations
        if not isinstance(obj["chosen"], list) or not isinstance(obj["rejected"], list):
            raise ValueError("missing 'prompt' (without it, chosen and rejected must be whole conversations)")
        full_c = _messages(obj["chosen"], "chosen", "assistant")
        full_r = _messages(obj["rejected"], "rejected", "assistant")
        n = 0
        while n < min(len(full_c), len(full_r)) and full_c[n] == full_r[n]:
            n += 1
        while n > 0 and full_c[n - 1].role == "assistant":  # the responses start after the last user turn
            n -= 1
        prompt, chosen, rejected = full_c[:n], full_c[n:], full_r[n:]
        if not prompt:
            raise ValueError("missing 'prompt' and chosen/rejected share no prompt messages")
    if prompt[-1].role == "assistant":
        raise ValueError("the prompt must end with a user (or system) message, not an assistant one")
    for name, resp in (("chosen", chosen), ("rejected", rejected)):
        if not resp or any(m.role != "assistant" for m in resp):
            raise ValueError(f"'{name}' must hold only assistant message(s)")
    return PairRecord(prompt, chosen, rejected, **common)


def _encode_side(template: ChatTemplate, rec: PairRecord, side: str) -> Tuple[np.ndarray, np.ndarray]:
    """prompt + response -> (ids, target mask on the response tokens only)."""
    if rec.prompt is None:
        p, resp = list(rec.prompt_ids), list(getattr(rec, f"{side}_ids"))
        ids = np.asarray(p + resp, dtype=np.int64)
        mask = np.concatenate([np.zeros(len(p), np.uint8), np.ones(len(resp), np.uint8)])
        return ids, mask
    full = template.encode(rec.prompt + getattr(rec, side))
    head = template.encode(rec.prompt, add_generation_prompt=True).ids
    if full.ids[:len(head)] != head:
        raise ValueError(f"template {template.name!r} does not render the prompt as a prefix of prompt + {side}")
    mask = np.asarray(full.target_mask, dtype=np.uint8)
    mask[:len(head)] = 0
    return np.asarray(full.ids, dtype=np.int64), mask


def fit_pair(c_ids, c_mask, r_ids, r_mask, prompt_len: int, seq_length: Optional[int], overlong: str):
    """Both documents of a pair share one row: their total must fit ``seq_length``. ``truncate`` shortens the
    responses (the longer first; never the prompt); ``drop`` (or a prompt too long to leave room for both
    responses) returns None. Returns (c_ids, c_mask, r_ids, r_mask, truncated)."""
    if seq_length is None or len(c_ids) + len(r_ids) <= seq_length:
        return c_ids, c_mask, r_ids, r_mask, False
    budget = seq_length - 2 * prompt_len
    if overlong == "drop" or budget < 2:
        return None
    lc, lr = len(c_ids) - prompt_len, len(r_ids) - prompt_len
    keep_c = min(lc, max(budget // 2, budget - lr))
    keep_r = min(lr, budget - keep_c)
    c_end, r_end = prompt_len + keep_c, prompt_len + keep_r
    return c_ids[:c_end], c_mask[:c_end], r_ids[:r_end], r_mask[:r_end], True


class UnitDataset(ChatDataset):
    """A JSONL file of records that become units (:class:`Unit`), tokenized in memory; ``ds[i]`` is unit ``i``.
    Subclasses implement :meth:`_read` (append units, count what was truncated, dropped or skipped) over the records
    of :attr:`reader` (the record formats of ``kinds``, or the one ``record_format`` names: ``data.format``)."""

    kinds: Tuple[str, ...] = ()

    def __init__(self, path: str, template: ChatTemplate, seq_length: Optional[int] = None,
                 overlong: str = "truncate", on_bad_line: str = "error", vocab_size: Optional[int] = None,
                 record_format: str = "auto") -> None:
        self.path, self.vocab_size = path, vocab_size
        self.reader = RecordReader(self.kinds, record_format)
        self.stats = DataStats()
        self.default_dataset = os.path.splitext(os.path.basename(path))[0]
        self._units: List[Unit] = []
        skipped: List[int] = []
        self._read(template, seq_length, overlong, on_bad_line, skipped)
        self.stats.n_samples = len(self._units)
        self.stats.n_skipped_bad = len(skipped)
        self.lengths = np.asarray([len(u) for u in self._units], dtype=np.int64)

    @abc.abstractmethod
    def _read(self, template, seq_length, overlong, on_bad_line, skipped) -> None:
        """Append this file's units to ``self._units``, counting in ``self.stats`` and ``skipped``."""

    def _encode(self, template, rec: PairRecord, sides: Sequence[str], lineno: int, on_bad_line: str,
                skipped: List[int]):
        """[(ids, mask)] per side, or None: a record the template cannot render is a bad record (``file:line``,
        or skipped), a response with no trained token (empty) is counted in ``n_nothing_to_train``."""
        try:
            out = [_encode_side(template, rec, side) for side in sides]
        except RecordError as exc:
            if on_bad_line == "error":
                from megatron_align.data.errors import DataError

                raise DataError(self.path, lineno, str(exc)) from None
            skipped.append(lineno)
            return None
        if not all(mask.any() for _, mask in out):
            self.stats.n_nothing_to_train += 1
            return None
        return out

    def _check_vocab(self, lineno: int, *arrays) -> None:
        bad = max(int(a.max()) for a in arrays)
        if self.vocab_size is not None and bad >= self.vocab_size:
            from megatron_align.data.errors import DataError

            raise DataError(self.path, lineno, f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")

    def __getitem__(self, idx: int) -> Unit:
        return self._units[idx]

    def get_units(self, ids: Sequence[int]) -> List[Unit]:
        return [self._units[int(i)] for i in ids]

    def units(self) -> List[Unit]:
        return self._units


class PreferenceDataset(UnitDataset):
    """A preference JSONL file: ``ds[i]`` is a two-document unit (chosen role 0, rejected role 1)."""

    kinds = ("pair",)

    def _read(self, template, seq_length, overlong, on_bad_line, skipped) -> None:
        for lineno, rec in iter_records(self.path, self.reader, on_bad_line, skipped):
            sides = self._encode(template, rec, ("chosen", "rejected"), lineno, on_bad_line, skipped)
            if sides is None:
                continue
            (c_ids, c_mask), (r_ids, r_mask) = sides
            self._check_vocab(lineno, c_ids, r_ids)
            if np.array_equal(c_ids, r_ids):
                self.stats.n_identical += 1
                continue
            prompt_len = int(np.argmax(c_mask)) if c_mask.any() else len(c_ids)
            fitted = fit_pair(c_ids, c_mask, r_ids, r_mask, prompt_len, seq_length, overlong)
            if fitted is None:
                self.stats.n_dropped += 1
                continue
            c_ids, c_mask, r_ids, r_mask, truncated = fitted
            self.stats.n_truncated += int(truncated)
            k = len(self._units)
            docs = [Sample(2 * k, c_ids, c_mask, rec.category, CHOSEN, {"score": _nan(rec.chosen_score)}),
                    Sample(2 * k + 1, r_ids, r_mask, rec.category, REJECTED, {"score": _nan(rec.rejected_score)})]
            self._units.append(Unit(k, docs, rec.category, rec.dataset or self.default_dataset))


def _nan(x: Optional[float]) -> float:
    return float("nan") if x is None else float(x)


# ---------------------------------------------------------------------------------------------------- unpaired (KTO)
def parse_unpaired(obj: object) -> Tuple[PairRecord, bool]:
    """``{"prompt", "completion", "label": true|false}`` (or ``prompt_ids`` / ``completion_ids``) -> the record
    (the completion in the chosen slot) and its label."""
    if not isinstance(obj, dict):
        raise ValueError(f"record must be a JSON object, got {type(obj).__name__}")
    label = obj.get("label")
    if not isinstance(label, bool):
        raise ValueError(f"'label' must be true or false (desirable or not), got {label!r}")
    common = dict(dataset=_optional_str(obj, "dataset"), category=_optional_str(obj, "category"))
    if "completion_ids" in obj:
        if "prompt_ids" not in obj:
            raise ValueError("missing 'prompt_ids' (a pre-tokenized example needs prompt_ids and completion_ids)")
        c = _ids(obj["completion_ids"], "completion_ids")
        if not c:
            raise ValueError("'completion_ids' must not be empty")
        return PairRecord(None, None, None, _ids(obj["prompt_ids"], "prompt_ids"), c, c, **common), label
    for f in ("prompt", "completion"):
        if f not in obj:
            raise ValueError(f"missing '{f}' (an unpaired example needs prompt, completion and label)")
    prompt = _messages(obj["prompt"], "prompt", "user")
    completion = _messages(obj["completion"], "completion", "assistant")
    if prompt[-1].role == "assistant" or any(m.role != "assistant" for m in completion):
        raise ValueError("'prompt' must end with a user message and 'completion' hold only assistant message(s)")
    return PairRecord(prompt, completion, completion, **common), label


class UnpairedDataset(UnitDataset):
    """KTO data: one document per example (prompt + completion, ``values["label"]`` 1 desirable / 0 not,
    ``values["prompt_len"]``), so mismatched (prompt, completion) documents can be built per batch."""

    kinds = ("unpaired",)

    def _read(self, template, seq_length, overlong, on_bad_line, skipped) -> None:
        for lineno, (rec, label) in iter_records(self.path, self.reader, on_bad_line, skipped):
            sides = self._encode(template, rec, ("chosen",), lineno, on_bad_line, skipped)
            if sides is None:
                continue
            (ids, mask), = sides
            self._check_vocab(lineno, ids)
            prompt_len = int(np.argmax(mask)) if mask.any() else len(ids)
            limit = None if seq_length is None else seq_length // 2  # room for a mismatched (prompt, completion)
            if limit is not None and len(ids) > limit:
                if overlong == "drop" or prompt_len >= limit - 1:
                    self.stats.n_dropped += 1
                    continue
                ids, mask = ids[:limit], mask[:limit]
                self.stats.n_truncated += 1
            k = len(self._units)
            doc = Sample(k, ids, mask, rec.category, 0, {"label": float(label), "prompt_len": float(prompt_len)})
            self._units.append(Unit(k, [doc], rec.category, rec.dataset or self.default_dataset))

    def mismatched(self, ids: Sequence[int]) -> List[Sample]:
        """KTO's KL documents for a batch in the given order: example k's prompt with example k-1's completion
        (the first takes the last one's), TRL's rotation. Their ``sample_id`` is the position in ``ids``."""
        docs = [self._units[int(i)].docs[0] for i in ids]
        out = []
        for k, d in enumerate(docs):
            other = docs[k - 1]
            p, q = int(d.values["prompt_len"]), int(other.values["prompt_len"])
            ids_ = np.concatenate([d.input_ids[:p], other.input_ids[q:]])
            mask = np.concatenate([np.zeros(p, np.uint8), other.target_mask[q:]])
            out.append(Sample(k, ids_, mask))
        return out
