"""megatron_align: alignment of large language models on Megatron-core.

Importing this package is deliberately light: it imports neither megatron-core nor the
compiled extension. Sub-packages pull in what they need when they are used.
"""

from megatron_align.version import __version__

__all__ = ["__version__"]
