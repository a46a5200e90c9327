"""``merge(spec)``: check the request and the inputs, then stream merged tensors into the converter's writers.

Memory: each output tensor is produced when the writer reaches it, from the same tensor of every input (one
tensor per HF input, one rule block, e.g. one layer's fused QKV, per Megatron input) and dropped once
written. Safetensors shards are planned from shapes and filled tensor by tensor; a dist-checkpoint is
written chunk by chunk (:func:`~megatron_align.convert.dcp_io.write_dist_checkpoint`). Nothing holds a model.
"""

from __future__ import annotations

import os
import shutil
import time
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from megatron_align.convert import mapping
from megatron_align.convert.errors import ConvertError
from megatron_align.merging.methods import METHODS, MergeMethod, MergeParams
from megatron_align.merging.sources import TensorSource, open_source
from megatron_align.models.arch import ArchSpec


class MergeError(ConvertError):
    """A merge request or its inputs are inconsistent; the message names the input, tensor or option."""


@dataclass
class MergeSpec:
    method: str
    models: List[str]
    output: str
    base: Optional[str] = None
    weights: Optional[List[float]] = None
    lam: Optional[float] = None
    density: Optional[float] = None
    normalize: Optional[bool] = None  # None: the method's default
    filter_wise: bool = False
    seed: int = 0
    to: Optional[str] = None  # "hf" | "mcore"; None: the form of the base (else the first model)
    dtype: Optional[torch.dtype] = None  # None: the first model's dtype, tensor by tensor
    force: bool = False
    max_shard_size: int = 5 * 10**9
    make_vocab_size_divisible_by: int = 128


def check_request(spec: MergeSpec) -> Tuple[MergeMethod, MergeParams]:
    """Argument errors, found before any file is opened."""
    if spec.method not in METHODS:
        raise MergeError(f"--method {spec.method!r} is unknown; choose from: {', '.join(METHODS)}")
    m = METHODS[spec.method]
    if m.needs_base and spec.base is None:
        raise MergeError(f"--method {m.name} needs --base (the model the others were fine-tuned from)")
    if not m.needs_base and spec.base is not None:
        raise MergeError(f"--method {m.name} takes no --base; list every model to average in --models")
    if len(spec.models) < m.min_models:
        raise MergeError(f"--method {m.name} needs at least {m.min_models} model(s) in --models besides the base, "
                         f"got {len(spec.models)}")
    if spec.weights is not None and not m.takes_weights:
        raise MergeError(f"--method {m.name} takes no --weights (its ratio comes from the task vectors' angle)")
    if spec.weights is not None and len(spec.weights) != len(spec.models):
        raise MergeError(f"--weights has {len(spec.weights)} value(s) but --models has {len(spec.models)}")
    if spec.lam is not None and not m.takes_lambda:
        raise MergeError(f"--method {m.name} takes no --lambda")
    if spec.density is not None and not m.takes_density:
        raise MergeError(f"--method {m.name} takes no --density")
    if spec.density is not None and not 0 < spec.density <= 1:
        raise MergeError(f"--density must be in (0, 1], got {spec.density}")
    if spec.normalize is not None and m.name == "model_stock":
        raise MergeError("--method model_stock takes no --normalize/--no-normalize")
    if spec.filter_wise and m.name != "model_stock":
        raise MergeError("--filter-wise applies to model_stock only")
    weights = list(spec.weights) if spec.weights is not None else [1.0] * len(spec.models)
    normalize = m.default_normalize if spec.normalize is None else spec.normalize
    if normalize and m.name == "linear" and abs(sum(weights)) < 1e-12:
        raise MergeError(f"--weights sum to {sum(weights)}: cannot normalise (use --no-normalize)")
    if spec.to not in (None, "hf", "mcore"):
        raise MergeError(f"--to must be 'hf' or 'mcore', got {spec.to!r}")
    params = MergeParams(weights=weights, lam=1.0 if spec.lam is None else spec.lam, normalize=normalize,
                         density=1.0 if spec.density is None else spec.density, filter_wise=spec.filter_wise)
    return m, params


def check_output(spec: MergeSpec) -> None:
    out = os.path.realpath(spec.output)
    if os.path.exists(out) and not spec.force:
        raise MergeError(f"output {spec.output} already exists; pass --force to replace it")
    for path in spec.models + ([spec.base] if spec.base else []):
        p = os.path.realpath(path)
        if p == out or p.startswith(out + os.sep) or out.startswith(p + os.sep):
            raise MergeError(f"output {spec.output} overlaps the input {path}")


def tensor_table(arch: ArchSpec) -> List[Tuple[str, Tuple[int, ...]]]:
    """(HF name, shape) of every weight the architecture has, in checkpoint order."""
    out = []
    for rule in mapping.rules_for(arch):
        for i in (range(arch.num_layers) if rule.per_layer else [-1]):
            out += [(n, mapping.hf_shape(sym, arch)) for n, sym in zip(rule.hf_names(i), rule.shapes)]
    return out


