"""Prompt quality: a documented heuristic in [0, 1] and/or a user function ``path.py:fn(text, record)``.

The heuristic is a product of penalties, each in [0, 1] (1 = nothing wrong), so one bad trait is enough to
sink a prompt and a clean prompt scores 1:

- ``length`` (of the stripped text, a CJK character counting 3): 0 below ``min_chars``; rises linearly from 0.5 at ``min_chars`` to 1 at
  ``3 * min_chars``; above ``max_chars`` it is ``max(0.3, max_chars / n)``.
- ``chars``: the share of letters and digits (any script) among the non-space characters, mapped linearly from
  0 at 25% to 1 at 60% (symbol soup scores 0; code with its punctuation stays >= 0.9); times
  ``max(0, 1 - 10 * share)`` of control characters and U+FFFD replacement characters (mojibake).
- ``repetition``: the share of distinct words among >= 4 words, 0 at <= 30% and 1 at >= 50%; times 0 when
  one character repeats 12+ times in a row (``"aaaaaaaaaaaaa"``, ``"!!!!!!!!!!!!"``) outside code fences;
  times ``1 - max(0, dup3 - 0.2) / 0.6`` for the share ``dup3`` of repeated word 3-grams.
- ``clarity``: 0.5 for a single whitespace-separated token (unless it is CJK text of >= 4 characters); 0.8 when over 70% of >= 20
  letters are upper case (shouting); 0.7 when the prompt is mostly a URL.

The report scores prompt quality with a 7B model distilled from pairwise judgements against anchors on clarity,
practicality, complexity and novelty; pass such a model's scores through ``quality.function``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Optional

from megatron_align.errors import UserError
from megatron_align.prompts.config import QualityConfig

_WORD = re.compile(r"\w+", re.UNICODE)
_RUN = re.compile(r"(.)\1{11,}", re.DOTALL)
_URL = re.compile(r"https?://\S+")
_FENCE = re.compile(r"```.*?(```|$)", re.DOTALL)


# CJK ideographs (+ extension A, compatibility), kana, hangul syllables
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# control characters (not tab / newline / carriage return), U+FFFD, surrogates, private use
_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ud800-\udfff\ue000-\uf8ff]")
_SPACE = re.compile(r"\s")
_ALNUM = re.compile(r"[^\W_]")


def length_score(text: str, min_chars: int, max_chars: int) -> float:
    stripped = text.strip()
    n = len(stripped) + 2 * len(_CJK.findall(stripped))
    if n < min_chars:
        return 0.0
    if n < 3 * min_chars:
        return 0.5 + 0.5 * (n - min_chars) / (2 * min_chars)
    if n > max_chars:
        return max(0.3, max_chars / n)
    return 1.0


def char_score(text: str) -> float:
    n = len(text) - len(_SPACE.findall(text))
    if n <= 0:
        return 0.0
    ratio = len(_ALNUM.findall(text)) / n
    bad = len(_BAD.findall(text))
    return min(1.0, max(0.0, (ratio - 0.25) / 0.35)) * max(0.0, 1.0 - 10.0 * bad / n)


def repetition_score(text: str) -> float:
    if _RUN.search(_FENCE.sub(" ", text)):
        return 0.0
    words = [w.lower() for w in _WORD.findall(text)]
    score = 1.0
    if len(words) >= 4:
        distinct = len(set(words)) / len(words)
        score *= min(1.0, max(0.0, (distinct - 0.3) / 0.2))
    if len(words) >= 6:
        grams = list(zip(words, words[1:], words[2:]))
        dup3 = 1.0 - len(set(grams)) / len(grams)
        score *= 1.0 - min(1.0, max(0.0, dup3 - 0.2) / 0.6)
    return score


def clarity_score(text: str) -> float:
    stripped = text.strip()
    score = 1.0
    if len(stripped.split()) <= 1 and len(_CJK.findall(stripped)) < 4:
        score *= 0.5
    letters = [c for c in stripped if c.isalpha()]
    if len(letters) >= 20 and sum(c.isupper() for c in letters) > 0.7 * len(letters):
        score *= 0.8
    urls = sum(len(u) for u in _URL.findall(stripped))
    if stripped and urls > 0.5 * len(stripped):
        score *= 0.7
    return score


def heuristic_quality(text: str, min_chars: int = 8, max_chars: int = 20000) -> float:
    """The product of the four penalties above, in [0, 1]."""
    score = length_score(text, min_chars, max_chars)
    for part in (char_score, repetition_score, clarity_score):
        if score == 0.0:
            break
        score *= part(text)
    return float(score)


class QualityScorer:
    """``scorer(text, record) -> float`` per :class:`QualityConfig` (heuristic, user function, min, product)."""

    def __init__(self, cfg: QualityConfig, base_dir: str = "") -> None:
        self.cfg = cfg
        self.mode = cfg.mode if cfg.mode != "auto" else ("function" if cfg.function else "heuristic")
        self.fn: Optional[Callable] = None
        if self.mode != "heuristic":
            if not cfg.function:
                raise UserError(f"quality.mode={self.mode} needs quality.function (path/to/file.py:fn)")
            from megatron_align.user_code import load_user_callable

            self.fn = load_user_callable(cfg.function, base_dir=base_dir, call_args=("text", {}),
                                         call_text="(text, record)", label="quality.function", error=UserError)

    def __call__(self, text: str, record: Dict[str, Any]) -> float:
        if self.mode == "heuristic":
            return heuristic_quality(text, self.cfg.min_chars, self.cfg.max_chars)
        value = self.fn(text, record)  # type: ignore[misc]
        try:
            user = float(value)
        except (TypeError, ValueError):
            raise UserError(f"quality.function {self.cfg.function!r} returned {value!r}, expected a number") from None
        if user != user:
            raise UserError(f"quality.function {self.cfg.function!r} returned NaN for {text[:60]!r}")
        if self.mode == "function":
            return user
        h = heuristic_quality(text, self.cfg.min_chars, self.cfg.max_chars)
        return min(h, user) if self.mode == "min" else h * user
