"""The megatron-core version shims (engine/megatron_fixes.py): each is applied exactly where its version range
says, and on the installed megatron-core the bug it fixes is present in megatron's own code where the range
includes this version and absent where it does not (a newer release that fixes it makes this test fail until
the range gets its upper bound). Runs in both lanes: 0.16.1 on Python 3.11, 0.19.x on 3.12."""

import sys
from types import SimpleNamespace

import pytest
import torch

from megatron_align.engine import megatron_fixes as mf


def _adam_with_state(n_params=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4 + i, generator=g)) for i in range(n_params)]
    opt = torch.optim.Adam(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    return params, opt


def _fake_distopt(opt, params):
    """Just the attributes DistributedOptimizer's two patched methods read (non precision-aware, no FSDP)."""
    return SimpleNamespace(
        optimizer=opt,
        config=SimpleNamespace(use_precision_aware_optimizer_no_fp8_or_ds_fp8=False, fp16=False),
        ddp_config=SimpleNamespace(use_megatron_fsdp=False),
        grad_scaler=None,
        model_param_group_index_map={p: (0, i) for i, p in enumerate(params)},
    )


def _unpatched(name):
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    fn = getattr(DistributedOptimizer, name)
    return getattr(fn, "__wrapped__", fn)


def _keyerror_step_present() -> bool:
    """Bug 1: restoring a parameter's state from a source without 'step' raises KeyError('step')."""
    params, opt = _adam_with_state()
    fake = _fake_distopt(opt, params)
    src = {"param": torch.randn(params[0].shape), "exp_avg": torch.randn(params[0].shape),
           "exp_avg_sq": torch.rand(params[0].shape)}
    try:
        with torch.no_grad():  # as megatron's callers do
            _unpatched("_set_main_param_and_optimizer_states")(fake, params[0], src)
    except KeyError as e:
        assert e.args == ("step",), e
        return True
    assert torch.equal(opt.state[params[0]]["exp_avg"], src["exp_avg"])
    return False


def _saved_groups(opt, step):
    from megatron.core.optimizer.optimizer import param_group_identifier_keys

    groups = []
    for g in opt.state_dict()["param_groups"]:
        saved = dict(g, step=step)
        for key in param_group_identifier_keys:
            saved.setdefault(key, None)
        groups.append(saved)
    return groups


def _shared_step_present() -> bool:
    """Bug 2: after load_state_dict every parameter's Adam 'step' is one shared tensor."""
    from megatron.core.optimizer import distrib_optimizer

    if distrib_optimizer.HAVE_APEX_OR_TE:
        pytest.skip("the shared-step path is the no-Apex/TE one; this environment has Apex or TE")
    params, opt = _adam_with_state()
    for g in opt.param_groups:
        for key in _saved_groups(opt, 0)[0]:
            g.setdefault(key, None)
    _unpatched("load_state_dict")(_fake_distopt(opt, params), {"optimizer": {"param_groups": _saved_groups(opt, 5)}})
    steps = [opt.state[p]["step"] for p in params]
    assert all(float(s) == 5.0 for s in steps), steps
    return len({id(s) for s in steps}) < len(steps)


PROBES = {"distopt-copy-source-keys": _keyerror_step_present, "distopt-own-adam-step": _shared_step_present}


def test_every_shim_has_a_probe():
    assert set(PROBES) == set(mf.SHIMS)


@pytest.mark.parametrize("name", sorted(PROBES))
def test_shim_range_matches_megatron_behaviour(name):
    shim = mf.SHIMS[name]
    present = PROBES[name]()
    assert present == shim.applies(), (
        f"megatron-core {mf.mcore_version()}: bug {'present' if present else 'absent'} but shim {name} "
        f"is declared for {shim.versions}; update its range in engine/megatron_fixes.py")


def test_apply_patches_exactly_the_shims_in_range():
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    mf.apply("optimizer")
    mf.apply("optimizer")  # idempotent: a second call wraps nothing again
    for name, attr in (("distopt-copy-source-keys", "_set_main_param_and_optimizer_states"),
                       ("distopt-own-adam-step", "load_state_dict")):
        fn = getattr(DistributedOptimizer, attr)
        patched = hasattr(fn, "__wrapped__")
        assert patched == mf.SHIMS[name].applies(), name
        if patched:
            assert not hasattr(fn.__wrapped__, "__wrapped__"), f"{name} applied twice"


def test_patched_methods_fix_the_bugs():
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    mf.apply("optimizer")
    if not all(s.applies() for s in mf.SHIMS.values()):
        pytest.skip("the installed megatron-core needs neither shim")
    params, opt = _adam_with_state(seed=1)
    fake = _fake_distopt(opt, params)
    src = {"param": torch.randn(params[1].shape), "exp_avg": torch.randn(params[1].shape),
           "exp_avg_sq": torch.rand(params[1].shape),
           "padding": torch.zeros(2),  # dp_reshardable bookkeeping: no state, ignored
           "step": torch.tensor(0.0)}  # a stale local step: restored from param_groups instead, not copied
    step_before = opt.state[params[1]]["step"].clone()
    DistributedOptimizer._set_main_param_and_optimizer_states(fake, params[1], src)  # with autograd on
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[params[1]][k], src[k])
    assert torch.equal(params[1].detach(), src["param"])
    assert torch.equal(opt.state[params[1]]["step"], step_before)
    assert "padding" not in opt.state[params[1]]

    for g in opt.param_groups:
        for key in _saved_groups(opt, 0)[0]:
            g.setdefault(key, None)
    DistributedOptimizer.load_state_dict(fake, {"optimizer": {"param_groups": _saved_groups(opt, 7)}})
    steps = [opt.state[p]["step"] for p in params]
    assert [float(s) for s in steps] == [7.0] * len(params)
    assert len({id(s) for s in steps}) == len(steps)
    for p in params:  # one Adam step advances each parameter's own step once
        p.grad = torch.randn(p.shape)
    opt.step()
    assert [float(opt.state[p]["step"]) for p in params] == [8.0] * len(params)


@pytest.mark.parametrize("python,mcore,lane", [
    ("3.11", "0.16.1", "make test"), ("3.12", "0.19.2", "make test-compat"), ("3.12", "0.19.0", "make test-compat"),
    ("3.12", "0.17.1", None), ("3.11", "0.19.2", None), ("3.13", "0.19.2", None),
])
def test_tested_pairs(python, mcore, lane):
    assert mf.tested_pair(python, mcore) == lane


def test_running_pair_is_a_tested_one():
    """Both CI lanes run on a tested pair; an untested one here means TESTED or a lane drifted."""
    assert mf.tested_pair() is not None, (sys.version_info[:2], mf.mcore_version(), mf.TESTED)


@pytest.mark.parametrize("spec,version,expect", [
    (">=0.16.1,<0.20", "0.16.1", True), (">=0.16.1,<0.20", "0.19.2", True),
    (">=0.16.1,<0.20", "0.20.0", False), (">=0.16.1,<0.20", "0.16.0", False),
])
def test_shim_version_ranges(spec, version, expect):
    shim = mf.Shim("x", "optimizer", spec, "", lambda: None)
    assert shim.applies(version) is expect
