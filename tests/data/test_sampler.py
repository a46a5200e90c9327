import itertools

import pytest

from megatron_align.data.sampler import GlobalBatchSampler, shard_for_rank


def test_epoch_seeded_order_and_determinism():
    s = GlobalBatchSampler(10, 4, seed=7, shuffle=True, epochs=2)
    batches = list(s)
    assert len(batches) == len(s) == 4 == s.steps_per_epoch * 2  # 10 // 4 = 2 per epoch (drop_last)
    assert batches == list(GlobalBatchSampler(10, 4, seed=7, shuffle=True, epochs=2))
    assert batches != list(GlobalBatchSampler(10, 4, seed=8, shuffle=True, epochs=2))
    e0, e1 = batches[0] + batches[1], batches[2] + batches[3]
    assert len(set(e0)) == 8 and len(set(e1)) == 8 and e0 != e1  # no repeats in an epoch, reshuffled
    assert list(GlobalBatchSampler(5, 2, shuffle=False, drop_last=False)) == [[0, 1], [2, 3], [4]]
    assert len(list(GlobalBatchSampler(10, 4, seed=1, max_steps=7))) == 7  # runs into epochs 1..3
    assert len(GlobalBatchSampler(10, 4, epochs=1.5)) == 3 and len(GlobalBatchSampler(10, 4, epochs=2, max_steps=3)) == 3
    with pytest.raises(ValueError, match="no full global batch"):
        GlobalBatchSampler(3, 4)


@pytest.mark.parametrize("stop", [0, 1, 2, 3, 5])
def test_resume_mid_epoch_gives_the_same_remaining_order(stop):
    full = list(GlobalBatchSampler(23, 4, seed=3, epochs=3))
    s = GlobalBatchSampler(23, 4, seed=3, epochs=3)
    head = list(itertools.islice(iter(s), stop))
    state = s.state_dict()
    r = GlobalBatchSampler(23, 4, seed=3, epochs=3)
    r.load_state_dict(state)
    assert r.remaining_steps == len(full) - stop
    assert head + list(r) == full


def test_resume_refuses_a_different_setup():
    s = GlobalBatchSampler(20, 4, seed=3)
    next(iter(s))
    with pytest.raises(ValueError, match="mismatch on seed"):
        GlobalBatchSampler(20, 4, seed=4).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="mismatch on global_batch_size"):
        GlobalBatchSampler(20, 5, seed=3).load_state_dict(s.state_dict())


@pytest.mark.parametrize("dp", [1, 2, 3, 8])
@pytest.mark.parametrize("balanced", [False, True])
def test_dp_shards_partition_the_global_batch(dp, balanced):
    ids = [17, 3, 99, 42, 5, 8, 61, 2, 30, 11, 7]
    lengths = [5, 100, 7, 60, 3, 40, 20, 90, 1, 33, 8] if balanced else None
    shards = [shard_for_rank(ids, r, dp, lengths) for r in range(dp)]
    assert sorted(x for sh in shards for x in sh) == sorted(ids)
    for sh in shards:  # each share keeps the global order
        assert sh == [x for x in ids if x in sh]
    assert shards == [shard_for_rank(ids, r, dp, lengths) for r in range(dp)]
    if balanced and dp == 2:
        loads = [sum(lengths[ids.index(x)] for x in sh) for sh in shards]
        assert abs(loads[0] - loads[1]) <= max(lengths)
        assert loads == [183, 184] or loads == [184, 183]
    with pytest.raises(ValueError):
        shard_for_rank(ids, dp, dp)
