"""Tests of the training buffers (datamove.reservoir): semantics of each policy, statistics of the
random ones, counters, checkpoint round trip and argument errors."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from datamove.reservoir import (
    ON_FULL,
    POLICIES,
    BalancedBuffer,
    Batch,
    Buffer,
    Displaced,
    FifoBuffer,
    FiroBuffer,
    ReservoirBuffer,
    make_buffer,
)
from datamove.reservoir.base import RowCopier

X_DIM = 6
Y_SHAPE = (4, 3)
CONSUMING = ["fifo", "firo"]
REPLACING = ["reservoir", "balanced"]


def make(
    policy: str, *, capacity: int = 8, watermark: int = 4, seed: int = 0, on_full: str = "block"
) -> Buffer:
    return make_buffer(
        policy, capacity=capacity, watermark=watermark, x_dim=X_DIM, y_shape=Y_SHAPE, seed=seed,
        on_full=on_full,
    )


def put_id(buf: Buffer, i: int) -> Displaced | None:
    """Put sample number i: every value of x and y is i, member i, step 1000 + i."""
    return buf.put(
        torch.full((X_DIM,), float(i)), torch.full(Y_SHAPE, float(i)), member=i, step=1000 + i
    )


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
    assert POLICIES == {
        "reservoir": ReservoirBuffer, "fifo": FifoBuffer, "firo": FiroBuffer, "balanced": BalancedBuffer
    }
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
        ({"capacity": 4, "watermark": 2, "on_full": "discard"}, "on_full"),
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


@pytest.mark.parametrize("policy", REPLACING)
def test_replacing_buffer_never_exceeds_capacity_and_counts_evictions(policy):
    buf = make(policy, capacity=5, watermark=2)
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


@pytest.mark.parametrize("policy", REPLACING)
def test_replacing_buffer_samples_uniformly_with_replacement_and_counts_seen(policy):
    capacity = 10
    buf = make(policy, capacity=capacity, watermark=1, seed=11)
    for i in range(capacity):
        put_id(buf, i)
    drawn = torch.cat([buf.sample(32).member for _ in range(200)])
    counts = torch.bincount(drawn, minlength=capacity)
    assert chisquare(counts.numpy()).pvalue > 1e-3
    # Samples stay, and the seen counter of each is exactly how often it was drawn.
    assert len(buf) == capacity
    assert torch.equal(buf.seen_counts(), counts[buf.held().member])


@pytest.mark.parametrize("policy", REPLACING)
def test_seen_counts_sum_to_draws_when_all_samples_stay(policy):
    buf = make(policy, capacity=7, watermark=7, seed=5)
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


@pytest.mark.parametrize(
    ("policy", "on_full"),
    [(p, "block") for p in sorted(POLICIES)] + [(p, "drop_oldest") for p in CONSUMING],
)
def test_state_dict_round_trip_gives_identical_draws(policy, on_full, tmp_path):
    original = make(policy, capacity=6, watermark=2, seed=42, on_full=on_full)
    run_steps(original, 0, 25)  # fills, evicts or wraps the ring
    path = tmp_path / "buffer.pt"
    torch.save(original.state_dict(), path)
    expected = run_steps(original, 100, 40)  # the state saved must not follow the original

    restored = make(policy, capacity=6, watermark=2, seed=999, on_full=on_full)  # seed: from the state
    restored.load_state_dict(torch.load(path, weights_only=True))  # plain tensors and Python values
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


def put_member(buf: Buffer, member: int, step: int) -> Displaced | None:
    """Put a sample identified by (member, step); x and y hold 1000 * member + step."""
    v = float(1000 * member + step)
    return buf.put(torch.full((X_DIM,), v), torch.full(Y_SHAPE, v), member=member, step=step)


def test_balanced_round_trip_keeps_member_bookkeeping(tmp_path):
    def run(buf: Buffer, start: int) -> list:
        out = []
        for k in range(start, start + 60):
            out.append(put_member(buf, k % 3 + k // 20, k))  # members overlap, as concurrent solvers do
            if k % 4 == 0:
                out.append(buf.sample(3).member.tolist())
        return out

    original = make("balanced", capacity=7, watermark=1, seed=3)
    run(original, 0)
    torch.save(original.state_dict(), tmp_path / "b.pt")
    expected = run(original, 60)
    restored = make("balanced", capacity=7, watermark=1, seed=0)
    restored.load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True))
    assert run(restored, 60) == expected
    assert restored.stats() == original.stats()


def test_state_dict_of_a_cpu_buffer_does_not_copy_the_fields():
    """A checkpoint of a full reservoir must not double the trainer's memory."""
    buf = make("reservoir", capacity=4)
    for i in range(6):
        put_id(buf, i)
    state = buf.state_dict()
    assert state["x"].data_ptr() == buf._x.data_ptr() and state["y"].data_ptr() == buf._y.data_ptr()


def test_load_state_dict_rejects_mismatched_tensors():
    state = make("reservoir", capacity=6).state_dict()
    state["x"] = torch.zeros(5, X_DIM)
    with pytest.raises(ValueError, match="x"):
        make("reservoir", capacity=6).load_state_dict(state)


@pytest.mark.gpu
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_state_dict_moves_between_gpu_and_cpu(policy):
    gpu = make_buffer(policy, capacity=6, watermark=2, x_dim=X_DIM, y_shape=Y_SHAPE, seed=1, device="cuda")
    run_steps(gpu, 0, 25)
    cpu = make(policy, capacity=6, watermark=2)
    cpu.load_state_dict(gpu.state_dict())
    expected, got = run_steps(gpu, 100, 20), run_steps(cpu, 100, 20)
    for a, b in zip(expected, got):
        assert torch.equal(a.x.cpu(), b.x) and torch.equal(a.member, b.member)


