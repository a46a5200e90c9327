"""Ordered parallel map over a stream, for tokenizing a corpus on the cores a process is given.

:func:`map_ordered` yields ``fn(item)`` in input order, from worker processes forked after ``fn`` is set (so a
loaded tokenizer and template are inherited, never pickled), with a bounded number of chunks in flight (memory does
not grow with the corpus). ``workers=1`` maps in this process: the same function, the same results.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import pickle
from typing import Callable, Iterable, Iterator, List, Optional, TypeVar

from megatron_align.errors import UserError

T = TypeVar("T")
R = TypeVar("R")

CHUNK = 256  # items per task: large enough that pickling overhead is small, small enough to keep the order cheap

_FN: Optional[Callable] = None  # the function of the pool being created (inherited by the forked workers)


def default_workers() -> int:
    """The cores this process may run on (``os.sched_getaffinity``; a container's or Slurm's CPU set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _Failure:
    """An exception raised in a worker, carried back to be re-raised in order (as itself when it pickles)."""

    def __init__(self, exc: BaseException) -> None:
        try:
            self.exc = pickle.loads(pickle.dumps(exc))
        except Exception:  # an exception class with a custom __init__ does not round-trip
            cls = UserError if isinstance(exc, UserError) else RuntimeError
            self.exc = cls(str(exc))


def _run_chunk(items: List) -> object:
    try:
        return [_FN(x) for x in items]
    except Exception as exc:  # noqa: BLE001 - re-raised in the parent
        return _Failure(exc)


def _chunks(items: Iterable[T], size: int) -> Iterator[List[T]]:
    chunk: List[T] = []
    for x in items:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def map_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, chunk: int = CHUNK) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` processes, results in input order; the input is consumed lazily (at most
    ``4 * workers`` chunks ahead). An exception raised by ``fn`` is re-raised here at its item's place."""
    global _FN
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(fn, items)
        return
    _FN = fn  # kept until the pool is gone: a worker that dies is replaced by a fresh fork
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker: the workers are the parallelism
    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        pending: collections.deque = collections.deque()
        source = _chunks(items, chunk)
        for part in source:
            pending.append(pool.apply_async(_run_chunk, (part,)))
            if len(pending) >= 4 * workers:
                yield from _unwrap(pending.popleft().get())
        while pending:
            yield from _unwrap(pending.popleft().get())
    finally:
        pool.terminate()
        pool.join()
        _FN = None


def _unwrap(result) -> List:
    if isinstance(result, _Failure):
        raise result.exc
    return result
