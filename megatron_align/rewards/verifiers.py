"""Rule verifiers (the kinds the report uses for instruction following): each a registered factory
whose keyword arguments are the config's ``params``. A constraint can be fixed in the config or read
per sample from a field of the prompt record (``*_field``), so one verifier serves a whole mixed
instruction-following set. A sample missing the field raises (counted, fallback reward)."""

from __future__ import annotations

import math
import re
from typing import Any, List, Mapping, Optional, Sequence

from megatron_align.rewards.base import RewardComponent, RewardConfigError, register_reward
from megatron_align.rewards.extractors import get_extractor


def _field(sample: Mapping[str, Any], name: str) -> Any:
    if name not in sample:
        raise KeyError(f"sample has no field {name!r} (fields: {', '.join(map(str, sample)) or 'none'})")
    return sample[name]


def _as_number(text: str) -> Optional[float]:
    try:
        return float(text.replace(",", "").strip().rstrip("."))
    except (ValueError, AttributeError):
        return None


@register_reward("exact_match")
class ExactMatch(RewardComponent):
    """1.0 when the extracted answer equals the sample's reference answer, else 0.0 (also when
    nothing can be extracted). Numbers compare numerically (``rel_tol``) when both sides parse;
    strings compare stripped, case-insensitively unless ``case_sensitive``."""

    def __init__(self, extractor: str = "last_number", answer_field: str = "answer", case_sensitive: bool = False,
                 numeric: bool = True, rel_tol: float = 1e-6) -> None:
        try:
            self.extract = get_extractor(extractor)
        except ValueError as e:
            raise RewardConfigError(f"exact_match.extractor: {e}") from None
        self.answer_field, self.case_sensitive, self.numeric, self.rel_tol = answer_field, case_sensitive, numeric, rel_tol

    def _norm(self, s: str) -> str:
        s = " ".join(str(s).split())
        return s if self.case_sensitive else s.lower()

    def score_one(self, prompt: str, response: str, sample: Mapping[str, Any]) -> float:
        ref = _field(sample, self.answer_field)
        refs = ref if isinstance(ref, (list, tuple)) else [ref]
        got = self.extract(response)
        if got is None:
            return 0.0
        for r in refs:
            if self.numeric:
                a, b = _as_number(got), _as_number(str(r))
                if a is not None and b is not None:
                    if math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.rel_tol):
                        return 1.0
                    continue
            if self._norm(got) == self._norm(str(r)):
                return 1.0
        return 0.0


@register_reward("format")
class FormatRegex(RewardComponent):
    """1.0 when the response matches ``pattern`` (``fullmatch``, else ``search``), else 0.0; the pattern
    may come per sample from ``pattern_field``. DOTALL, so ``.`` spans lines."""

    def __init__(self, pattern: Optional[str] = None, pattern_field: Optional[str] = None,
                 fullmatch: bool = True) -> None:
        if (pattern is None) == (pattern_field is None):
            raise RewardConfigError("format: set exactly one of params.pattern and params.pattern_field")
        self.rx = None
        if pattern is not None:
            try:
                self.rx = re.compile(pattern, re.DOTALL)
            except re.error as e:
                raise RewardConfigError(f"format.pattern {pattern!r}: invalid regular expression: {e}") from None
        self.pattern_field, self.fullmatch = pattern_field, fullmatch

    def score_one(self, prompt: str, response: str, sample: Mapping[str, Any]) -> float:
        rx = self.rx or re.compile(str(_field(sample, self.pattern_field)), re.DOTALL)
        m = rx.fullmatch(response.strip()) if self.fullmatch else rx.search(response)
        return 1.0 if m else 0.0


_UNITS = {"chars": len, "words": lambda s: len(s.split()), "lines": lambda s: len(s.strip().splitlines()),
          "sentences": lambda s: len([x for x in re.split(r"[.!?。！？]+", s) if x.strip()])}


@register_reward("length")
class LengthBounds(RewardComponent):
    """1.0 when ``min <= length(response) <= max`` in ``unit`` (chars, words, lines, sentences), else
    0.0; bounds fixed or per sample (``min_field`` / ``max_field``); a missing bound is open."""

    def __init__(self, unit: str = "words", min: Optional[float] = None, max: Optional[float] = None,
                 min_field: Optional[str] = None, max_field: Optional[str] = None) -> None:
        if unit not in _UNITS:
            raise RewardConfigError(f"length.unit: {unit!r} is not one of {list(_UNITS)}")
        if min is None and max is None and min_field is None and max_field is None:
            raise RewardConfigError("length: set at least one bound (params.min, max, min_field or max_field)")
        if min is not None and max is not None and min > max:
            raise RewardConfigError(f"length: min={min} > max={max}")
        self.count = _UNITS[unit]
        self.lo, self.hi, self.lo_field, self.hi_field = min, max, min_field, max_field

    def score_one(self, prompt: str, response: str, sample: Mapping[str, Any]) -> float:
        lo = float(_field(sample, self.lo_field)) if self.lo_field else self.lo
        hi = float(_field(sample, self.hi_field)) if self.hi_field else self.hi
        n = self.count(response)
        return 1.0 if (lo is None or n >= lo) and (hi is None or n <= hi) else 0.0


def _as_list(value: Any) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


@register_reward("keywords")
class Keywords(RewardComponent):
    """Keywords that must appear (``include``) and must not (``exclude``), fixed and/or per sample
    (``include_field`` / ``exclude_field``). ``mode=fraction``: the share of satisfied constraints;
    ``mode=all``: 1.0 only if every constraint holds. A sample with no constraints scores 1.0."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = (), include_field: Optional[str] = None,
                 exclude_field: Optional[str] = None, case_sensitive: bool = False, mode: str = "fraction") -> None:
        if mode not in ("fraction", "all"):
            raise RewardConfigError(f"keywords.mode: {mode!r} is not one of ['fraction', 'all']")
        if not (include or exclude or include_field or exclude_field):
            raise RewardConfigError("keywords: set params.include, exclude, include_field or exclude_field")
        self.include, self.exclude = _as_list(include), _as_list(exclude)
        self.include_field, self.exclude_field = include_field, exclude_field
        self.case_sensitive, self.mode = case_sensitive, mode

    def score_one(self, prompt: str, response: str, sample: Mapping[str, Any]) -> float:
        inc = self.include + (_as_list(_field(sample, self.include_field)) if self.include_field else [])
        exc = self.exclude + (_as_list(_field(sample, self.exclude_field)) if self.exclude_field else [])
        text = response if self.case_sensitive else response.lower()
        norm = (lambda k: k) if self.case_sensitive else str.lower
        ok = [norm(k) in text for k in inc] + [norm(k) not in text for k in exc]
        if not ok:
            return 1.0
        if self.mode == "all":
            return 1.0 if all(ok) else 0.0
        return sum(ok) / len(ok)
