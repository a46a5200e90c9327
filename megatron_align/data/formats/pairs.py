"""Preference, unpaired (KTO) and pre-tokenized record formats (parsed by data/preference.py)."""

from __future__ import annotations

from megatron_align.data.formats.base import RecordFormat, register
from megatron_align.data.schema import RecordError


@register
class PreferenceFormat(RecordFormat):
    """``prompt`` + ``chosen`` + ``rejected`` (strings or message lists; without ``prompt``, two whole
    conversations whose common prefix is the prompt), optional scores; or ``prompt_ids`` / ``chosen_ids`` /
    ``rejected_ids``."""

    name, kind, keys = "preference", "pair", ("chosen", "rejected")
    example = '{"prompt": "2+3?", "chosen": "5", "rejected": "6", "chosen_score": 9, "rejected_score": 2}'

    def matches(self, obj):
        return super().matches(obj) or ("chosen_ids" in obj and "rejected_ids" in obj)

    def partial(self, obj):
        return any(k in obj for k in ("chosen", "rejected", "chosen_ids", "rejected_ids"))

    def parse(self, obj):
        from megatron_align.data.preference import parse_pair

        return parse_pair(obj)


@register
class UnpairedFormat(RecordFormat):
    """KTO: ``prompt`` + ``completion`` + ``label`` (desirable or not)."""

    name, kind, keys = "unpaired", "unpaired", ("completion", "label")
    example = '{"prompt": "2+3?", "completion": "5", "label": true}'

    def matches(self, obj):
        return super().matches(obj) or ("completion_ids" in obj and "label" in obj)

    def partial(self, obj):
        return any(k in obj for k in ("completion", "label", "completion_ids"))

    def parse(self, obj):
        from megatron_align.data.preference import parse_unpaired

        return parse_unpaired(obj)


@register
class TokensFormat(RecordFormat):
    """Pre-tokenized ids (``logprobs``): the sequence as it is."""

    name, kind, keys = "tokens", "tokens", ("input_ids",)
    example = '{"input_ids": [128000, 9906, 1917]}'

    def parse(self, obj):
        ids = obj["input_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                for i in ids):
            raise RecordError("'input_ids' must be a list of non-negative integer token ids")
        if not ids:
            raise RecordError("'input_ids' is empty")
        return tuple(ids)