def check_compatible(sources: Sequence[TensorSource]) -> None:
    """Every input has the first input's tensors with the same shapes, and the same ArchSpec; else name the first
    tensor (or setting) that differs."""
    ref = sources[0]
    ref_table = tensor_table(ref.arch)
    for other in sources[1:]:
        table = dict(tensor_table(other.arch))
        for name, shape in ref_table:
            if name not in table:
                raise MergeError(f"architecture mismatch: {name} is in {ref.path} but not in {other.path}")
            if table[name] != shape:
                what = "vocabulary" if "embed_tokens" in name or name == "lm_head.weight" else "architecture"
                raise MergeError(f"{what} mismatch: {name} has shape {list(shape)} in {ref.path} but "
                                 f"{list(table[name])} in {other.path}")
        names = {n for n, _ in ref_table}
        extra = [n for n, _ in tensor_table(other.arch) if n not in names]
        if extra:
            raise MergeError(f"architecture mismatch: {extra[0]} is in {other.path} but not in {ref.path}")
        if other.arch != ref.arch:
            a, b = ref.arch.to_dict(), other.arch.to_dict()
            key = next(k for k in a if k != "extra" and a[k] != b[k])
            raise MergeError(f"architecture mismatch: {key} is {a[key]!r} in {ref.path} but {b[key]!r} in {other.path}")


class MergedTensors:
    """The merged model as an HF-named tensor view (``meta``/``get``), computed on demand, one tensor at a time."""

    def __init__(self, method: MergeMethod, params: MergeParams, models: List[TensorSource],
                 base: Optional[TensorSource], dtype: Optional[torch.dtype], seed: int) -> None:
        self.method, self.params, self.models, self.base = method, params, models, base
        self.dtype, self.seed = dtype, seed
        self.count = 0

    def meta(self, name: str) -> torch.Tensor:
        m = self.models[0].meta(name)
        return m.to(self.dtype) if self.dtype is not None else m

    def get(self, name: str) -> torch.Tensor:
        work = self._work_dtype(name)
        base = self.base.get(name).to(work) if self.base is not None else None
        rng = None
        if self.method.random:  # one stream per tensor: the result does not depend on the write order
            rng = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        with torch.no_grad():
            out = self.method.fn(_LazyInputs(self.models, name, work), base, self.params, rng)
        self.count += 1
        return out.to(self.meta(name).dtype)

    def _work_dtype(self, name: str) -> torch.dtype:
        every = self.models + ([self.base] if self.base is not None else [])
        return torch.float64 if all(s.meta(name).dtype == torch.float64 for s in every) else torch.float32


class _LazyInputs(Sequence[torch.Tensor]):
    """``models[i]`` reads model i's tensor when indexed (the methods index each once), in the compute dtype."""

    def __init__(self, sources: List[TensorSource], name: str, dtype: torch.dtype) -> None:
        self.sources, self.name, self.dtype = sources, name, dtype

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i):
        return self.sources[i].get(self.name).to(self.dtype)


def merge(spec: MergeSpec) -> Dict:
    """Run a merge; returns a summary (method, output, format, tensor count, seconds)."""
    from megatron_align.checkpoint import layout
    from megatron_align.convert.hf_io import write_sharded_safetensors_lazy
    from megatron_align.convert.hf_to_mcore import write_release
    from megatron_align.convert.mcore_to_hf import write_hf_files
    from megatron_align.models.arch import padded_vocab_size

    start = time.perf_counter()
    method, params = check_request(spec)
    check_output(spec)
    models = [open_source(p) for p in spec.models]
    base = open_source(spec.base) if spec.base else None
    everyone = ([base] if base else []) + models
    check_compatible(everyone)
    lead = everyone[0]  # config, tokenizer and (by default) output form come from the base, else the first model
    arch = next((s.arch for s in everyone if s.kind == "hf"), lead.arch)
    fmt = spec.to or lead.kind
    view = MergedTensors(method, params, models, base, spec.dtype, spec.seed)
    out = os.path.abspath(spec.output)
    tmp = f"{out}.tmp-merge-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        names = [n for n, _ in tensor_table(arch)]
        if fmt == "hf":
            metas = {n: view.meta(n) for n in names}
            write_sharded_safetensors_lazy(tmp, metas, view.get, spec.max_shard_size)
            write_hf_files(tmp, arch, metas[names[0]].dtype, lead.tokenizer_dir, lead.hf_code_dir)
        else:
            padded = next((s.padded_vocab for s in everyone if s.kind == "mcore"), None) or \
                padded_vocab_size(arch.vocab_size, spec.make_vocab_size_divisible_by, 1)
            write_release(view, arch, tmp, padded_vocab=padded, dtype=spec.dtype,
                          tokenizer_src=lead.tokenizer_dir, hf_code_src=lead.hf_code_dir)
        layout.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for s in everyone:
            s.close()
    return {"method": method.name, "output": out, "format": fmt, "tensors": view.count,
            "models": list(spec.models), "base": spec.base, "weights": list(params.weights),
            "lambda": params.lam, "normalize": params.normalize, "seconds": round(time.perf_counter() - start, 2)}
