"""Tests of the training buffers (datamove.reservoir): semantics of each policy, statistics of the
random ones, counters, checkpoint round trip and argument errors."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from datamove.reservoir import (
    POLICIES,
    Batch,
    Buffer,
    FifoBuffer,
    FiroBuffer,
    ReservoirBuffer,
    make_buffer,
)

X_DIM = 6
Y_SHAPE = (4, 3)
CONSUMING = ["fifo", "firo"]


def make(policy: str, *, capacity: int = 8, watermark: int = 4, seed: int = 0) -> Buffer:
    return make_buffer(
        policy, capacity=capacity, watermark=watermark, x_dim=X_DIM, y_shape=Y_SHAPE, seed=seed
    )


def put_id(buf: Buffer, i: int) -> None:
    """Put sample number i: every value of x and y is i, member i, step 1000 + i."""
    buf.put(torch.full((X_DIM,), float(i)), torch.full(Y_SHAPE, float(i)), member=i, step=1000 + i)


def check_consistent(batch: Batch) -> None:
    """Each row of a batch must hold x, y, member and step of one and the same sample."""
    ids = batch.member
    assert batch.x.shape == (len(ids), X_DIM) and batch.y.shape == (len(ids), *Y_SHAPE)
    assert torch.equal(batch.x, ids[:, None].float().expand(-1, X_DIM))
    assert torch.equal(batch.y, ids[:, None, None].float().expand(-1, *Y_SHAPE))
    assert torch.equal(batch.step, ids + 1000)
    assert batch.member.dtype == batch.step.dtype == torch.int64


def train_loop(buf: Buffer, n_samples: int, batch_size: int) -> list[Batch]:
    """The trainer's loop: take samples while the buffer accepts them, train whenever ready."""
    batches, next_id = [], 0
    while True:
        while next_id < n_samples and buf.can_put():
            put_id(buf, next_id)
            next_id += 1
        ended = next_id == n_samples
        if buf.ready(final=ended):
            batches.append(buf.sample(batch_size))
        elif ended:
            return batches
        else:  # pragma: no cover - would be a deadlock: full but not ready
            raise AssertionError("buffer neither accepts samples nor is ready")


# ---------------------------------------------------------------- registry and arguments


def test_registry_names_match_classes():
    assert POLICIES == {"reservoir": ReservoirBuffer, "fifo": FifoBuffer, "firo": FiroBuffer}
    for name, cls in POLICIES.items():
        buf = make(name)
        assert type(buf) is cls and buf.name == name


def test_make_buffer_unknown_policy_lists_known_ones():
    with pytest.raises(ValueError, match="nope") as err:
        make("nope")
    for name in POLICIES:
        assert name in str(err.value)


def test_buffer_is_abstract():
    with pytest.raises(TypeError):
        Buffer(capacity=2, watermark=1, x_dim=X_DIM, y_shape=Y_SHAPE)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"capacity": 0, "watermark": 1}, "capacity"),
        ({"capacity": 4, "watermark": 0}, "watermark"),
        ({"capacity": 4, "watermark": 5}, "watermark"),
        ({"capacity": 4, "watermark": 2, "x_dim": 0}, "x_dim"),
        ({"capacity": 4, "watermark": 2, "y_shape": (4, 0)}, "y_shape"),
    ],
)
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_bad_constructor_arguments_are_named(policy, kwargs, argument):
    kwargs = {"x_dim": X_DIM, "y_shape": Y_SHAPE, **kwargs}
    with pytest.raises(ValueError, match=argument):
        make_buffer(policy, **kwargs)


def test_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        ReservoirBuffer(4, 2, X_DIM, Y_SHAPE)  # type: ignore[misc]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_bad_put_and_sample_arguments_are_named(policy):
    buf = make(policy)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(2)
    with pytest.raises(ValueError, match="x"):
        buf.put(torch.zeros(X_DIM + 1), torch.zeros(Y_SHAPE), member=0, step=0)
    with pytest.raises(ValueError, match="y"):
        buf.put(torch.zeros(X_DIM), torch.zeros(3, 4), member=0, step=0)
    assert len(buf) == 0
    put_id(buf, 0)
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0)


