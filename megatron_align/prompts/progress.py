"""The progress bars of prompt selection: tqdm on stderr, off when ``enabled`` is false."""

from __future__ import annotations

import sys


def bar(enabled: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kw)
