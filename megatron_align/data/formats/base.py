"""The registry of record formats and the reader that detects a file's format from its first valid record.

A format is a small class: ``name``, ``kind`` (what it becomes: ``chat`` -> :class:`~megatron_align.data.schema.
Conversation`, ``pair`` / ``unpaired`` -> :class:`~megatron_align.data.preference.PairRecord`, ``tokens`` -> token
ids), the ``keys`` that identify it and ``parse(obj)``, which raises ``ValueError(reason)`` (the file reader adds
``file:line``). :class:`RecordReader` is the ``parse`` callable every command hands to
:func:`megatron_align.data.jsonl.iter_records`.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Type

from megatron_align.data.schema import RecordError

AUTO = "auto"
KINDS = ("chat", "pair", "unpaired", "tokens")


class RecordFormat(abc.ABC):
    """One record format. Detection: every key of ``keys`` is present (registry order breaks ties)."""

    name = ""
    kind = "chat"
    keys: Tuple[str, ...] = ()
    example = ""  # one JSONL line (docs)

    def matches(self, obj: dict) -> bool:
        return all(k in obj for k in self.keys)

    def partial(self, obj: dict) -> bool:
        """Some of the keys: a record of this format with a field missing (``parse`` names it)."""
        return any(k in obj for k in self.keys)

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.keys)})"

    @abc.abstractmethod
    def parse(self, obj: dict) -> Any:
        """The normalised record; ``RecordError(reason)`` for a bad one."""


#: name -> format, in detection order (the first whose keys all match wins)
FORMATS: Dict[str, RecordFormat] = {}


def register(cls: Type[RecordFormat]) -> Type[RecordFormat]:
    FORMATS[cls.name] = cls()
    return cls


def formats_of(kinds: Iterable[str]) -> List[RecordFormat]:
    kinds = tuple(kinds)
    return [f for f in FORMATS.values() if f.kind in kinds]


def format_names() -> Tuple[str, ...]:
    """Choices of ``data.format``: ``auto`` and every registered format."""
    from megatron_align.data import formats  # noqa: F401  (registers the built-in formats)

    return (AUTO,) + tuple(FORMATS)


def _keys(obj: dict, limit: int = 12) -> str:
    keys = list(obj)
    return ", ".join(map(str, keys[:limit])) + (", ..." if len(keys) > limit else "")


class RecordReader:
    """``parse`` for :func:`iter_records`: detects the format from the first valid record (or uses the named one,
    ``data.format``) among the formats of ``kinds``, then reads every record of the file with it. Records of the
    kinds in ``any_line`` (``logprobs``: pre-tokenized ``input_ids``) are read wherever they are."""

    def __init__(self, kinds: Sequence[str] = ("chat",), named: Optional[str] = AUTO,
                 any_line: Sequence[str] = ()) -> None:
        from megatron_align.data import formats  # noqa: F401  (registers the built-in formats)

        self.accepted = formats_of(kinds)
        self.any_line = formats_of(any_line)  # formats accepted on any line, whatever the file's format
        self.format: Optional[RecordFormat] = None
        self.named = named not in (None, AUTO)
        if self.named:
            from megatron_align.config.base import ConfigError

            if named not in FORMATS:
                raise ConfigError(f"data.format: unknown record format {named!r} (expected one of "
                                 f"{', '.join(format_names())})")
            if FORMATS[named] not in self.accepted:
                raise ConfigError(f"data.format: {named!r} records are {FORMATS[named].kind} records; this takes "
                                 f"{self._accepted()}")
            self.format = FORMATS[named]

    def _accepted(self) -> str:
        return ", ".join(f.describe() for f in self.accepted)

    def _detect(self, obj: dict) -> RecordFormat:
        for f in self.accepted:
            if f.matches(obj):
                return f
        other = next((f for f in FORMATS.values() if f not in self.accepted and f.matches(obj)), None)
        near = [f for f in self.accepted if f.partial(obj)]
        if other is None and len(near) == 1:  # one format has some of its keys: its parser names what is missing
            return near[0]
        hint = f" (this looks like a {other.kind} record, {other.describe()})" if other is not None else ""
        raise RecordError(f"unknown record format: keys [{_keys(obj)}]; accepted: {self._accepted()}{hint}")

    def __call__(self, obj: object) -> Any:
        if not isinstance(obj, dict):
            raise RecordError(f"record must be a JSON object, got {type(obj).__name__}")
        for f in self.any_line:
            if f.matches(obj):
                return f.parse(obj)
        fmt = self.format
        if fmt is None:
            fmt = self._detect(obj)
        elif not fmt.partial(obj):
            why = "named by data.format" if self.named else "detected from the file's first valid record"
            missing = ", ".join(repr(k) for k in fmt.keys if k not in obj)
            raise RecordError(f"missing {missing}: this file's records are {fmt.describe()} ({why}); this record "
                              f"has keys [{_keys(obj)}]")
        record = fmt.parse(obj)
        self.format = fmt
        return record
