"""The one exception the converter raises; its message names the tensor, key or file at fault."""

from megatron_align.errors import UserError


class ConvertError(UserError, ValueError):
    """A checkpoint cannot be converted: unknown architecture, missing or extra tensors, a shape,
    vocabulary or family mismatch. The message names what is wrong."""
