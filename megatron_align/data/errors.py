"""Errors of the data layer: every message names the file and, where there is one, the line."""

from __future__ import annotations

from typing import Optional

from megatron_align.errors import UserError


class DataError(UserError, ValueError):
    """Bad training data or data setup. ``str(err)`` reads ``path:line: reason``.

    Attributes: ``path`` (the file), ``line`` (1-based line number, or None), ``reason``. A ``line`` that is a
    :class:`megatron_align.data.sources.Location` (a record of a shard, a Parquet row) names its own file:
    ``shard:line`` or ``file:row N``.
    """

    def __init__(self, path: str, line: Optional[int], reason: str) -> None:
        where_of = getattr(line, "where", None)
        self.path = str(getattr(line, "path", path))
        self.line = line
        self.reason = reason
        where = where_of() if where_of else self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")
