"""`megatron-align info` reports the megatron-core + Python pair and whether CI tests it, and says once, in our
words, that Transformer Engine / Apex are missing; no command prints megatron-core's own import warnings."""

import subprocess
import sys

from megatron_align.engine import megatron_fixes as mf

MEGATRON_WARNING = "Transformer Engine and Apex are not installed"


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)


def test_info_reports_stack_and_says_te_apex_once():
    out = _run("-m", "megatron_align", "info")
    assert out.returncode == 0, out.stderr
    assert MEGATRON_WARNING not in out.stderr, out.stderr
    # megatron-core >= 0.17 + a CUDA torch on a GPU-less machine made torch log this at import
    assert mf.CUDA_HOME_NOTICE not in out.stderr, out.stderr
    # clean output: nothing else either (bar a third-party SyntaxWarning that Python prints when it compiles a
    # package installed without .pyc files, e.g. `pip install --no-compile`: not an import-time message of ours)
    lines = out.stderr.splitlines()
    noise = {i + d for i, ln in enumerate(lines) if "SyntaxWarning" in ln and "megatron_align" not in ln for d in (0, 1)}
    assert [ln for i, ln in enumerate(lines) if i not in noise] == [], out.stderr
    py = "%d.%d" % sys.version_info[:2]
    stack = [line for line in out.stdout.splitlines() if line.startswith("stack ")]
    assert len(stack) == 1, out.stdout
    assert f"megatron-core {mf.mcore_version()} on Python {py}: " in stack[0]
    lane = mf.tested_pair()
    assert (f"tested pair (CI: {lane})" in stack[0]) if lane else ("untested pair" in stack[0])
    te_apex = [line for line in out.stdout.splitlines() if "transformer-engine" in line.lower()]
    assert len(te_apex) == 1, out.stdout
    assert out.stdout.count("not installed: megatron-core uses torch's optimizers") <= 1


def test_megatron_import_warnings_silenced_after_our_import():
    # Every command runs through `import megatron_align` first; megatron-core's optimizer and FSDP modules
    # are the ones that warn at import.
    code = ("import megatron_align, megatron.core.optimizer, megatron.core.optimizer.clip_grads, "
            "megatron.core.distributed; print('ok')")
    out = _run("-W", "default", "-c", code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert MEGATRON_WARNING not in out.stderr, out.stderr
    # and the filter is ours, not an accident: without megatron_align megatron still warns (when TE/Apex absent)
    raw = _run("-W", "default", "-c", "import megatron.core.optimizer")
    from megatron.core.optimizer import distrib_optimizer

    if not distrib_optimizer.HAVE_APEX_OR_TE:
        assert MEGATRON_WARNING in raw.stderr
