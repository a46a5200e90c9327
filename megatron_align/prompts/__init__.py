"""Prompt selection (the report's §3.1 data pipeline, and the prompt pool of PAS): read -> quality score ->
dedup (identical text, MinHash LSH + exact Jaccard, embedding near-duplicates) -> multi-granularity spherical
k-means -> diversity sampling to a target. Entry point: :func:`megatron_align.prompts.select.select_prompts`;
command: ``megatron-align prompts select``. Light to import: numpy, faiss, torch load inside the stages.
"""
