"""megatron_align: alignment of large language models on Megatron-core.

Importing this package is deliberately light: it imports neither megatron-core nor the
compiled extension. Sub-packages pull in what they need when they are used.
"""

from megatron_align.engine.megatron_fixes import quiet_import_noise as _quiet_import_noise
from megatron_align.version import __version__

# megatron-core warns four times at import that Transformer Engine and Apex are missing (`info` says it once),
# and makes torch log a CUDA_HOME notice on GPU-less machines with a CUDA torch: keep commands' output clean.
_quiet_import_noise()

__all__ = ["__version__"]
