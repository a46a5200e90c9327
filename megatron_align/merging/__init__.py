"""Model merging (linear, task arithmetic, Model Stock, TIES, DARE), streamed tensor by tensor.

- :mod:`.methods`: the registry of merge formulas (one function each, formula in the docstring; the
  definitions are mergekit 0.1.5's).
- :mod:`.sources`: read one tensor at a time, by its Hugging Face name, from an HF directory or from a
  megatron_align checkpoint (dist-checkpoint partial reads, any TP/PP it was saved at).
- :mod:`.merge`: checks the inputs agree, and streams the merged tensors into the converter's writers
  (safetensors shards, or a dist-checkpoint ``release/``).
"""
