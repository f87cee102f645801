"""A buffer of windows (``window = L``) stores each step once: it must hold, draw, displace and
checkpoint exactly what a buffer storing each window whole does, while its step store holds each
distinct step of its held windows once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamove.reservoir import make_buffer

F, NY, NX = 2, 3, 4  # fields of a step, grid
L = 3  # steps a window


def _stream(n_members: int, n_steps: int, seed: int):
    """Steps arriving from several members, interleaved: (member, step, key, fields [F, NY, NX])."""
    rng = np.random.default_rng(seed)
    order = []
    next_step = dict.fromkeys(range(n_members), 1)
    while next_step:
        m = int(rng.choice(sorted(next_step)))
        order.append((m, next_step[m]))
        next_step[m] += 1
        if next_step[m] > n_steps:
            del next_step[m]
    return [(m, k, key, rng.standard_normal((F, NY, NX)).astype(np.float32)) for key, (m, k) in enumerate(order)]


def _windows(stream):
    """Each step that ends a window of L consecutive steps of its member: (member, step, the L keys,
    the L pool rows), in arrival order. The pool: every step's fields, by key."""
    seen: dict[tuple[int, int], int] = {}
    out = []
    for m, k, key, _ in stream:
        seen[(m, k)] = key
        if k >= L:
            keys = [seen[(m, k - L + 1 + j)] for j in range(L)]
            out.append((m, k, keys))
    return out


def _buffers(policy: str, on_full: str, capacity: int = 7):
    kwargs = dict(capacity=capacity, watermark=1, x_dim=2, y_shape=(L * F, NY, NX), seed=5, on_full=on_full)
    return make_buffer(policy, **kwargs), make_buffer(policy, window=L, **kwargs)


def _put(buf, pool: torch.Tensor, chunk, *, keyed: bool):
    member = [m for m, _, _ in chunk]
    step = [k for _, k, _ in chunk]
    rows = np.array([keys for _, _, keys in chunk], dtype=np.int64)  # pool row = key
    x = torch.tensor([[m, k] for m, k in zip(member, step)], dtype=torch.float32)
    return buf.put_many(x, (pool,) * L, member=member, step=step, y_rows=tuple(rows.T),
                        y_keys=tuple(rows.T) if keyed else None)


