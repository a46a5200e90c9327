"""Data layer of SFT: chat templates + loss masks, JSONL and indexed datasets, packing, samplers, micro-batches.

Light to import: submodules load torch / megatron-core only when used. Public entry points::

    from megatron_align.data.config import DataConfig
    from megatron_align.data.builder import build_data, rank_micro_batches
    from megatron_align.data.sampler import GlobalBatchSampler, shard_for_rank
    from megatron_align.data.batch import MicroBatch, make_micro_batches, pad_micro_batches, attention_mask
    from megatron_align.data.indexed import preprocess, IndexedChatDataset
    from megatron_align.data.token_cache import cached_dataset           # a JSONL tokenized once, memory-mapped
"""
