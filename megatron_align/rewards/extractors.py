"""Answer extractors for exact-match verifiers: response text -> the answer string (or None).

``boxed`` (the last ``\\boxed{...}``, nested braces allowed), ``last_number``, ``after:<marker>`` (text
after the last marker, to the end of its line, e.g. ``after:Answer:``), ``regex:<pattern>`` (group 1
of the last match, else the whole match), ``last_line``, ``full`` (the whole response).
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Optional

Extractor = Callable[[str], Optional[str]]

_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def boxed(text: str) -> Optional[str]:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def last_number(text: str) -> Optional[str]:
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def last_line(text: str) -> Optional[str]:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def full(text: str) -> Optional[str]:
    return text


EXTRACTORS: Dict[str, Extractor] = {"boxed": boxed, "last_number": last_number, "last_line": last_line,
                                    "full": full}


def _after(marker: str) -> Extractor:
    def extract(text: str) -> Optional[str]:
        k = text.rfind(marker)
        if k < 0:
            return None
        return text[k + len(marker):].split("\n", 1)[0]

    return extract


def _regex(pattern: str) -> Extractor:
    rx = re.compile(pattern, re.DOTALL)

    def extract(text: str) -> Optional[str]:
        matches = list(rx.finditer(text))
        if not matches:
            return None
        m = matches[-1]
        return m.group(1) if rx.groups else m.group(0)

    return extract


def get_extractor(spec: str) -> Extractor:
    """``spec`` is a name from EXTRACTORS, ``after:<marker>`` or ``regex:<pattern>``."""
    if spec in EXTRACTORS:
        return EXTRACTORS[spec]
    kind, _, arg = spec.partition(":")
    if kind == "after" and arg:
        return _after(arg)
    if kind == "regex" and arg:
        try:
            return _regex(arg)
        except re.error as e:
            raise ValueError(f"extractor {spec!r}: invalid regular expression: {e}") from None
    raise ValueError(f"unknown extractor {spec!r}; known: {', '.join(EXTRACTORS)}, after:<marker>, regex:<pattern>")