# ---------------------------------------------------------------- ready / watermark


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_ready_follows_watermark_and_final(policy):
    buf = make(policy, capacity=5, watermark=3)
    assert not buf.ready() and not buf.ready(final=True)  # nothing to train on, even at the end
    put_id(buf, 0)
    put_id(buf, 1)
    assert not buf.ready()
    assert buf.ready(final=True)  # streams ended: drain what is left
    put_id(buf, 2)
    assert buf.ready() and buf.ready(final=True)


# ---------------------------------------------------------------- fifo and firo


def test_fifo_returns_arrival_order_each_sample_once():
    buf = make("fifo", capacity=8, watermark=4)
    batches = train_loop(buf, n_samples=53, batch_size=3)
    for batch in batches:
        check_consistent(batch)
    assert torch.equal(torch.cat([b.member for b in batches]), torch.arange(53))
    assert len(buf) == 0
    stats = buf.stats()
    assert stats["n_put"] == stats["n_sampled"] == 53
    assert stats["n_evicted"] == stats["evicted_unseen"] == 0


def test_fifo_pops_oldest_across_ring_wraparound():
    buf = make("fifo", capacity=4, watermark=1)
    for i in range(3):
        put_id(buf, i)
    assert buf.sample(2).member.tolist() == [0, 1]
    for i in range(3, 6):  # slots 3, 0, 1: the ring wraps
        put_id(buf, i)
    assert buf.held().member.tolist() == [2, 3, 4, 5]
    assert buf.sample(10).member.tolist() == [2, 3, 4, 5]  # min(B, len)
    assert len(buf) == 0


@pytest.mark.parametrize("policy", CONSUMING)
def test_consuming_buffer_applies_backpressure_when_full(policy):
    buf = make(policy, capacity=3, watermark=3)
    for i in range(3):
        assert buf.can_put()
        put_id(buf, i)
    assert not buf.can_put()
    with pytest.raises(RuntimeError, match="full"):
        put_id(buf, 3)
    assert len(buf) == 3 and buf.stats()["n_put"] == 3  # refused, not dropped
    buf.sample(1)
    assert buf.can_put()


def test_firo_uses_each_sample_once_in_random_order():
    buf = make("firo", capacity=8, watermark=4, seed=3)
    batches = train_loop(buf, n_samples=53, batch_size=3)
    for batch in batches:
        check_consistent(batch)
    order = torch.cat([b.member for b in batches])
    assert sorted(order.tolist()) == list(range(53))
    assert not torch.equal(order, torch.arange(53))
    assert buf.stats()["n_evicted"] == 0


def test_firo_batches_are_uniform_over_held_samples():
    counts = torch.zeros(6)
    buf = make("firo", capacity=6, watermark=6, seed=1)
    for _ in range(3000):
        for i in range(6):
            put_id(buf, i)
        counts += torch.bincount(buf.sample(2).member, minlength=6)
        buf.sample(6)  # drain
    assert chisquare(counts.numpy()).pvalue > 1e-3


# ---------------------------------------------------------------- reservoir


def test_reservoir_never_exceeds_capacity_and_counts_evictions():
    buf = make("reservoir", capacity=5, watermark=2)
    for i in range(40):
        assert buf.can_put()
        put_id(buf, i)
        assert len(buf) == min(i + 1, 5)
        if i % 3 == 0:
            check_consistent(buf.sample(4))
    stats = buf.stats()
    assert stats["occupancy"] == 1.0
    assert stats["n_put"] == 40 and stats["n_evicted"] == 35
    assert len(buf.held().member.unique()) == 5


