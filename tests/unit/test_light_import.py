import subprocess
import sys


def test_import_is_light():
    code = ("import sys, megatron_align; bad = [m for m in ('megatron', 'megatron.core', 'megatron_align._C', "
            "'transformers', 'torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "megatron_align", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("info", "demo", "sft", "preprocess", "convert", "logprobs", "plot", "plan"):
        assert cmd in out.stdout, cmd
    bad = subprocess.run([sys.executable, "-m", "megatron_align", "nosuch"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown command" in bad.stderr


def test_info_runs():
    out = subprocess.run([sys.executable, "-m", "megatron_align", "info"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for key in ("torch", "megatron-core", "transformer-engine", "apex", "extension", "layer spec", "loss backend"):
        assert key in out.stdout, key
