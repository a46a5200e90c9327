"""Run the CUDA kernels on CPU: csrc/**/*.cu compiled as host code (tools/cudaemu), driven by the GPU
test files tests/gpu/, in two thread schedules and under AddressSanitizer + UBSan.

Each run is a subprocess (the ASan runtime must be preloaded before Python starts). Builds are
cached under build/cudaemu by a hash of the sources. ThreadSanitizer is not run here (see
tools/cudaemu/README.md)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "cudaemu"))

import build as cudaemu_build  # noqa: E402

pytestmark = pytest.mark.skipif(not cudaemu_build.available(), reason="g++ not found: the CUDA emulation needs it")

GPU_TESTS = os.path.join(ROOT, "tests", "gpu")


def _run_gpu_tests(variant: str, order: str, select: str = "emulated"):
    lib = cudaemu_build.build(variant)
    env = dict(os.environ, CUDAEMU_LIB=lib, CUDAEMU_ORDER=order, OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(cudaemu_build.sanitizer_env(variant))
    cmd = [sys.executable, "-m", "pytest", GPU_TESTS, "-q", "-k", select, "-p", "no:cacheprovider"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{variant}/{order}: exit {r.returncode}\n{out[-6000:]}"
    assert " passed" in out and " failed" not in out, out[-3000:]
    assert "AddressSanitizer" not in out and "runtime error" not in out, out[-6000:]
    return out


@pytest.mark.slow
def test_emulated_kernels_forward_and_random_schedules():
    out = _run_gpu_tests("plain", "forward")
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 42, out[-2000:]  # every emulated check ran
    _run_gpu_tests("plain", "random:7")


@pytest.mark.slow
def test_emulated_kernels_under_asan_ubsan():
    if not os.path.exists(cudaemu_build.sanitizer_env("asan")["LD_PRELOAD"].split()[0]):
        pytest.skip("libasan.so not installed for this g++")
    _run_gpu_tests("asan", "reverse")


@pytest.mark.parametrize("case,rc,message", [
    ("reduce", 0, "reduce ok"),
    ("bad_config", 0, "invalid configuration argument"),
    ("divergent", -6, "divergent __syncthreads: thread 0 __syncthreads at"),
    ("exited_lane", -6, "the mask names lane 3, which has exited"),
])
def test_emulator_negative_controls(case, rc, message):
    """The emulator computes a shuffle+barrier reduction exactly and reports what a GPU would hang or
    misbehave on (divergent barrier, shuffle with an exited lane), not silently run it."""
    r = subprocess.run([cudaemu_build.build_selftest("plain"), case], capture_output=True, text=True, timeout=60)
    assert r.returncode == rc and message in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)


def test_emulator_under_asan_catches_out_of_bounds_read():
    exe = cudaemu_build.build_selftest("asan")
    r = subprocess.run([exe, "oob"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    assert r.returncode != 0 and "heap-buffer-overflow" in r.stderr and "read_past_end" in r.stderr, r.stderr[-2000:]
    plain = subprocess.run([cudaemu_build.build_selftest("plain"), "oob"], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 3  # without ASan the same bug goes unnoticed: why CI runs the ASan variant


def test_build_script_rejects_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant 'tsan'"):
        cudaemu_build.build("tsan")
    assert shutil.which(cudaemu_build.cxx())
