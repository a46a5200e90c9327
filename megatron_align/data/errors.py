"""Errors of the data layer: every message names the file and, where there is one, the line."""

from __future__ import annotations

from typing import Optional

from megatron_align.errors import UserError


class DataError(UserError, ValueError):
    """Bad training data or data setup. ``str(err)`` reads ``path:line: reason``.

    Attributes: ``path`` (the file), ``line`` (1-based line number, or None), ``reason``.
    """

    def __init__(self, path: str, line: Optional[int], reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")