# ---------------------------------------------------------------- accounting: every sample put is held, drawn or displaced


@pytest.mark.parametrize(
    ("policy", "on_full"),
    [(p, "block") for p in sorted(POLICIES)] + [(p, "drop_oldest") for p in CONSUMING],
)
def test_every_put_is_held_consumed_or_displaced(policy, on_full):
    """n_put = held + displaced (evicted, turned away or dropped) + consumed, and the Displaced
    values that put returns account for every displacement and every unseen one."""
    gen = torch.Generator().manual_seed(0)
    buf = make(policy, capacity=9, watermark=3, seed=2, on_full=on_full)
    displaced: list[Displaced] = []
    for k in range(400):
        if torch.rand(1, generator=gen) < 0.6 and buf.can_put():
            out = put_member(buf, int(torch.randint(5, (1,), generator=gen)), k)
            if out is not None:
                displaced.append(out)
        elif buf.ready():
            buf.sample(int(torch.randint(1, 6, (1,), generator=gen)))
    s = buf.stats()
    consumed = s["n_sampled"] if buf.consumes else 0
    assert s["n_put"] == len(buf) + s["n_evicted"] + s["n_dropped"] + consumed
    assert len(displaced) == s["n_evicted"] + s["n_dropped"]
    assert sum(d.reason == "dropped" for d in displaced) == s["n_dropped"]
    assert sum(d.seen == 0 and d.reason != "dropped" for d in displaced) == s["evicted_unseen"]
    if buf.consumes:
        assert all(d.seen == 0 for d in displaced)  # a held sample of a consuming buffer is unseen
    if on_full == "drop_oldest":
        assert s["n_dropped"] > 0
    elif not buf.replaces:
        assert not displaced  # blocking: nothing is ever lost


def test_put_returns_the_evicted_sample():
    buf = make("reservoir", capacity=2, watermark=1, seed=4)
    assert put_id(buf, 0) is None and put_id(buf, 1) is None  # not full: nothing leaves
    buf.sample(5)
    seen = dict(zip(buf.held_members().tolist(), buf.seen_counts().tolist()))
    out = put_id(buf, 2)
    assert out.reason == "evicted" and out.member in (0, 1)
    assert out.step == 1000 + out.member and out.seen == seen[out.member]
    assert 2 in buf.held_members().tolist() and out.member not in buf.held_members().tolist()


# ---------------------------------------------------------------- lossy mode: on_full="drop_oldest"


def test_fifo_drop_oldest_keeps_the_newest_in_order_and_counts_drops():
    buf = make("fifo", capacity=4, watermark=4, on_full="drop_oldest")
    outs = [put_id(buf, i) for i in range(10)]
    assert outs[:4] == [None] * 4
    assert [(d.member, d.seen, d.reason) for d in outs[4:]] == [(i, 0, "dropped") for i in range(6)]
    assert buf.held_members().tolist() == [6, 7, 8, 9]
    assert buf.sample(2).member.tolist() == [6, 7]  # still first in, first out
    put_id(buf, 10)
    put_id(buf, 11)
    put_id(buf, 12)  # full again: drops 8
    assert buf.sample(10).member.tolist() == [9, 10, 11, 12]
    stats = buf.stats()
    assert stats["n_dropped"] == 7 and stats["n_evicted"] == 0


def test_firo_drop_oldest_drops_the_earliest_arrival_held():
    buf = make("firo", capacity=5, watermark=1, seed=8, on_full="drop_oldest")
    for i in range(5):
        put_id(buf, i)
    taken = set(buf.sample(2).member.tolist())
    for i in range(5, 9):
        put_id(buf, i)  # 2 free slots, then 2 drops
    oldest_two = sorted(set(range(5)) - taken)[:2]
    assert buf.stats()["n_dropped"] == 2
    assert sorted(buf.held_members().tolist()) == sorted(set(range(9)) - taken - set(oldest_two))


@pytest.mark.parametrize("policy", REPLACING)
def test_on_full_does_not_change_a_replacing_policy(policy):
    a = make(policy, capacity=4, seed=1)
    b = make(policy, capacity=4, seed=1, on_full="drop_oldest")
    for i in range(20):
        assert put_id(a, i) == put_id(b, i)
    assert b.stats()["n_dropped"] == 0


# ---------------------------------------------------------------- expected seen counts (reservoir)


def test_reservoir_seen_counts_match_their_expectation():
    """Steady state, one put then one batch of B: a sample survives each put with probability
    1 - 1/C, so it stays for N ~ Geometric(1/C) batches (mean C) and is drawn Binomial(B, 1/C)
    times in each: E[seen at eviction] = B, P(seen = 0) = (q/C) / (1 - (1 - 1/C) q) with
    q = (1 - 1/C)^B."""
    capacity, batch = 20, 4
    buf = make("reservoir", capacity=capacity, watermark=1, seed=13)
    for i in range(capacity):
        put_id(buf, i)
    seen_at_eviction = []
    for i in range(capacity, capacity + 20_000):
        out = put_id(buf, i)
        seen_at_eviction.append(out.seen)
        buf.sample(batch)
    seen = torch.tensor(seen_at_eviction[2000:], dtype=torch.float64)  # past the initial transient
    # Var(seen) = B (1 - 1/C) + B^2 (1 - 1/C) ~ 19 here: a standard error of ~0.033 on 18,000.
    assert seen.mean().item() == pytest.approx(batch, abs=0.15)
    q = (1 - 1 / capacity) ** batch
    p_unseen = (q / capacity) / (1 - (1 - 1 / capacity) * q)
    assert (seen == 0).double().mean().item() == pytest.approx(p_unseen, abs=0.02)
    hist = buf.seen_histogram()
    assert int(hist.sum()) == capacity and int((hist * torch.arange(len(hist))).sum()) == int(buf.seen_counts().sum())


