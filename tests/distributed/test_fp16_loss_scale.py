"""fp16 is loss-scaled: the first step's gradient norm equals the fp32 run's (issue 16 item 3).

Megatron divides fp16 gradients by its dynamic loss scale; before ``config.grad_scale_func`` was wired the
loss was never multiplied by it and the first grad norm came out 2**-32 small (4.8e-10 against 2.05).
Observed on this machine: fp32 1.9297530, fp16 1.9297432 (5e-6 relative; loss 8e-7 relative); bf16
1.9308 (6e-4). Asserted: 1e-3 relative, fp16's machine epsilon.
"""

import pytest

from helpers.dist import run_distributed

pytestmark = [pytest.mark.distributed]


def _first_steps(out_dir):
    from helpers.sft_runs import sft_first_step_grads
    from megatron_align.engine import optimizer

    res = {}
    for prec in ("fp32", "fp16"):
        res[prec] = sft_first_step_grads([f"output_dir={out_dir}/{prec}", f"model.precision={prec}",
                                          "data.eval_path=null"])
    res["initial_scale"] = optimizer.FP16_INITIAL_LOSS_SCALE
    return res


def test_fp16_first_grad_norm_equals_fp32(tmp_path):
    (res,) = run_distributed(_first_steps, 1, str(tmp_path))
    ref, half = res["fp32"], res["fp16"]
    assert ref["grad_norm"] > 0.1  # a real gradient, not a skipped (overflowed) step
    assert abs(half["grad_norm"] - ref["grad_norm"]) <= 1e-3 * ref["grad_norm"], res
    assert abs(half["loss"] - ref["loss"]) <= 1e-3 * ref["loss"], res
