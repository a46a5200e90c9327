"""Print a pip constraint pinning the torch installed in this interpreter: ``torch==<version>``.

The version comes from the installed distribution's metadata (importlib.metadata), not from
``torch.__version__``: PyPI's CUDA wheels report ``2.13.0+cu130`` at run time while their metadata says
``2.13.0``, and a constraint on the run-time string is unsatisfiable for pip. ``make setup`` writes this
into ``$(VENV)/constraints.txt`` so that nothing installed afterwards can replace the user's torch.
"""

from __future__ import annotations

import importlib.metadata
import sys


def torch_constraint() -> str:
    return "torch==" + importlib.metadata.version("torch")


def main() -> int:
    try:
        print(torch_constraint())
    except importlib.metadata.PackageNotFoundError:
        print(f"error: no torch installed for {sys.executable}; install one first or set TORCH_SPEC "
              "(e.g. TORCH_SPEC=torch==2.13.0); with TORCH_SPEC=skip a venv sees a system torch only when "
              "created with VENV_ARGS=--system-site-packages", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