# ---------------------------------------------------------------- balanced


def stream_members(buf: Buffer, members: list[list[int]], steps: int, *, batch: int = 4) -> None:
    """Members stream in waves (each inner list runs concurrently), one batch every 4 puts (none
    if batch is 0)."""
    puts = 0
    for wave in members:
        for step in range(steps):
            for member in wave:
                put_member(buf, member, step)
                puts += 1
                if batch and puts % 4 == 0 and buf.ready():
                    buf.sample(batch)


@pytest.mark.parametrize("waves", [[[m] for m in range(10)], [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_gives_every_member_an_equal_share(waves, seed):
    buf = make("balanced", capacity=40, watermark=1, seed=seed)
    stream_members(buf, waves, steps=50)
    counts = torch.bincount(buf.held_members())
    n_members = sum(map(len, waves))
    assert len(counts) == n_members and len(buf) == 40
    assert counts.max() - counts.min() <= 1  # 40 slots over 10 or 12 members


def test_balanced_never_lets_a_member_grow_past_the_largest_once_full():
    gen = torch.Generator().manual_seed(5)
    buf = make("balanced", capacity=12, watermark=1, seed=5)
    largest = None
    for k in range(3000):
        out = put_member(buf, int(torch.randint(8, (1,), generator=gen)) + k // 500, k)
        if k % 3 == 0:
            buf.sample(2)
        if len(buf) == buf.capacity:
            now = int(torch.bincount(buf.held_members()).max())
            assert largest is None or now <= largest
            largest = now
        assert out is None or out.reason in ("evicted", "rejected")


def test_balanced_holds_a_uniform_sample_of_each_members_time_steps():
    """Reservoir sampling within a member: every step of every member is held equally often."""
    steps = 40
    hist = torch.zeros(steps)
    for seed in range(150):
        buf = make("balanced", capacity=20, watermark=1, seed=seed)
        stream_members(buf, [[m] for m in range(5)], steps=steps, batch=0)
        held = buf.held()
        hist += torch.bincount(held.step, minlength=steps)
    assert chisquare(hist.numpy()).pvalue > 1e-3


def test_balanced_mitigates_streaming_bias_where_reservoir_keeps_the_latest():
    """Members streamed one after another: random replacement keeps mostly the last members and
    their late steps; balanced keeps every member, over all its steps."""
    held = {}
    for policy in REPLACING:
        buf = make(policy, capacity=40, watermark=1, seed=0)
        stream_members(buf, [[m] for m in range(10)], steps=50)
        held[policy] = buf.stats()
    assert held["balanced"]["members_held"] == 10
    assert held["reservoir"]["members_held"] < 8
    assert abs(held["balanced"]["step_mean"] - 24.5) < abs(held["reservoir"]["step_mean"] - 24.5)


def test_balanced_turns_away_incoming_samples_as_unseen_evictions():
    buf = make("balanced", capacity=4, watermark=1, seed=0)
    outs = [put_member(buf, 0, s) for s in range(40)]  # one member: Algorithm R with k = 4
    rejected = [o for o in outs if o is not None and o.reason == "rejected"]
    assert rejected and all(o.member == 0 and o.seen == 0 for o in rejected)
    s = buf.stats()
    assert s["n_evicted"] == 36 and s["evicted_unseen"] == 36  # nothing drawn yet


# ---------------------------------------------------------------- statistics


def test_stats_describe_held_samples():
    buf = make("reservoir", capacity=6, watermark=1)
    assert buf.stats()["members_held"] == 0 and buf.stats()["step_mean"] == 0
    for member, step in [(1, 0), (1, 2), (4, 4), (7, 6)]:
        put_member(buf, member, step)
    s = buf.stats()
    assert s["members_held"] == 3 and s["step_mean"] == 3.0 and s["occupancy"] == 4 / 6
    assert buf.held_members().tolist() == [1, 1, 4, 7]
    assert set(s) == {
        "occupancy", "n_put", "n_evicted", "n_dropped", "n_sampled", "seen_mean", "seen_max",
        "evicted_unseen", "members_held", "step_mean",
    }


def test_config_schema_lists_every_registered_policy_and_on_full_mode():
    from datamove.config import StudyConfig, load_schema, validate_config

    res = load_schema()["properties"]["reservoir"]["properties"]
    assert set(res["policy"]["enum"]) == set(POLICIES)
    assert tuple(res["on_full"]["enum"]) == ON_FULL
    cfg = StudyConfig.from_dict(validate_config({"reservoir": {"policy": "balanced"}}))
    assert cfg.reservoir.policy == "balanced" and cfg.reservoir.on_full == "block"


@pytest.mark.parametrize("on_full", ["block", "drop_oldest"])
def test_fifo_never_permutes_its_ring(on_full):
    """The fifo fast path (slices of storage) relies on it."""
    gen = torch.Generator().manual_seed(1)
    buf = make("fifo", capacity=7, watermark=1, on_full=on_full)
    expected, i = [], 0
    for _ in range(300):
        if torch.rand(1, generator=gen) < 0.55 and buf.can_put():
            put_id(buf, i)
            i += 1
        elif len(buf):
            expected.append(buf.held_members()[: 3].tolist())
            assert buf.sample(3).member.tolist() == expected[-1]
    assert torch.equal(buf._ring, torch.arange(7))


def test_firo_removal_moves_no_field():
    """Removing from the middle swaps slot ids: every held sample stays in the slot it was put in."""
    buf = make("firo", capacity=6, watermark=1, seed=2)
    slot_of = {}
    for i in range(40):
        while buf.can_put():
            put_id(buf, i)
            slot_of[i] = int(buf._slots(torch.tensor(len(buf) - 1)))
            i += 100
        buf.sample(2)
        for member, slot in zip(buf.held_members().tolist(), buf._held_slots().tolist()):
            assert slot_of[member] == slot


@pytest.mark.parametrize("capacity", [40, 400])  # a batch of 8: a permutation, then subsets of draws
def test_firo_picks_uniform_subsets_of_distinct_positions(capacity):
    buf = make("firo", capacity=capacity, watermark=1, seed=6)
    counts = torch.zeros(capacity)
    for i in range(capacity):
        put_id(buf, i)
    for _ in range(4000):
        positions = buf._pick(8)
        assert len(positions.unique()) == 8
        counts += torch.bincount(positions, minlength=capacity)
    assert chisquare(counts.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("held", [6, 9])  # a batch of 2: randperm (4B >= len), then a stream of draws
def test_firo_picks_positions_in_uniform_order(held):
    """The drawn positions come in uniformly random order (a batch keeps it): every ordered pair is
    equally likely as the first two (a sorted or otherwise biased order fails)."""
    buf = make("firo", capacity=held, watermark=1, seed=5)
    for i in range(held):
        put_id(buf, i)
    counts = torch.zeros(held, held)
    for _ in range(8000):
        a, b = buf._pick(2).tolist()
        counts[a, b] += 1
    off_diagonal = counts[~torch.eye(held, dtype=torch.bool)]
    assert chisquare(off_diagonal.numpy()).pvalue > 1e-3


def test_firo_continues_a_stream_with_too_few_distinct_positions(monkeypatch):
    """A first stream of draws with fewer than B distinct positions (very unlikely) is continued,
    not replaced: the positions drawn first stay first in the batch."""
    buf = make("firo", capacity=40, watermark=1, seed=0)
    for i in range(40):
        put_id(buf, i)
    real_randint, calls = torch.randint, []

    def first_call_all_threes(*args, **kwargs):
        out = real_randint(*args, **kwargs)
        calls.append(out)
        return out.fill_(3) if len(calls) == 1 else out

    monkeypatch.setattr(torch, "randint", first_call_all_threes)
    batch = buf.sample(8)
    assert len(calls) >= 2
    members = batch.member.tolist()
    assert members[0] == 3 and len(set(members)) == 8
    assert sorted(buf.held_members().tolist()) == sorted(set(range(40)) - set(members))


def test_firo_draws_from_held_samples_that_wrap_around_storage():
    """Lossy drops move the ring's head, so the held positions wrap past the end of the ring."""
    buf = make("firo", capacity=7, watermark=1, seed=3, on_full="drop_oldest")
    for i in range(12):
        put_id(buf, i)  # 5 drops: head at 5, the held run wraps
    assert buf._head > 0
    drawn = []
    for size in (3, 1, 2):
        batch = buf.sample(size)
        check_consistent(batch)
        drawn += batch.member.tolist()
        assert sorted(buf._ring.tolist()) == list(range(7))  # still a permutation of the slots
    assert sorted(drawn + buf.held_members().tolist()) == list(range(5, 12))
    assert len(set(drawn)) == len(drawn) == 6


@pytest.mark.parametrize("held", [6, 40])
def test_firo_batch_is_the_picked_positions_in_order(held):
    """`sample` draws what `_pick` picks, in the same order, so `_pick`'s tests cover batches."""
    buf = make("firo", capacity=held, watermark=1, seed=4)
    for i in range(held):
        put_id(buf, i)
    before, state = buf.held_members(), buf._gen.get_state()
    positions = buf._pick(5)
    buf._gen.set_state(state)
    assert buf.sample(5).member.tolist() == before[positions].tolist()


# ---------------------------------------------------------------- put_many: a batch of puts


def samples(first: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Samples first..first+n-1 as put_id makes them (x and y hold the number, step 1000 + it), but
    of members drawn from 0..4 (so that balanced has members to balance and ties to break)."""
    ids = torch.arange(first, first + n)
    x = ids[:, None].float().expand(-1, X_DIM).contiguous()
    y = ids[:, None, None].float().expand(-1, *Y_SHAPE).contiguous()
    members = torch.randint(5, (n,), generator=gen).tolist()
    return x, y, members, (ids + 1000).tolist()


def check_rows(batch: Batch) -> None:
    """As check_consistent, for samples made by `samples` (whose member is not their number)."""
    ids = batch.step - 1000
    assert torch.equal(batch.x, ids[:, None].float().expand(-1, X_DIM))
    assert torch.equal(batch.y, ids[:, None, None].float().expand(-1, *Y_SHAPE))


def assert_same_state(a: dict, b: dict, where: str = "") -> None:
    """Two state_dicts are identical: every tensor equal, every other value equal."""
    assert a.keys() == b.keys(), where
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, dict):
            assert_same_state(va, vb, f"{where}.{key}")
        elif isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), f"{where}.{key}"
        else:
            assert va == vb, f"{where}.{key}: {va!r} != {vb!r}"


def unseen_by_member(displaced: list[Displaced]) -> Counter:
    """What a trainer's ledger derives from the Displaced: unseen displaced samples per member, reason."""
    return Counter((d.member, d.reason) for d in displaced if d.seen == 0)


def run_chunked(
    policy: str, on_full: str, seed: int, *, batched: bool, source: str = "fields"
) -> tuple[list, list[Displaced], int, Buffer]:
    """A random sequence of chunks of puts and draws, the same for a given seed whatever `batched`:
    each chunk is put with one put_many (batched) or one put per sample. Chunk sizes go from 1 to
    past the capacity, or exactly the room left (fills a blocking buffer), never past put_capacity().
    `source` (with `batched`): "fields", the chunk's fields as they are; "pool", in a larger pool,
    in another order, and put_many gathers them with y_rows (as the trainer's intake passes its
    shared-memory slots); "parts", the first field of each sample in one pool and the others in
    another, each in an order of its own, gathered with a y_rows each (as an autoregressive intake
    passes its kept inputs and its slots).

    Returns the record of each step (what the chunk displaced, or the batch drawn, with the seen
    counts and state_dict after it), every Displaced in order, how many of them had been put in
    the same chunk, and the buffer.
    """
    capacity = 7
    buf = make(policy, capacity=capacity, watermark=1, seed=seed, on_full=on_full)
    # torch.empty storage: rows never written hold whatever was in memory; zeroed, the two runs'
    # state_dicts compare bit for bit.
    buf._x.zero_()
    buf._y.zero_()
    gen = torch.Generator().manual_seed(1000 + seed)
    record, displaced, own, next_id = [], [], 0, 0
    for _ in range(60):
        room = min(buf.put_capacity(), 3 * capacity)
        if room and torch.rand(1, generator=gen) < 0.6:
            choice = int(torch.randint(4, (1,), generator=gen))
            n = (1, int(torch.randint(1, room + 1, (1,), generator=gen)), room, capacity + 2)[choice]
            x, y, members, steps = samples(next_id, min(n, room), gen)
            if batched and source == "pool":
                pool, rows = pool_of(y, torch.Generator().manual_seed(next_id))  # gen: as unpooled
                out = buf.put_many(x, pool, member=members, step=steps, y_rows=rows)
            elif batched and source == "parts":
                first, rows_a = pool_of(y[:, :1], torch.Generator().manual_seed(next_id))
                rest, rows_b = pool_of(y[:, 1:], torch.Generator().manual_seed(next_id + 500))
                out = buf.put_many(x, (first, rest), member=members, step=steps, y_rows=(rows_a, rows_b))
            elif batched:
                out = buf.put_many(x, y, member=members, step=steps)
            else:
                out = [buf.put(x[i], y[i], member=members[i], step=steps[i]) for i in range(len(members))]
                out = [d for d in out if d is not None]
            own += sum(d.step >= 1000 + next_id for d in out)
            next_id += len(members)
            displaced += out
            record.append(("put", out, buf.seen_counts(), buf.state_dict()))
        elif len(buf):
            batch = buf.sample(int(torch.randint(1, 5, (1,), generator=gen)))
            check_rows(batch)
            record.append(("draw", batch, buf.seen_counts(), buf.state_dict()))
    return record, displaced, own, buf


def pool_of(y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A pool of fields holding the rows of y among others (NaN), in random order: (pool, rows)
    with pool[rows] == y."""
    n = len(y)
    rows = torch.randperm(n + 5, generator=gen)[:n]
    pool = torch.full((n + 5, *y.shape[1:]), float("nan"))
    pool[rows] = y
    return pool, rows


MODES = [(p, m) for p in sorted(POLICIES) for m in ON_FULL]


@pytest.mark.parametrize(("policy", "on_full"), MODES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize(
    ("source", "loop_bytes"),
    [("fields", None), ("pool", None), ("pool", 0), ("parts", None), ("parts", 0)],
    ids=["fields", "pool", "pool-rowwise", "parts", "parts-rowwise"],
)
def test_put_many_is_put_one_by_one(policy, on_full, seed, source, loop_bytes, monkeypatch):
    """Chunks put with put_many (their fields given, or gathered from a pool with y_rows, or from
    two pools of parts of the fields) and the same chunks put one by one: the same Displaced, the
    same state (slots, ring, counters, seen counts, generator) after every step, the same batches,
    the same per-member accounting of unseen samples, and the same draws afterwards. "-rowwise":
    the gathered rows are copied one by one (as rows of RowCopier.LOOP_BYTES or more are), not
    gathered into staging memory first."""
    if loop_bytes is not None:
        monkeypatch.setattr(RowCopier, "LOOP_BYTES", loop_bytes)
    one, one_displaced, one_own, one_buf = run_chunked(policy, on_full, seed, batched=False)
    many, many_displaced, many_own, many_buf = run_chunked(policy, on_full, seed, batched=True, source=source)
    assert [r[0] for r in one] == [r[0] for r in many]
    for k, (a, b) in enumerate(zip(one, many)):
        if a[0] == "put":
            assert a[1] == b[1], f"step {k}"
        else:
            for ta, tb in zip(a[1], b[1]):
                assert torch.equal(ta, tb), f"step {k}"
        assert torch.equal(a[2], b[2]), f"step {k}"
        assert_same_state(a[3], b[3], f"step {k}")
    assert one_displaced == many_displaced
    assert unseen_by_member(one_displaced) == unseen_by_member(many_displaced)
    assert one_buf.stats() == many_buf.stats()
    for _ in range(3):  # the generators are in the same state: later draws agree
        if len(one_buf):
            for ta, tb in zip(one_buf.sample(2), many_buf.sample(2)):
                assert torch.equal(ta, tb)
    assert one_own == many_own
    if policy in REPLACING or on_full == "drop_oldest":
        assert many_own > 0  # chunks past the capacity: samples displaced by later ones of their chunk
    else:
        assert not many_displaced  # blocking: nothing is ever lost


@pytest.mark.parametrize("policy", CONSUMING)
def test_put_many_fills_a_blocking_buffer_exactly_and_refuses_more(policy):
    buf = make(policy, capacity=8, watermark=1)
    gen = torch.Generator().manual_seed(0)
    assert buf.put_capacity() == 8
    x, y, members, steps = samples(0, 3, gen)
    assert buf.put_many(x, y, member=members, step=steps) == []
    assert buf.put_capacity() == 5 and buf.can_put()
    state = buf.state_dict()
    x, y, members, steps = samples(3, 6, gen)
    with pytest.raises(RuntimeError, match="put_capacity"):
        buf.put_many(x, y, member=members, step=steps)  # 6 > 5: nothing is stored
    assert_same_state(buf.state_dict(), state)
    assert buf.put_many(x[:5], y[:5], member=members[:5], step=steps[:5]) == []  # exactly full
    assert len(buf) == 8 and buf.put_capacity() == 0 and not buf.can_put()
    with pytest.raises(RuntimeError, match="full"):
        buf.put_many(x[5:], y[5:], member=members[5:], step=steps[5:])
    with pytest.raises(RuntimeError, match="full"):
        put_id(buf, 99)
    batch = buf.sample(8)
    check_rows(batch)
    assert sorted(batch.step.tolist()) == list(range(1000, 1008))
    assert buf.put_capacity() == 8


@pytest.mark.parametrize(
    ("policy", "on_full"), [(p, "block") for p in REPLACING] + [(p, "drop_oldest") for p in sorted(POLICIES)]
)
def test_put_capacity_is_unlimited_when_the_buffer_never_refuses(policy, on_full):
    buf = make(policy, capacity=3, watermark=1, on_full=on_full)
    x, y, members, steps = samples(0, 10, torch.Generator().manual_seed(0))
    buf.put_many(x, y, member=members, step=steps)
    assert len(buf) == 3 and buf.put_capacity() == sys.maxsize and buf.can_put()


def test_put_many_past_the_capacity_reports_its_own_displaced_samples_unseen():
    """fifo with drop_oldest, 3 held, 10 put at once into a capacity of 4: the held ones and then
    the chunk's first 6 leave, in order, unseen; the chunk's last 4 are held, oldest first."""
    buf = make("fifo", capacity=4, watermark=1, on_full="drop_oldest")
    for i in range(3):
        put_id(buf, i)
    gen = torch.Generator().manual_seed(0)
    x, y, members, steps = samples(3, 10, gen)
    out = buf.put_many(x, y, member=members, step=steps)
    assert [(d.step, d.seen, d.reason) for d in out] == [(1000 + i, 0, "dropped") for i in range(9)]
    assert [d.member for d in out] == [0, 1, 2] + members[:6]
    assert buf.held().step.tolist() == [1009, 1010, 1011, 1012]
    assert torch.equal(buf.held().y[:, 0, 0], torch.tensor([9.0, 10.0, 11.0, 12.0]))
    assert buf.stats()["n_dropped"] == 9 and buf.stats()["n_put"] == 13


@pytest.mark.parametrize(("policy", "on_full"), MODES)
def test_put_many_copies_each_field_once_and_only_the_ones_kept(policy, on_full, monkeypatch):
    """One field copy per call (one `_copy_fields`: one assignment into the storage for x and one
    for y), of the samples held afterwards: a sample displaced by a later one of its own chunk is
    never copied."""
    buf = make(policy, capacity=5, watermark=1, seed=3, on_full=on_full)
    calls, real_copy = [], buf._copy_fields
    monkeypatch.setattr(buf, "_copy_fields", lambda *a: (calls.append(a), real_copy(*a)))
    gen = torch.Generator().manual_seed(1)
    first = 0
    for n in (2, 3, 4, 12, 1):  # fills, then displaces held samples and its own
        if n > buf.put_capacity():  # a blocking buffer: make room, and put no more than it takes
            buf.sample(len(buf))
            n = min(n, buf.put_capacity())
        calls.clear()
        x, y, members, steps = samples(first, n, gen)
        buf.put_many(x, y, member=members, step=steps)
        first += n
        if not calls:  # balanced turned every one away: nothing to copy
            continue
        assert len(calls) == 1
        _, _, slots, rows, _ = calls[0]
        copied = torch.arange(n) if rows is None else torch.from_numpy(rows)
        # What was copied is exactly what this chunk left held.
        held = buf.held()
        mine = held.step >= 1000 + first - n
        assert sorted((copied + first - n + 1000).tolist()) == sorted(held.step[mine].tolist())
        assert len(set(slots.tolist())) == len(slots)
        check_rows(held)


def test_put_many_takes_tensors_and_checks_its_arguments():
    buf = make("reservoir", capacity=4)
    x, y, members, steps = samples(0, 3, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="x"):
        buf.put_many(x[:, :-1], y, member=members, step=steps)
    with pytest.raises(ValueError, match="x"):
        buf.put_many(x[:2], y, member=members, step=steps)
    with pytest.raises(ValueError, match="y"):
        buf.put_many(x, y[:, :1], member=members, step=steps)
    with pytest.raises(ValueError, match="step"):
        buf.put_many(x, y, member=members, step=steps[:2])
    with pytest.raises(ValueError, match="member"):
        buf.put_many(x, y, member=[members], step=steps)
    assert len(buf) == 0 and buf.stats()["n_put"] == 0
    assert buf.put_many(x[:0], y[:0], member=[], step=[]) == []
    buf.put_many(x.double(), y.double(), member=torch.tensor(members), step=torch.tensor(steps))
    assert buf.held_members().tolist() == members
    check_rows(buf.held())


@pytest.mark.gpu
@pytest.mark.parametrize(("policy", "on_full"), MODES)
def test_put_many_from_pinned_memory_into_a_gpu_buffer_is_put_on_a_cpu_buffer(policy, on_full):
    gen = torch.Generator().manual_seed(4)
    gpu = make_buffer(
        policy, capacity=6, watermark=1, x_dim=X_DIM, y_shape=Y_SHAPE, seed=1, device="cuda", on_full=on_full
    )
    cpu = make(policy, capacity=6, watermark=1, seed=1, on_full=on_full)
    first = 0
    for n in (4, 2, 9, 3):
        n = min(n, gpu.put_capacity())
        x, y, members, steps = samples(first, n, gen)
        first += n
        got = gpu.put_many(x.pin_memory(), y.pin_memory(), member=members, step=steps)
        expected = [cpu.put(x[i], y[i], member=members[i], step=steps[i]) for i in range(n)]
        assert got == [d for d in expected if d is not None]
        a, b = gpu.sample(3), cpu.sample(3)
        assert torch.equal(a.x.cpu(), b.x) and torch.equal(a.y.cpu(), b.y)
        assert torch.equal(a.member, b.member) and torch.equal(a.step, b.step)


@pytest.mark.gpu
def test_put_many_of_parts_into_a_gpu_buffer_is_put_on_a_cpu_buffer():
    """Parts gathered from pinned pools into a GPU storage (one index_copy_ into each part's share
    of the field axis): the same samples as on the CPU."""
    gen = torch.Generator().manual_seed(5)
    gpu = make_buffer("fifo", capacity=6, watermark=1, x_dim=X_DIM, y_shape=Y_SHAPE, device="cuda")
    cpu = make("fifo", capacity=6, watermark=1)
    x, y, members, steps = samples(0, 5, gen)
    a, rows_a = pool_of(y[:, :1], torch.Generator().manual_seed(1))
    b, rows_b = pool_of(y[:, 1:], torch.Generator().manual_seed(2))
    gpu.put_many(x.pin_memory(), (a.pin_memory(), b.pin_memory()), member=members, step=steps, y_rows=(rows_a, rows_b))
    cpu.put_many(x, y, member=members, step=steps)
    got, expected = gpu.held(), cpu.held()
    assert torch.equal(got.x.cpu(), expected.x) and torch.equal(got.y.cpu(), expected.y)


@pytest.mark.parametrize("policy", CONSUMING)
def test_a_lossy_drop_swaps_the_oldest_to_the_front_and_reuses_its_slot(policy):
    """One put into a full drop_oldest buffer: the ring entry of the earliest arrival held swaps
    with the front entry, the head moves on one, and the new sample takes the dropped one's slot at
    the last position (what put did before put_many; firo's draws permute the ring, so the earliest
    arrival is often not in front)."""
    gen = torch.Generator().manual_seed(2)
    buf = make(policy, capacity=6, watermark=1, seed=2, on_full="drop_oldest")
    swaps, next_id = 0, 0
    for _ in range(200):
        if torch.rand(1, generator=gen) < 0.35 and len(buf):
            buf.sample(int(torch.randint(1, 3, (1,), generator=gen)))
            continue
        if len(buf) == buf.capacity:
            ring, head, held = buf._ring.clone(), buf._head, buf._held_slots()
            p = int(torch.argmin(buf._order[held]))
            dropped = buf.held().step[p].item()
            front, hole = head, (head + p) % buf.capacity
            ring[front], ring[hole] = ring[hole].clone(), ring[front].clone()
            swaps += p > 0
            assert put_id(buf, next_id).step == dropped
            assert torch.equal(buf._ring, ring) and buf._head == (head + 1) % buf.capacity
            assert int(buf._held_slots()[-1]) == int(held[p]) and buf.held().step[-1] == 1000 + next_id
        else:
            put_id(buf, next_id)
        next_id += 1
    assert swaps > 0 or policy == "fifo"


def test_reservoir_victim_is_the_generators_next_draw():
    """Each eviction replaces the held sample at position torch.randint(len, (1,)) of the buffer's
    generator, one draw per sample, also within a put_many (a checkpoint relies on the draws)."""
    buf = make("reservoir", capacity=5, watermark=1, seed=9)
    for i in range(5):
        put_id(buf, i)
    twin = torch.Generator()
    twin.set_state(buf._gen.get_state())
    expected = [int(torch.randint(5, (1,), generator=twin)) for _ in range(12)]
    x, y, members, steps = samples(5, 12, torch.Generator().manual_seed(0))
    buf.put_many(x, y, member=members, step=steps)
    held = buf.held().step.tolist()
    for position in range(5):
        last = max((j for j, p in enumerate(expected) if p == position), default=None)
        assert held[position] == (1000 + position if last is None else steps[last])
    assert torch.equal(buf._gen.get_state(), twin.get_state())


def test_balanced_counts_every_put_and_every_held_sample_per_member():
    """Its bookkeeping after puts and put_many: puts per member, held samples per member."""
    gen = torch.Generator().manual_seed(3)
    buf = make("balanced", capacity=6, watermark=1, seed=3)
    puts: Counter = Counter()
    next_id = 0
    for _ in range(60):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        x, y, members, steps = samples(next_id, n, gen)
        next_id += n
        if n % 2:
            buf.put_many(x, y, member=members, step=steps)
        else:
            for i in range(n):
                buf.put(x[i], y[i], member=members[i], step=steps[i])
        puts.update(members)
        if n % 3 == 0:
            buf.sample(2)
        ids = buf._ids
        assert dict(zip(ids, buf._puts_of[: len(ids)].tolist())) == puts
        held = Counter(buf.held_members().tolist())
        assert dict(zip(ids, buf._held_of[: len(ids)].tolist())) == {m: held.get(m, 0) for m in ids}


def test_put_many_gathers_from_a_pool_and_checks_its_rows():
    """y_rows: the fields of a pool [m, *y_shape] (numpy or torch, rows as a tensor, an array or a
    list); rows out of the pool or of the wrong length are refused before anything is stored."""
    buf = make("fifo", capacity=6)
    x, y, members, steps = samples(0, 3, torch.Generator().manual_seed(0))
    pool, rows = pool_of(y, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="y_rows"):
        buf.put_many(x, pool, member=members, step=steps, y_rows=[0, 1, len(pool)])
    with pytest.raises(ValueError, match="y_rows"):
        buf.put_many(x, pool, member=members, step=steps, y_rows=rows[:2])
    with pytest.raises(ValueError, match="y_rows"):
        buf.put_many(x, pool[:, :1], member=members, step=steps, y_rows=rows)
    assert len(buf) == 0
    assert buf.put_many(x, pool.numpy(), member=members, step=steps, y_rows=rows.numpy()) == []
    assert buf.put_many(x, pool, member=members, step=steps, y_rows=rows.tolist()) == []
    check_rows(buf.held())
    assert buf.held().step.tolist() == steps + steps


def test_put_many_gathers_parts_from_pools_and_checks_them():
    """y as parts along the field axis, each with its y_rows: a sample is its parts' rows
    concatenated, as a copy of large fields (rows of 16 KiB and more, copied one by one) and of
    small ones; parts that do not add up to a sample, rows of a part out of its pool or of the
    wrong length, and y_rows that are not one vector a part are refused before anything is
    stored."""
    for shape in ((3, 64, 64), (3, 2)):
        buf = make_buffer("fifo", capacity=6, watermark=1, x_dim=X_DIM, y_shape=shape)
        gen = torch.Generator().manual_seed(0)
        x, members, steps = torch.rand(4, X_DIM, generator=gen), [0, 1, 1, 2], [1, 2, 3, 4]
        y = torch.rand(4, *shape, generator=gen)
        a, rows_a = pool_of(y[:, :2], torch.Generator().manual_seed(1))
        b, rows_b = pool_of(y[:, 2:], torch.Generator().manual_seed(2))
        with pytest.raises(ValueError, match="add up"):
            buf.put_many(x, (a, b, b), member=members, step=steps, y_rows=(rows_a, rows_b, rows_b))
        with pytest.raises(ValueError, match=r"y\[1\]"):
            buf.put_many(x, (a, b[..., :1]), member=members, step=steps, y_rows=(rows_a, rows_b))
        with pytest.raises(ValueError, match=r"y_rows\[1\]"):
            buf.put_many(x, (a, b), member=members, step=steps, y_rows=(rows_a, rows_b[:3]))
        with pytest.raises(ValueError, match=r"y_rows\[0\] must be in"):
            buf.put_many(x, (a, b), member=members, step=steps, y_rows=(rows_a + len(a), rows_b))
        with pytest.raises(ValueError, match="y_rows must be a list or tuple"):
            buf.put_many(x, (a, b), member=members, step=steps, y_rows=rows_a)
        assert len(buf) == 0 and buf.stats()["n_put"] == 0
        assert buf.put_many(x, [a.numpy(), b], member=members, step=steps, y_rows=[rows_a.numpy(), rows_b]) == []
        held = buf.held()
        assert torch.equal(held.y, y) and torch.equal(held.x, x)
        assert held.step.tolist() == steps


def test_displacements_are_a_sequence_of_displaced():
    """put_many's Displacements: len, iteration, indexing and equality as a list of Displaced;
    unseen() the (member, reason) of those never drawn, in order."""
    buf = make("reservoir", capacity=3, watermark=1, seed=0)
    x, y, members, steps = samples(0, 3, torch.Generator().manual_seed(0))
    buf.put_many(x, y, member=members, step=steps)
    buf.sample(2)
    seen = dict(zip(buf.held().step.tolist(), buf.seen_counts().tolist()))
    x, y, members2, steps2 = samples(3, 4, torch.Generator().manual_seed(1))
    out = buf.put_many(x, y, member=members2, step=steps2)
    assert len(out) == 4 and list(out) == [out[i] for i in range(4)] and out == list(out)
    assert all(isinstance(d, Displaced) and d.reason == "evicted" for d in out)
    for d in out:
        assert d.seen == (seen.get(d.step, 0) if d.step < 1003 else 0)
    assert out.unseen() == [(d.member, d.reason) for d in out if d.seen == 0]
    assert buf.stats()["evicted_unseen"] == len(out.unseen())
    assert out != [] and buf.put_many(x[:0], y[:0], member=[], step=[]) == []
