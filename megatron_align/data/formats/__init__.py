"""Record formats: a registry (:data:`FORMATS`) with detection per file (:class:`RecordReader`).

Chat formats (-> Conversation): messages, sharegpt, alpaca, prompt_completion, query_response, text.
Preference stages: preference, unpaired. ``logprobs``: tokens and the chat formats. See docs/data-formats.md.
"""

from megatron_align.data.formats.base import AUTO, FORMATS, RecordFormat, RecordReader, format_names, register
from megatron_align.data.formats import chat, pairs  # noqa: F401  (registration, in detection order)

__all__ = ["AUTO", "FORMATS", "RecordFormat", "RecordReader", "format_names", "register"]
