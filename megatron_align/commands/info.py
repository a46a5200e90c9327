"""`megatron-align info`: versions, devices and the backends a model would use."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-llama", help="preset whose backends to report (default tiny-llama)")
    parser.add_argument("--presets", action="store_true", help="list the model presets and exit")


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - report any import failure
        return f"not available ({type(e).__name__})"
    return str(getattr(mod, "__version__", "installed"))


def _te_apex() -> str:
    """Transformer Engine and Apex, said once (megatron-core's own four import warnings are silenced)."""
    te, apex = _version("transformer_engine"), _version("apex")
    if te.startswith("not available") and apex.startswith("not available"):
        return ("not installed: megatron-core uses torch's optimizers and its local multi-tensor ops "
                "(right on CPU; on GPUs install transformer-engine for the TE layer spec and fused kernels)")
    return f"transformer-engine {te}, apex {apex}"


def _stack() -> str:
    """megatron-core (its distribution version) + Python, and whether CI tests that pair."""
    from megatron_align.engine import megatron_fixes

    py = "%d.%d" % sys.version_info[:2]
    mcore = megatron_fixes.mcore_version()
    if mcore is None:
        return f"megatron-core not installed, Python {py}"
    lane = megatron_fixes.tested_pair()
    verdict = f"tested pair (CI: {lane})" if lane else f"untested pair (CI tests {megatron_fixes.tested_pairs_text()})"
    return f"megatron-core {mcore} on Python {py}: {verdict}"


def run(args: argparse.Namespace) -> int:
    import torch

    from megatron_align import __version__
    from megatron_align.models.families import list_presets, preset

    if args.presets:
        for name in list_presets():
            a = preset(name)
            print(f"{name:16s} {a.family:10s} layers={a.num_layers:<3d} hidden={a.hidden_size:<5d} "
                  f"heads={a.num_attention_heads}/{a.num_query_groups} vocab={a.vocab_size} "
                  f"params={a.num_parameters() / 1e9:.2f}B")
        return 0
    from megatron_align.models.spec import resolve_attention_backend, resolve_impl
    from megatron_align.ops import available_backends, describe_backends

    try:
        from megatron.core import package_info

        mcore = package_info.__version__
    except Exception as e:  # noqa: BLE001
        mcore = f"not available ({type(e).__name__})"
    try:
        import megatron_align._C  # noqa: F401

        ext = "built (" + ", ".join(available_backends()) + ")"
    except ImportError as e:
        ext = f"not built ({e}); ops use the PyTorch fallback"
    cuda = torch.cuda.is_available()
    rows = [
        ("megatron_align", __version__),
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
        ("megatron-core", mcore),
        ("stack", _stack()),
        ("transformer-engine / apex", _te_apex()),
        ("extension megatron_align._C", ext),
        ("ops backend", describe_backends()),
        ("CUDA device", torch.cuda.get_device_name() if cuda else "none (CPU backend over gloo)"),
    ]
    arch = preset(args.model)
    impl = resolve_impl("auto")
    attn = resolve_attention_backend("auto")
    rows += [
        (f"{args.model}: layer spec", impl),
        (f"{args.model}: packed attention", "TE THD (cu_seqlens)" if impl == "te" else attn),
        (f"{args.model}: loss backend", "fused (megatron_align.ops, " + ", ".join(available_backends()) + ")"),
        (f"{args.model}: family / vocab", f"{arch.family} / {arch.vocab_size}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
