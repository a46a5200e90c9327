"""Measure what a built model really keeps for backward, by term, next to the planner's prediction.

One micro-batch through one rank's model chunk (the whole model at pp = 1), at a small scale on CPU:

- **saved bytes**: every tensor autograd saves during the forward (``saved_tensors_hooks``), counted once
  per storage (a view saved twice, or one tensor saved by several ops, is one buffer), parameters
  excluded, attributed to the module that saved it first: ``layer`` (each transformer layer),
  ``checkpoints`` (the decoder's recompute blocks), ``head`` (final norm and output layer),
  ``embedding``, ``loss`` (outside any module: the cross-entropy).
- **allocator**: ``torch.profiler(profile_memory=True)`` allocation events in time order: bytes live at
  the end of the forward (above the start) and the peak of forward + backward.

Run inside an initialised runtime (``setup_runtime``); :func:`measure_case` returns a dict of bytes.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Dict, List

import torch

from megatron_align.models.arch import ArchSpec


@dataclass(frozen=True)
class MeasureCase:
    tp: int = 1
    sp: bool = False
    recompute: str = "none"
    k: int = 1
    precision: str = "fp32"
    seq_length: int = 256
    micro_batch_size: int = 1
    loss_backend: str = "fused"
    packed: bool = False  # rows of several documents (document-id mask)
    attention_backend: str = "sdpa"

    def label(self) -> str:
        par = f"tp{self.tp}" + ("+sp" if self.sp and self.tp > 1 else "")
        rc = self.recompute + (f"(k={self.k})" if self.recompute == "kblock" else "")
        return f"{par} {rc} {self.precision} s={self.seq_length} b={self.micro_batch_size} ce={self.loss_backend}" + (
            " packed" if self.packed else "")


# a transformer layer's submodules -> the planner's layer groups (layer_groups below)
_SUBMODULE_GROUP = {"input_layernorm": "norms", "pre_mlp_layernorm": "norms", "self_attention": "attention",
                    "mlp": "mlp"}


class _ModuleTracker:
    """Which module is running: a stack pushed/popped by forward pre-/post-hooks."""

    def __init__(self, root: torch.nn.Module) -> None:
        self.stack: List[str] = []
        self.handles = []
        for name, mod in root.named_modules():
            self.handles.append(mod.register_forward_pre_hook(self._push(name)))
            self.handles.append(mod.register_forward_hook(self._pop))

    def _push(self, name: str):
        def hook(module, args) -> None:
            self.stack.append(name)
        return hook

    def _pop(self, module, args, output) -> None:
        self.stack.pop()

    def group(self) -> str:
        for name in reversed(self.stack):
            parts = name.split(".")
            if "layers" in parts:
                i = parts.index("layers")
                if i + 1 >= len(parts):
                    return "checkpoints"
                sub = parts[i + 2] if i + 2 < len(parts) else ""
                return f"layer{parts[i + 1]}.{_SUBMODULE_GROUP.get(sub, 'other')}"
            if parts[-1] in ("final_layernorm", "output_layer"):
                return "head"
            if parts[0] == "embedding":
                return "embedding"
            if parts[-1] == "decoder":
                return "checkpoints"
        return "loss"

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _SavedBytes:
    """saved_tensors_hooks pack hook: bytes per group, each storage once, parameters excluded."""

    def __init__(self, tracker: _ModuleTracker, params: set) -> None:
        self.tracker, self.params = tracker, params
        self.seen: Dict[int, str] = {}
        self.by_group: Dict[str, int] = {}
        self.active = True

    def pack(self, t: torch.Tensor):
        if self.active:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr and ptr not in self.params and ptr not in self.seen:
                g = self.tracker.group()
                self.seen[ptr] = g
                self.by_group[g] = self.by_group.get(g, 0) + st.nbytes()
        return t

    @staticmethod
    def unpack(t):
        return t


_FORWARD_END = "megatron_align.plan.measure.forward_end"


def allocator_events(prof) -> List[tuple]:
    """(time_ns, bytes) of every CPU allocation (+) and free (-) the profiler saw, in time order."""
    out = []
    for e in prof.profiler.kineto_results.events():
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"):
            out.append((e.start_ns(), e.nbytes()))
    out.sort()
    return out


def live_and_peak(events: List[tuple], until_ns: int) -> tuple:
    """Bytes live at ``until_ns`` and the peak over all events, relative to the profiler's start."""
    live = peak = at = 0
    for t, nb in events:
        live += nb
        peak = max(peak, live)
        if t <= until_ns:
            at = live
    return at, peak


