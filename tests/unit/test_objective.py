"""The objective contract: reports combine by each metric's reduction; finalize gives Σsum/Σcount per metric and
group; the schedule 3-tuple carries the unit count."""

import torch

from megatron_align.engine.objective import (MetricSpec, Objective, ObjectiveOutput, StepCounts, Unit, combine_reports,
                                             finalize, grouped_mean, mean_metric, report_for_schedule)


class _Toy(Objective):
    unit = Unit.PAIR
    metric_specs = {"acc": MetricSpec("mean"), "top": MetricSpec("max"), "low": MetricSpec("min"),
                    "n": MetricSpec("sum"), "acc/": MetricSpec("mean", ("a", "b"))}

    def __call__(self, inputs, output):
        raise NotImplementedError


def test_reports_combine_by_reduction_and_finalize():
    obj = _Toy()
    reps = []
    for loss, n, acc, top, low, grp in ((3.0, 2, 1.0, 5.0, -1.0, [0, 1]), (1.0, 1, 0.0, 7.0, 2.0, [1, 1])):
        out = ObjectiveOutput(torch.tensor(loss), torch.tensor(n), {
            "acc": mean_metric(torch.tensor(acc), n), "top": torch.tensor(top), "low": torch.tensor(low),
            "n": torch.tensor(float(n)),
            "acc/": grouped_mean(torch.tensor(grp), torch.tensor([acc] * len(grp)), 2)})
        loss_t, count, rep = report_for_schedule(obj, out)
        assert count.dtype == torch.int32 and int(count) == n
        reps.append(rep)
    totals = combine_reports(obj, reps)
    got = finalize(obj.all_specs(), totals)
    assert got["loss"] == 4.0 / 3 and got["acc"] == 1.0 / 3 and got["top"] == 7.0 and got["low"] == -1.0
    assert got["n"] == 3.0 and got["acc/a"] == 1.0 and got["acc/b"] == 1.0 / 3


def test_step_counts_per_unit():
    c = StepCounts(tokens=100, sequences=10, units=5, extra={"chosen_tokens": 40})
    assert c.of(Unit.TOKEN) == 100 and c.of(Unit.SEQUENCE) == 10 and c.of(Unit.PAIR) == c.of(Unit.GROUP) == 5
