"""Checkpoint conversion Hugging Face <-> Megatron dist-checkpoints, streamed one layer at a time.

- :mod:`.mapping`     one declarative table per family: (HF names, megatron key, transform)
- :mod:`.transforms`  the tensor transforms of those tables, each with its inverse
- :mod:`.hf_io`       lazy reading of HF safetensors / ``.bin`` shards, sharded safetensors writing
- :mod:`.dcp_io`      writing and partially reading megatron ``torch_dist`` checkpoints without
                      building the model (a save planner that produces each chunk on demand)
- :mod:`.hf_to_mcore`, :mod:`.mcore_to_hf`  the two directions

Importing this package imports neither torch.distributed.checkpoint nor megatron.
"""

from megatron_align.convert.errors import ConvertError  # noqa: F401