def _inputs(case: MeasureCase, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, s = case.micro_batch_size, case.seq_length
    tokens = torch.randint(0, vocab, (b, s), generator=g)
    labels = torch.randint(0, vocab, (b, s), generator=g)
    if case.packed:  # three documents per row
        cuts = [0, s // 4, s // 2 + 3, s]
        doc = torch.cat([torch.full((cuts[i + 1] - cuts[i],), i) for i in range(3)])
        pos = torch.cat([torch.arange(cuts[i + 1] - cuts[i]) for i in range(3)])
        return tokens, pos.expand(b, s).contiguous(), doc.expand(b, s).contiguous(), labels
    return tokens, torch.arange(s).expand(b, s).contiguous(), None, labels


def _one_step(model, ce, tp_group, case: MeasureCase, params: set, tokens, pos, doc, labels):
    from torch.profiler import ProfilerActivity, profile, record_function

    tracker = _ModuleTracker(model)
    saved = _SavedBytes(tracker, params)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            logits = model(tokens, pos, doc)
            loss = ce(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), tp_group=tp_group).sum()
        saved.active = False
        del logits
        gc.collect()  # buffers held only by reference cycles (freed at the interpreter's whim) are not kept
        with record_function(_FORWARD_END):
            pass
        loss.backward()
    tracker.close()
    fwd_end = next(e.start_ns() for e in prof.profiler.kineto_results.events() if e.name() == _FORWARD_END)
    live, peak = live_and_peak(allocator_events(prof), fwd_end)
    return saved, live, peak


def measure_case(arch: ArchSpec, case: MeasureCase, seed: int = 0) -> Dict[str, object]:
    """Build the case's model on this rank, run one micro-batch forward + backward, return bytes by term."""
    from megatron.core import parallel_state

    from megatron_align.config import ModelConfig, ParallelConfig
    from megatron_align.models.builder import build_model
    from megatron_align.ops.loss_backends import get_ce_backend

    mcfg = ModelConfig(precision=case.precision, recompute=case.recompute, recompute_k=case.k,
                       loss_backend=case.loss_backend, attention_backend=case.attention_backend,
                       transformer_impl="local")
    par = ParallelConfig(tp=case.tp, sp=case.sp and case.tp > 1)
    built = build_model(mcfg, par, arch=arch, seq_length=case.seq_length)
    (model,) = built.chunks
    model.train()
    tokens, pos, doc, labels = _inputs(case, arch.vocab_size, seed)
    tp_group = parallel_state.get_tensor_model_parallel_group() if case.tp > 1 else None
    ce = get_ce_backend(case.loss_backend)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    for p in model.parameters():  # the gradient buffer exists before the step (megatron DDP's main_grad)
        p.grad = torch.zeros_like(p)
    # With TP > 1 over gloo, collective buffers are released by gloo's threads at varying times; the
    # deterministic part is the smallest of a few runs (single-process runs repeat exactly).
    runs = [_one_step(model, ce, tp_group, case, params, tokens, pos, doc, labels)
            for _ in range(1 if case.tp == 1 else 3)]
    saved, live, peak = min(runs, key=lambda r: r[2])
    layers = {g: v for g, v in saved.by_group.items() if g.startswith("layer")}
    out: Dict[str, object] = {g: v for g, v in saved.by_group.items() if not g.startswith("layer")}
    out["layers"] = sum(layers.values())
    for g, v in layers.items():
        key = "layers." + g.split(".", 1)[1]
        out[key] = out.get(key, 0) + v
    out["saved_total"] = sum(saved.by_group.values())
    out["allocator_live_after_forward"] = live
    out["allocator_peak"] = peak
    return out


def predict_case(arch: ArchSpec, case: MeasureCase) -> Dict[str, float]:
    """The planner's bytes for the same micro-batch, grouped like :func:`measure_case` (pp = 1)."""
    from megatron_align.models.arch import padded_vocab_size
    from megatron_align.plan import activations as act

    b = 4 if case.precision == "fp32" else 2
    opts = act.ActivationOptions(act_bytes=b, norm="local", loss_backend=case.loss_backend,
                                 attention=case.attention_backend)
    tp, sp, s = case.tp, case.sp and case.tp > 1, case.seq_length
    tokens = s * case.micro_batch_size
    L = arch.num_layers
    vocab = padded_vocab_size(arch.vocab_size, 128, tp)
    mb = act.microbatch_terms(arch, tp, sp, case.recompute, opts, s if case.packed else 0, True)
    if not case.packed:
        mb.pop("attention_mask", None)
    out_terms = act.output_terms(arch, vocab, tp, sp, opts)
    pred = {
        "embedding": mb.pop("token_ids", 0.0) * tokens,
        "head": (out_terms["final_norm_input"] + out_terms["output_layer_input"]) * tokens,
        "loss": (out_terms["logits"] + out_terms["loss_buffers"]) * tokens,
    }
    mask_s = s if case.packed else 0
    layers = act.retained_per_chunk(arch, L, tp, sp, case.recompute, case.k, opts, mask_s) * tokens
    if case.recompute in ("full", "kblock"):
        pred["checkpoints"] = layers + mb.pop("rope_freqs", 0.0) * tokens
        pred["layers"] = 0.0
    else:
        pred["layers"] = layers + mb.pop("attention_mask", 0.0) * tokens
        t = act.layer_terms(arch, tp, sp, opts, mask_s)
        pred["layers.norms"] = (t["norm_inputs"] + t["norm_rstd"]) * L * tokens
        pred["layers.attention"] = (t["linear_inputs"] / 2 + t["qkv_buffer"] + t["qk_rope"] + t["rope_cos_sin"]
                                    + t["attention_out"] + t["attention_lse"] * (case.recompute == "none")
                                    + t.get("attention_mask", 0.0)) * L * tokens
        pred["layers.attention"] += pred["layers"] - layers  # the shared SDPA mask is saved in layer 0
        pred["layers.mlp"] = (t["linear_inputs"] / 2 + t["swiglu"]) * L * tokens
    pred["saved_total"] = sum(v for k, v in pred.items() if "." not in k)
    transient = act.recompute_transient(arch, L, tp, sp, case.recompute, case.k, opts, mask_s)
    working = (transient + act.layer_workspace(arch, tp, sp, opts)) * tokens
    last = act.last_stage_extra(arch, vocab, tp, sp, opts, tokens, b) * tokens
    stage = pred["saved_total"] - pred["head"] - pred["loss"]
    pred["allocator_peak"] = stage + max(working, last)
    return pred


ROWS = ("embedding", "layers", "layers.norms", "layers.attention", "layers.mlp", "checkpoints", "head", "loss",
        "saved_total", "allocator_peak")


def format_comparison(label: str, predicted: Dict[str, float], measured: Dict[str, float]) -> str:
    lines = [label, f"  {'term':<16}{'predicted MiB':>15}{'measured MiB':>15}{'error':>9}"]
    for row in ROWS:
        p, m = predicted.get(row, 0.0), float(measured.get(row, 0.0))
        if not p and not m:
            continue
        err = f"{100 * (p - m) / m:+.1f}%" if m else "-"
        lines.append(f"  {row:<16}{p / 2**20:>15.3f}{m / 2**20:>15.3f}{err:>9}")
    return "\n".join(lines)


def small_arch(arch: ArchSpec, hidden: int = 256, layers: int = 3, head_dim: int = 32, vocab: int = 4000,
               tp: int = 1) -> ArchSpec:
    """The same shape of model at a size this machine runs: hidden/head-dim, the GQA ratio, ffn/hidden kept."""
    heads = max(hidden // head_dim, tp)
    groups = max(round(heads * arch.num_query_groups / arch.num_attention_heads), tp)
    while heads % groups:
        groups += 1
    ffn = max(64, round(arch.ffn_hidden_size / arch.hidden_size * hidden / 64) * 64)
    return arch.replace(num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=heads,
                        num_query_groups=groups, head_dim=None, vocab_size=min(arch.vocab_size, vocab),
                        max_position_embeddings=max(arch.max_position_embeddings, 8192))


def max_errors(predicted: Dict[str, float], measured: Dict[str, object]) -> Dict[str, float]:
    """Relative errors the tests bound: saved bytes (retained) and the allocator peak."""
    return {key: abs(predicted[key] - float(measured[key])) / float(measured[key])
            for key in ("saved_total", "allocator_peak")}


def run_measure(arch: ArchSpec, cases: List[MeasureCase], seed: int = 0) -> List[Dict[str, object]]:
    """Measure and predict each case on this rank (runtime initialised for the cases' TP)."""
    out = []
    for case in cases:
        measured = measure_case(arch, case, seed)
        predicted = predict_case(arch, case)
        out.append({"case": case, "label": case.label(), "measured": measured, "predicted": predicted,
                    "errors": max_errors(predicted, measured)})
    return out
