"""The one base class of user errors.

Anything derived from :class:`UserError` is the user's to fix (a config key, a missing file, a bad data line,
an incompatible checkpoint): ``megatron-align`` prints its message as one line and exits with code 2, no
traceback. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; ``str(err)`` is the whole message (it names the file, line or key)."""
