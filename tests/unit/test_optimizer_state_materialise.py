"""Before loading an optimizer checkpoint, Adam state is materialised for torch's Adam only.

Issue 16 item 1: with Transformer Engine importable megatron uses TE's FusedAdam, whose ``state_dict()``
(TE >= 1.13, PR #1078) sends every per-parameter state key through ``name_to_dtype_map`` (``exp_avg``,
``exp_avg_sq``, ``master_param``): a ``step`` entry raised ``KeyError('step')`` on every resume.
``FusedAdamStandIn`` mirrors that key table (TE itself needs CUDA).
"""

from types import SimpleNamespace

import pytest
import torch

from megatron_align.checkpoint.training import _materialise_optimizer_state


class FusedAdamStandIn(torch.optim.Optimizer):
    """TE FusedAdam's state layout: ``step`` in the param group, per-parameter states by dtype table."""

    def __init__(self, params, lr=1e-3):
        super().__init__(params, dict(lr=lr, step=0))
        self.name_to_dtype_map = {"exp_avg": torch.float32, "exp_avg_sq": torch.float32,
                                  "master_param": torch.float32}

    def initialize_state(self, p):  # what megatron's init_state_fn does for FusedAdam
        for name in ("exp_avg", "exp_avg_sq"):
            self.state[p][name] = torch.zeros_like(p, dtype=self.name_to_dtype_map[name])

    def state_dict(self):
        sd = super().state_dict()
        for k, v in sd["state"].items():
            sd["state"][k] = {name: v[name].to(self.name_to_dtype_map[name]) for name in v}
        return sd


def _params():
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]


def _wrapped(inner):
    return SimpleNamespace(optimizer=inner)  # megatron's MegatronOptimizer keeps the torch one as .optimizer


@pytest.mark.parametrize("cls", [torch.optim.AdamW, torch.optim.Adam])
def test_torch_adam_gets_zero_state_and_per_param_step(cls):
    params = _params()
    opt = cls(params, lr=1e-3)
    _materialise_optimizer_state(_wrapped(opt))
    for p in params:
        st = opt.state[p]
        assert set(st) == {"exp_avg", "exp_avg_sq", "step"}
        assert st["exp_avg"].shape == p.shape and not st["exp_avg"].any() and not st["exp_avg_sq"].any()
        assert st["step"].item() == 0.0
    # megatron's DistributedOptimizer (torch branch) reads state[p]["step"] of every parameter
    assert {s["step"].item() for s in opt.state_dict()["state"].values()} == {0.0}


def test_fused_adam_state_is_left_to_megatron():
    params = _params()
    opt = FusedAdamStandIn(params)
    chained = SimpleNamespace(chained_optimizers=[_wrapped(opt)])
    _materialise_optimizer_state(chained)
    assert all(len(opt.state[p]) == 0 for p in params)
    for p in params:
        opt.initialize_state(p)
    sd = opt.state_dict()  # raised KeyError('step') when step was written per parameter
    assert all(set(v) == {"exp_avg", "exp_avg_sq"} for v in sd["state"].values())


def test_stand_in_rejects_per_param_step():
    """The stand-in reproduces the failure the old materialisation caused."""
    p = torch.nn.Parameter(torch.randn(3))
    opt = FusedAdamStandIn([p])
    opt.state[p]["step"] = torch.zeros(())
    with pytest.raises(KeyError, match="step"):
        opt.state_dict()


def test_existing_torch_state_is_kept():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.randn(3)
    opt.step()
    before = opt.state[p]["exp_avg"].clone()
    _materialise_optimizer_state(_wrapped(opt))
    torch.testing.assert_close(opt.state[p]["exp_avg"], before, rtol=0, atol=0)
    assert opt.state[p]["step"].item() == 1.0
