"""The shared trainer core: model inputs, the LM loss, wrapping, forward-backward over megatron schedules."""