def _same(a, b):
    for field in ("x", "y", "member", "step"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def _distinct_held_steps(buf) -> int:
    return len(np.unique(buf._refs_np[buf._held_slots().numpy()]))


@pytest.mark.parametrize(("policy", "on_full"), [
    ("reservoir", "block"), ("fifo", "block"), ("fifo", "drop_oldest"), ("firo", "drop_oldest"), ("balanced", "block"),
])
def test_a_buffer_of_windows_holds_and_draws_what_a_buffer_of_whole_windows_does(policy, on_full):
    stream = _stream(n_members=4, n_steps=12, seed=1)
    pool = torch.from_numpy(np.stack([fields for *_, fields in stream]))  # [keys, F, NY, NX]: row = key
    windows = _windows(stream)
    whole, shared = _buffers(policy, on_full)
    rng = np.random.default_rng(2)
    i = 0
    while i < len(windows):
        n = int(rng.integers(1, 6))
        if whole.put_capacity() < n:  # a blocking buffer: draw first, as the trainer would
            _same(whole.sample(3), shared.sample(3))
            continue
        chunk = windows[i : i + n]
        i += n
        assert _put(whole, pool, chunk, keyed=False) == _put(shared, pool, chunk, keyed=True)
        assert len(whole) == len(shared)
        _same(whole.held(), shared.held())
        # Each distinct step of the held windows is held once, and nothing else is (after a sweep).
        shared._sweep()
        assert len(shared._store_key) - len(shared._free) == _distinct_held_steps(shared)
        if rng.random() < 0.5:
            _same(whole.sample(4), shared.sample(4))
    assert whole.stats() == shared.stats()


def test_windows_sharing_steps_store_them_once_and_the_store_reuses_freed_entries():
    """Windows of one member, one step apart, share L - 1 steps: a full reservoir of them holds
    capacity + L - 1 steps, not capacity x L; entries of windows evicted are reused, so the store
    never hands out more than it held plus a sweep's worth."""
    stream = _stream(n_members=1, n_steps=400, seed=3)
    pool = torch.from_numpy(np.stack([fields for *_, fields in stream]))
    windows = _windows(stream)
    capacity = 20
    _, shared = _buffers("fifo", "drop_oldest", capacity=capacity)
    highest = 0
    for start in range(0, len(windows), 4):
        _put(shared, pool, windows[start : start + 4], keyed=True)
        highest = max(highest, int(shared._refs_np.max()))
    shared._sweep()
    assert _distinct_held_steps(shared) == capacity + L - 1
    assert len(shared._store_key) - len(shared._free) == capacity + L - 1
    assert highest < 2 * capacity + 2 * L  # the store has capacity x L = 60 entries: freed ones are reused
    # And the fields held are the windows' own.
    held = shared.held()
    for j in range(len(held.step)):
        k = int(held.step[j])
        expected = np.concatenate([stream[k - L + p][3] for p in range(L)])  # one member: key = step - 1
        np.testing.assert_array_equal(held.y[j].numpy(), expected)


def test_a_buffer_of_windows_resumes_from_its_state_with_a_new_numbering_of_keys():
    """A checkpoint's buffer of windows, loaded into a new one: the same draws, and a new feed's keys
    (which start again from 0) never refer to the steps of the old numbering."""
    stream = _stream(n_members=3, n_steps=10, seed=4)
    pool = torch.from_numpy(np.stack([fields for *_, fields in stream]))
    windows = _windows(stream)
    whole, shared = _buffers("reservoir", "block", capacity=6)
    for start in range(0, len(windows), 3):
        _put(whole, pool, windows[start : start + 3], keyed=False)
        _put(shared, pool, windows[start : start + 3], keyed=True)
    state = shared.state_dict()
    assert "y" not in state and state["window"] == L
    _, resumed = _buffers("reservoir", "block", capacity=6)
    resumed.load_state_dict(state)
    _same(whole.held(), resumed.held())
    # A new feed numbers its steps from 0 again: key 0 is now another step's fields.
    fresh = torch.full((1, F, NY, NX), 7.0)
    x = torch.zeros(1, 2)
    for buf, keyed in ((whole, False), (resumed, True)):
        buf.put_many(x, (fresh,) * L, member=[9], step=[3], y_rows=([0],) * L,
                     y_keys=([0], [1], [2]) if keyed else None)
    _same(whole.held(), resumed.held())
    with pytest.raises(ValueError, match="window is 1, this buffer has 3"):
        resumed.load_state_dict(whole.state_dict())


def test_bad_keys_are_refused_naming_what_is_wrong():
    whole, shared = _buffers("reservoir", "block")
    pool = torch.zeros(4, F, NY, NX)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="y_keys is for a buffer of windows"):
        whole.put_many(x, (pool,) * L, member=[0, 0], step=[3, 4], y_rows=([0, 1],) * L, y_keys=([0, 1],) * L)
    with pytest.raises(ValueError, match=r"y_keys\[1\] must have length n = len\(member\) = 2"):
        shared.put_many(x, (pool,) * L, member=[0, 0], step=[3, 4], y_rows=([0, 1],) * L,
                        y_keys=([0, 1], [0], [1, 2]))
    with pytest.raises(ValueError, match="window = 3 parts of 2 fields"):
        shared.put_many(x, torch.zeros(2, L * F, NY, NX), member=[0, 0], step=[3, 4], y_keys=([0, 1],) * L)
    with pytest.raises(ValueError, match="window must be >= 1 and divide"):
        make_buffer("reservoir", capacity=2, watermark=1, x_dim=2, y_shape=(5, NY, NX), window=3)
    # Without keys, any layout of y is taken (each window's steps copied, never shared).
    shared.put_many(x, torch.arange(2 * L * F * NY * NX, dtype=torch.float32).reshape(2, L * F, NY, NX),
                    member=[0, 0], step=[3, 4])
    assert torch.equal(shared.held().y, torch.arange(2 * L * F * NY * NX, dtype=torch.float32).reshape(2, L * F, NY, NX))


@pytest.mark.gpu
@pytest.mark.parametrize("policy", ["reservoir", "firo"])
def test_a_buffer_of_windows_on_a_gpu_draws_what_one_of_whole_windows_on_the_cpu_does(policy):
    stream = _stream(n_members=3, n_steps=12, seed=6)
    pool = torch.from_numpy(np.stack([fields for *_, fields in stream]))
    windows = _windows(stream)
    kwargs = dict(capacity=7, watermark=1, x_dim=2, y_shape=(L * F, NY, NX), seed=5, on_full="drop_oldest")
    whole, shared = make_buffer(policy, **kwargs), make_buffer(policy, window=L, device="cuda", **kwargs)
    for start in range(0, len(windows), 4):
        chunk = windows[start : start + 4]
        assert _put(whole, pool, chunk, keyed=False) == _put(shared, pool, chunk, keyed=True)
        a, b = whole.sample(3), shared.sample(3)
        assert b.y.device.type == "cuda"
        for field in ("x", "y", "member", "step"):
            assert torch.equal(getattr(a, field), getattr(b, field).cpu()), field
