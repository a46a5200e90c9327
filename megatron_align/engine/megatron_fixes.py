"""Narrow fixes for megatron-core 0.16.1 behaviour we depend on (applied once, idempotent).

DistributedOptimizer._set_main_param_and_optimizer_states (non precision-aware path) copies every
key of the *destination* state into place. With torch's Adam (no Apex/TE) the destination has a
per-parameter 'step', which load_parameter_state_from_fully_reshardable deliberately leaves out of
the source (step is restored from param_groups), so resuming raised KeyError('step'). We copy the
state keys both sides have (the dp_reshardable format's source also carries bookkeeping such as
'padding', which is no state), which is what the method means to do, except 'step': it is restored from
param_groups, and the dp_reshardable source's 'step' is the stale local tensor captured before the
load (copying it reset Adam's bias correction to step 0 after every resume).

DistributedOptimizer.load_state_dict (no Apex/TE) gives every parameter's Adam state the *same*
'step' tensor object; torch's Adam increments each parameter's step in place, so after a resume
the shared step advanced once per parameter per iteration and Adam's bias correction went wrong
(losses after resume drifted from the uninterrupted run). We give each parameter its own copy.
"""

from __future__ import annotations

import torch

_APPLIED = False


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    orig = DistributedOptimizer._set_main_param_and_optimizer_states

    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return orig(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        dst = {"param": main_param, **self.optimizer.state[main_param]}
        with torch.no_grad():  # the dp_reshardable load path calls this with autograd on
            for key, value in dst.items():
                if key in tensors and key != "step":
                    value.copy_(tensors[key])

    DistributedOptimizer._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states

    orig_load = DistributedOptimizer.load_state_dict

    def load_state_dict(self, state_dict):
        out = orig_load(self, state_dict)
        for state in self.optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()
        return out

    DistributedOptimizer.load_state_dict = load_state_dict
    _APPLIED = True
