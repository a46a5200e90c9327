"""From a :class:`DataConfig` to datasets, and from a global batch to one DP rank's micro-batches.

The trainer's per-step data path::

    data = build_data(cfg.data, family="llama")                  # tokenizer, template, train/eval datasets
    sampler = GlobalBatchSampler(len(data.train), global_batch_size, cfg.data.seed, cfg.data.shuffle, epochs=..)
    for global_ids in sampler:                                   # global_batch_size SAMPLE indices
        mbs = rank_micro_batches(data.train, global_ids, dp_rank, dp_size, cfg.data, micro_batch_size)
        n = all_reduce_max(len(mbs)); mbs = pad_micro_batches(mbs, n, cfg.data.seq_length, micro_batch_size,
                                                              data.tokenizer.pad_id)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence

from megatron_align.data.batch import MicroBatch, make_micro_batches
from megatron_align.data.config import DEFAULT_TOKENIZER, DataConfig
from megatron_align.data.errors import DataError
from megatron_align.data.indexed import IndexedChatDataset, file_sha256, index_exists, read_meta
from megatron_align.data.packing import pack_lengths, token_utilization
from megatron_align.data.samples import ChatDataset, DataStats
from megatron_align.data.sampler import shard_for_rank
from megatron_align.data.sources import is_data_source, strip_data_suffix
from megatron_align.data.token_cache import cached_dataset
from megatron_align.data.templates import DEFAULT_SYSTEM, ChatTemplate, build_template
from megatron_align.data.tokenizer import ChatTokenizer, load_tokenizer


@dataclass
class DataBundle:
    tokenizer: ChatTokenizer
    template: ChatTemplate
    train: ChatDataset
    eval: Optional[ChatDataset]


def indexed_prefix(path: str) -> Optional[str]:
    """The indexed dataset (``<prefix>.bin/.idx/.meta.json``) a data path names, or None: the prefix itself, its
    ``.bin``/``.idx`` file, or a data-file name whose data file does not exist but whose suffix-less prefix was
    written by ``preprocess`` (``data.path=out/x.jsonl`` after ``preprocess --output-prefix out/x.jsonl``)."""
    prefix = path[:-4] if path.endswith((".bin", ".idx")) else path
    if index_exists(prefix) and (strip_data_suffix(path) == path or not is_data_source(path)):
        return prefix
    if not is_data_source(path) and index_exists(strip_data_suffix(path)):
        return strip_data_suffix(path)
    return None


def open_dataset(path: str, cfg: DataConfig, tokenizer: ChatTokenizer, template: ChatTemplate) -> ChatDataset:
    """An indexed prefix (see :func:`indexed_prefix`), else any data path :mod:`megatron_align.data.sources` reads
    (a file of any supported type, a directory or a glob of shards), tokenized in memory."""
    prefix = indexed_prefix(path)
    if prefix is not None:
        meta = read_meta(prefix)
        built_system = meta.get("system_prompt")
        if built_system == DEFAULT_SYSTEM:
            built_system = template.default_system_prompt
        if meta["template"] != template.name or built_system != template.system_text:
            raise DataError(prefix, None, f"built with template {meta['template']!r} and system prompt "
                            f"{meta.get('system_prompt')!r}, but this run uses {template.name!r} and "
                            f"{template.system_prompt!r} (data.template / data.system_prompt); re-run preprocess "
                            f"with the same --template and --system-prompt")
        if meta["tokenizer_sha256"] != file_sha256(tokenizer.file):
            raise DataError(prefix, None, f"built with tokenizer {meta['tokenizer']}, which differs from "
                                          f"{tokenizer.file}; re-run preprocess")
        return IndexedChatDataset(prefix, cfg.seq_length, cfg.overlong)
    if is_data_source(path):  # tokenized once into data.cache_dir, then memory-mapped
        return cached_dataset(path, template, cfg.seq_length, cfg.overlong, cfg.on_bad_line, cfg.cache_dir,
                              record_format=cfg.format)
    raise DataError(path, None, "no such file, directory or matching shards, and no indexed dataset "
                                "<path>.bin/.idx/.meta.json")


def open_data(value, cfg: DataConfig, tokenizer: ChatTokenizer, template: ChatTemplate,
              train: bool = True) -> ChatDataset:
    """``data.path`` (``train``) or ``data.eval_path``: one path opens as that dataset; a list of datasets as a
    :class:`~megatron_align.data.mixture.BlendedDataset` (training: weighted draws seeded by ``data.seed``;
    evaluation: every sample of each, reported per dataset name)."""
    if isinstance(value, str):
        return open_dataset(value, cfg, tokenizer, template)
    from megatron_align.data.mixture import BlendedDataset

    sources = cfg.sources() if train else cfg.eval_sources()
    members = [open_dataset(s.path, cfg, tokenizer, template) for s in sources]
    weights = [s.weight for s in sources] if train else None
    return BlendedDataset(members, [s.name for s in sources], weights, seed=cfg.seed)


def build_data(cfg: DataConfig, family=None) -> DataBundle:
    """Validate ``cfg``, load the tokenizer and template (see :func:`tokenizer_and_template`), open datasets."""
    tokenizer, template = tokenizer_and_template(cfg, family)
    train = open_data(cfg.path, cfg, tokenizer, template)
    evalds = open_data(cfg.eval_path, cfg, tokenizer, template, train=False) if cfg.eval_path else None
    return DataBundle(tokenizer, template, train, evalds)


def rank_micro_batches(dataset: ChatDataset, global_ids: Sequence[int], dp_rank: int, dp_size: int,
                       cfg: DataConfig, micro_batch_size: int, pad_id: int = 0) -> List[MicroBatch]:
    """This DP rank's share of one global batch (of units: samples, pairs, groups), packed or padded per
    ``cfg.packing``; a unit never straddles ranks or micro-batches."""
    lengths = dataset.lengths[list(global_ids)] if cfg.balance_dp_by_tokens else None
    mine = shard_for_rank(global_ids, dp_rank, dp_size, lengths)
    return make_micro_batches(dataset.get_units(mine), cfg.seq_length, micro_batch_size, cfg.packing, pad_id)


def packing_stats(dataset: ChatDataset, seq_length: int) -> DataStats:
    """The dataset's stats plus the utilisation of best-fit-decreasing packing of the whole dataset
    (an upper bound on what per-step packing reaches; see :func:`micro_batch_utilization`)."""
    bins = pack_lengths(dataset.lengths, seq_length)
    stats = dataclasses.replace(dataset.stats)
    stats.n_bins = len(bins)
    stats.token_utilization = token_utilization(dataset.lengths, len(bins), seq_length)
    return stats


def micro_batch_utilization(micro_batches: Sequence[MicroBatch]) -> float:
    """Real tokens / token slots over the non-padding micro-batches actually built."""
    slots = sum(mb.tokens.numel() for mb in micro_batches if not mb.is_padding)
    return sum(mb.num_real_tokens for mb in micro_batches) / slots if slots else 0.0


def tokenizer_and_template(cfg: DataConfig, family=None):
    """The tokenizer and chat template of ``cfg``: ``data.template`` (``auto``: the tokenizer directory's own
    chat_template, else the family's built-in) or, when null, the family's built-in. ``family``: a family name or
    an ArchSpec (which picks ``llama3.1`` for Llama-3.1 presets). A bad or unresolvable template is a ConfigError
    naming ``data.template``."""
    from megatron_align.config.base import ConfigError
    from megatron_align.data.chat_jinja import TemplateError

    cfg.validate()
    tok = load_tokenizer(cfg.tokenizer or DEFAULT_TOKENIZER)
    try:
        return tok, build_template(cfg.template, tok, cfg.system_prompt, family)
    except TemplateError:
        raise
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise ConfigError(f"data.template: {exc}") from None
