"""Build the emulated CUDA kernels (csrc/**/*.cu as host code, see cudaemu.h) into a torch op library.

    python tools/cudaemu/build.py [--variant plain|asan] [--out DIR]    -> prints the .so path

The library registers ``torch.ops.megatron_align_emu.*`` (the extension's ops, same checks, CUDA
kernels emulated on CPU tensors). Variants: ``plain`` (-O1) and ``asan`` (AddressSanitizer +
UndefinedBehaviorSanitizer; load it into a process started with LD_PRELOAD of libasan, see
:func:`sanitizer_env`). The torch glue (ops_emu.cpp, the slow unit: torch headers) is compiled once
without sanitizers and shared by the variants; results are cached by a hash of the sources.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
CSRC = os.path.join(ROOT, "csrc")
RENAME = "-Dmegatron_align=megatron_align_emu"  # no clash with the real extension's inline functions
SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
VARIANTS: Dict[str, List[str]] = {"plain": [], "asan": SAN_FLAGS}


def cxx() -> str:
    return os.environ.get("CXX", "g++")


def available() -> bool:
    return shutil.which(cxx()) is not None


def _sources() -> List[str]:
    return sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))


def _digest(extra: List[str]) -> str:
    h = hashlib.sha256()
    files = _sources() + sorted(glob.glob(os.path.join(CSRC, "**", "*.h*"), recursive=True))
    files += sorted(glob.glob(os.path.join(HERE, "**", "*.h"), recursive=True)) + [os.path.join(HERE, "ops_emu.cpp")]
    for f in files:
        h.update(f.encode())
        h.update(open(f, "rb").read())
    h.update(" ".join(extra).encode())
    return h.hexdigest()[:16]


def _run(cmd: List[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"cudaemu build failed: {' '.join(cmd)}\n{r.stderr[-4000:]}")


def _torch_flags():
    import torch
    from torch.utils import cpp_extension

    inc = [f"-I{p}" for p in cpp_extension.include_paths()]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    return inc + [abi], [f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-lc10", "-ltorch_cpu", "-ltorch"]


def build(variant: str = "plain", out_dir: str | None = None) -> str:
    """Compile (or reuse) the variant's library; returns its path."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    out_dir = out_dir or os.environ.get("CUDAEMU_BUILD_DIR") or os.path.join(ROOT, "build", "cudaemu")
    os.makedirs(out_dir, exist_ok=True)
    tinc, tlink = _torch_flags()
    key = _digest(tinc)
    lib = os.path.join(out_dir, f"megatron_align_emu_{variant}_{key}.so")
    if os.path.exists(lib):
        return lib
    common = ["-std=c++17", "-fPIC", "-g", "-O1", "-fvisibility=hidden", RENAME, f"-I{CSRC}",
              f"-I{os.path.join(HERE, 'include')}", "-Wno-unknown-pragmas"]
    glue = os.path.join(out_dir, f"ops_emu_{key}.o")
    if not os.path.exists(glue):
        _run([cxx(), *common, "-fvisibility=default", *tinc, "-c", os.path.join(HERE, "ops_emu.cpp"), "-o", glue + ".tmp"])
        os.replace(glue + ".tmp", glue)
    objs = []
    for src in _sources():
        obj = os.path.join(out_dir, f"{os.path.basename(src)}.{variant}_{key}.o")
        _run([cxx(), *common, *VARIANTS[variant], "-include", os.path.join(HERE, "cudaemu.h"), "-x", "c++", "-c", src,
              "-o", obj])
        objs.append(obj)
    _run([cxx(), "-shared", *VARIANTS[variant], glue, *objs, "-o", lib + ".tmp", *tlink])
    os.replace(lib + ".tmp", lib)
    return lib


def build_selftest(variant: str = "plain", out_dir: str | None = None) -> str:
    """Compile selftest.cu (the emulator's negative controls) into an executable; returns its path."""
    out_dir = out_dir or os.environ.get("CUDAEMU_BUILD_DIR") or os.path.join(ROOT, "build", "cudaemu")
    os.makedirs(out_dir, exist_ok=True)
    src = os.path.join(HERE, "selftest.cu")
    h = hashlib.sha256(open(src, "rb").read() + open(os.path.join(HERE, "cudaemu.h"), "rb").read()).hexdigest()[:16]
    exe = os.path.join(out_dir, f"selftest_{variant}_{h}")
    if not os.path.exists(exe):
        _run([cxx(), "-std=c++17", "-g", "-O1", *(["-fsanitize=address"] if variant == "asan" else []),
              "-include", os.path.join(HERE, "cudaemu.h"), f"-I{os.path.join(HERE, 'include')}",
              "-Wno-unknown-pragmas", "-x", "c++", src, "-o", exe + ".tmp"])
        os.replace(exe + ".tmp", exe)
    return exe


def sanitizer_env(variant: str) -> Dict[str, str]:
    """Environment for a process that loads the variant: ASan must be the first library loaded."""
    if variant != "asan":
        return {}
    def lib(name):
        return subprocess.run([cxx(), f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()

    return {
        # libstdc++ too: python does not link it, and ASan's __cxa_throw interceptor needs the real one
        # at start-up (otherwise every C++ exception, e.g. a TORCH_CHECK, aborts with "CHECK failed")
        "LD_PRELOAD": f"{lib('libasan.so')} {lib('libstdc++.so')}",
        # leaks: torch/python keep allocations to exit; odr: the preloaded runtime sees torch's globals twice
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:detect_odr_violation=0:symbolize=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="plain", choices=sorted(VARIANTS))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    print(build(args.variant, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
