"""Checkpoints on megatron dist-checkpointing: directory layout, atomic commit, model weights I/O."""