def test_reservoir_replaces_a_uniformly_chosen_slot():
    capacity = 10
    buf = make("reservoir", capacity=capacity, watermark=1, seed=7)
    for i in range(capacity):
        put_id(buf, i)
    counts = torch.zeros(capacity)
    for i in range(capacity, capacity + 3000):
        put_id(buf, i)
        (position,) = (buf.held().member == i).nonzero()[0]
        counts[position] += 1
    assert chisquare(counts.numpy()).pvalue > 1e-3


def test_reservoir_samples_uniformly_with_replacement_and_counts_seen():
    capacity = 10
    buf = make("reservoir", capacity=capacity, watermark=1, seed=11)
    for i in range(capacity):
        put_id(buf, i)
    drawn = torch.cat([buf.sample(32).member for _ in range(200)])
    counts = torch.bincount(drawn, minlength=capacity)
    assert chisquare(counts.numpy()).pvalue > 1e-3
    # Samples stay, and the seen counter of each is exactly how often it was drawn.
    assert len(buf) == capacity
    assert torch.equal(buf.seen_counts(), counts[buf.held().member])


def test_seen_counts_sum_to_draws_when_all_samples_stay():
    buf = make("reservoir", capacity=7, watermark=7, seed=5)
    for i in range(7):
        put_id(buf, i)
    sizes = [1, 5, 7, 16, 3]
    for b in sizes:
        buf.sample(b)
    seen = buf.seen_counts()
    stats = buf.stats()
    assert int(seen.sum()) == sum(sizes) == stats["n_sampled"]
    assert stats["seen_mean"] == pytest.approx(stats["n_sampled"] / len(buf))
    assert stats["seen_max"] == int(seen.max())


def test_evicted_unseen_counts_samples_never_drawn():
    buf = make("reservoir", capacity=1, watermark=1)
    put_id(buf, 0)
    put_id(buf, 1)  # evicts 0, never drawn
    assert buf.sample(3).member.tolist() == [1, 1, 1]
    assert buf.seen_counts().tolist() == [3]
    put_id(buf, 2)  # evicts 1, drawn 3 times
    stats = buf.stats()
    assert stats["n_evicted"] == 2 and stats["evicted_unseen"] == 1
    assert buf.seen_counts().tolist() == [0]  # a new sample starts unseen


def test_batches_are_copies_of_storage():
    buf = make("reservoir", capacity=1, watermark=1)
    put_id(buf, 0)
    batch = buf.sample(2)
    put_id(buf, 1)  # overwrites the only slot
    check_consistent(batch)
    assert batch.member.tolist() == [0, 0]


# ---------------------------------------------------------------- checkpoints


def run_steps(buf: Buffer, start: int, n: int) -> list[Batch]:
    """A fixed, policy-agnostic sequence of puts and draws."""
    batches = []
    for i in range(start, start + n):
        if buf.can_put():
            put_id(buf, i)
        if i % 2 and buf.ready():
            batches.append(buf.sample(3))
    return batches


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_state_dict_round_trip_gives_identical_draws(policy, tmp_path):
    original = make(policy, capacity=6, watermark=2, seed=42)
    run_steps(original, 0, 25)  # fills, evicts or wraps the ring
    path = tmp_path / "buffer.pt"
    torch.save(original.state_dict(), path)
    expected = run_steps(original, 100, 40)  # the state saved must not follow the original

    restored = make(policy, capacity=6, watermark=2, seed=999)  # seed comes from the state
    restored.load_state_dict(torch.load(path))
    got = run_steps(restored, 100, 40)

    assert len(got) == len(expected) > 0
    for a, b in zip(expected, got):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)
    assert restored.stats() == original.stats()
    assert torch.equal(restored.seen_counts(), original.seen_counts())
    assert torch.equal(restored.held().x, original.held().x)


def test_load_state_dict_rejects_other_policy_or_geometry():
    state = make("reservoir", capacity=6).state_dict()
    with pytest.raises(ValueError, match="policy"):
        make("fifo", capacity=6).load_state_dict(state)
    with pytest.raises(ValueError, match="capacity"):
        make("reservoir", capacity=7).load_state_dict(state)
