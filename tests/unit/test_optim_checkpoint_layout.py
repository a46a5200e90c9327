"""A dp_reshardable optimizer checkpoint resumes at another DP size only: other TP/PP/VPP, or a
non-distributed optimizer, fail with a message naming the checkpoint and the settings (issue 16 item 8)."""

import pytest

from megatron_align.checkpoint.training import LEGACY_OPTIM_SHARDING, OPTIM_SHARDING, check_optim_layout

SAVED = {"optim_sharding": OPTIM_SHARDING, "optim_layout": {"tp": 2, "pp": 2, "vpp": 1, "distributed": True}}


def test_same_model_parallel_layout_any_dp_is_accepted():
    check_optim_layout("ck", SAVED, {"tp": 2, "pp": 2, "vpp": 1}, distributed=True)


@pytest.mark.parametrize("now, msg", [({"tp": 1, "pp": 2, "vpp": 1}, r"tp=2 .*now tp=1"),
                                       ({"tp": 2, "pp": 4, "vpp": 2}, r"pp=2, vpp=1 .*now pp=4, vpp=2")])
def test_other_tp_pp_is_refused(now, msg):
    with pytest.raises(ValueError, match=r"^ck/step_2: its optimizer state was saved at " + msg):
        check_optim_layout("ck/step_2", SAVED, now, distributed=True)


def test_non_distributed_optimizer_is_refused():
    with pytest.raises(ValueError, match="parallel.distributed_optimizer=true"):
        check_optim_layout("ck", SAVED, {"tp": 2, "pp": 2, "vpp": 1}, distributed=False)


def test_legacy_and_non_distributed_checkpoints_reshard_freely():
    legacy = {"optim_layout": SAVED["optim_layout"]}  # no optim_sharding: saved before the change
    assert legacy.get("optim_sharding", LEGACY_OPTIM_SHARDING) == "fully_reshardable"
    check_optim_layout("ck", legacy, {"tp": 1, "pp": 1, "vpp": 1}, distributed=True)
    plain = {"optim_sharding": OPTIM_SHARDING, "optim_layout": {"tp": 2, "pp": 2, "vpp": 1, "distributed": False}}
    check_optim_layout("ck", plain, {"tp": 1, "pp": 1, "vpp": 1}, distributed=False)
