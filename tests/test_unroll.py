"""Training for rollouts (issue 31), the model side: history and temporal bundling (trainer.history h,
trainer.bundle K), unrolled training with and without the pushforward trick (trainer.unroll n,
trainer.pushforward, the trainer.unroll_warmup curriculum), and rollouts that advance K steps a call.

Windows are cut by :class:`SampleSpec` (y [B, (h + n K) x n_fields, ny, nx], x [B, n_params + n]);
the feed and the offline dataset have tests of their own that they cut the same windows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from datamove.config import ConfigError, StudyConfig
from datamove.models import Surrogate
from datamove.problems.samples import SampleSpec
from datamove.training.rollout import one_step, rollout
from datamove.training.step import (
    build_surrogate,
    delta_scale,
    load_surrogate,
    make_optimizer,
    save_checkpoint,
    surrogate_args,
    train_step,
    unroll_now,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F = 2  # fields of a step
GRID = (4, 5)


def member(n_steps=12, seed=0):
    """One member: params [2], times [n_steps], fields [n_steps, F, ny, nx]."""
    g = torch.Generator().manual_seed(seed)
    return [0.3, 0.7], torch.arange(1, n_steps + 1) * 0.1, torch.rand((n_steps, F, *GRID), generator=g) * 10


# -- windows ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,K,n,s", [(1, 1, 1, 1), (2, 2, 2, 1), (1, 4, 2, 2), (3, 1, 2, 1)])
def test_member_windows_hold_the_steps_and_times_of_each_application(h, K, n, s):
    spec = SampleSpec.make("autoregressive", s, n_fields=F, history=h, bundle=K, unroll=n)
    params, times, fields = member(n_steps=20)
    x, y, last = spec.member_samples(params, times, fields)
    L = h + n * K
    assert spec.window == L and spec.span == (L - 1) * s
    assert len(last) == spec.samples_per_member(20) == 20 - (L - 1) * s
    assert y.shape == (len(last), *spec.stored_shape((F, *GRID))) == (len(last), L * F, *GRID)
    assert x.shape == (len(last), spec.x_dim(3)) == (len(last), 2 + n)
    for i, k in enumerate(last.tolist()):
        steps = [k - (L - 1 - j) * s for j in range(L)]
        assert torch.equal(y[i], fields[steps].flatten(0, 1))
        assert x[i, :2].tolist() == pytest.approx(params)
        # application j's time: that of its last input step, window position h - 1 + j K
        assert x[i, 2:].tolist() == pytest.approx([float(times[steps[h - 1 + j * K]]) for j in range(n)])
    inputs, targets = spec.split(y)
    assert inputs.shape[1] == h * F and targets.shape[1] == n * K * F


def test_the_pair_is_the_window_of_one_step_each():
    """h = K = n = 1 is today's pair: (params, t_k, fields_k) -> fields_k+s."""
    spec = SampleSpec.make("autoregressive", 2, n_fields=F)
    params, times, fields = member()
    x, y, last = spec.member_samples(params, times, fields)
    assert torch.equal(y, torch.cat([fields[:-2], fields[2:]], dim=1))
    assert torch.equal(x[:, -1], times[:-2].float()) and torch.equal(last, torch.arange(2, 12))


# -- the surrogate: shapes, delta, checkpoints -----------------------------------------------------------


def study(tiny_config, **trainer):
    return StudyConfig.load(tiny_config(
        solver={"nx": 8, "ny": 8, "n_steps": 20},
        trainer={"sample": "autoregressive", "slots": 64, **trainer},
    ))


def small_args(cfg, model: str, **kw) -> dict:
    """surrogate_args of ``cfg`` with a small ``model`` (tiny_config's model_args are fc's)."""
    margs = surrogate_args(cfg, norm_of(cfg), **kw)
    margs["model"] = model
    margs["model_args"] = {"fno": {"modes": 2, "width": 4, "layers": 1}, "unet": {"width": 4, "levels": 1},
                           "mppde": {"hidden": 8, "layers": 1}, "fc": {"hidden": 8, "layers": 1}}[model]
    return margs


def norm_of(cfg):
    ny, nx = cfg.problem.field_shape
    return cfg.problem.normalisation(times=np.ones(1), fields=np.zeros((1, 1, ny, nx)))


@pytest.mark.parametrize("model", ["fno", "unet", "mppde", "fc"])
def test_bundled_delta_surrogate_round_trips_through_a_checkpoint(model, tiny_config, tmp_path):
    cfg = study(tiny_config, history=2, bundle=3, unroll=2, target="delta")
    margs = small_args(cfg, model, delta=[0.25])
    assert (margs["history"], margs["bundle"]) == (2, 3)
    model_ = build_surrogate(margs)
    assert (model_.history, model_.bundle, model_.in_fields, model_.out_fields, model_.warmup) == (2, 3, 2, 3, 2)
    x, fields = torch.rand(5, cfg.problem.n_inputs), torch.rand(5, 2, 8, 8)
    out = model_(x, fields)
    assert out.shape == (5, 3, 8, 8)  # K steps of one field
    opt, _ = make_optimizer(model_, cfg)
    save_checkpoint(tmp_path / "m.pt", model=model_, optimizer=opt, model_args=margs, config=cfg.raw, step=0)
    loaded, _ = load_surrogate(tmp_path / "m.pt")
    assert (loaded.history, loaded.bundle, loaded.delta) == (2, 3, True)
    torch.testing.assert_close(loaded(x, fields), out)


def test_delta_targets_of_a_bundle_are_changes_from_the_last_input_step():
    """Each of the K predicted steps is the last input step plus its change on the delta scale."""

    class Zero(nn.Module):
        def forward(self, x, fields):
            return torch.zeros(fields.shape[0], 3 * F, *fields.shape[2:])

    model = Surrogate(network=Zero(), x_low=[0, 0, 0], x_high=[1, 1, 1], y_low=[0, 0], y_high=[10, 20],
                      in_fields=2 * F, stride=1, history=2, bundle=3, delta_scale=[0.5, 2.0])
    fields = torch.rand(4, 2 * F, *GRID)
    pred = model(torch.rand(4, 3), fields)
    assert torch.equal(pred, fields[:, F:].repeat(1, 3, 1, 1))  # a zero change: the last step, K times
    target = torch.rand(4, 3 * F, *GRID)
    want = model.network_target(fields, target)
    scale = torch.tensor([0.5, 2.0]).repeat(3).reshape(-1, 1, 1)
    torch.testing.assert_close(want, (target - fields[:, F:].repeat(1, 3, 1, 1)) / scale)


def test_delta_scale_is_the_change_over_one_stride_whatever_the_window(tiny_config):
    params, times, fields = member(n_steps=10)
    pair = SampleSpec.make("autoregressive", 1, n_fields=F)
    window = SampleSpec.make("autoregressive", 1, n_fields=F, history=2, bundle=2)

    class Norm:
        y_low, y_high = [0, 0], [10, 10]

    _, y_pair, _ = pair.member_samples(params, times, fields)
    _, y_win, _ = window.member_samples(params, times, fields)
    want = (fields[1:] - fields[:-1]).double().square().mean(dim=(0, 2, 3)).sqrt().tolist()
    assert delta_scale(y_pair, pair, Norm()) == pytest.approx(want)
    # windows end at steps 3..: their last pair is steps (k-1, k) for k >= 3
    want3 = (fields[3:] - fields[2:-1]).double().square().mean(dim=(0, 2, 3)).sqrt().tolist()
    assert delta_scale(y_win, window, Norm()) == pytest.approx(want3)


# -- unrolled training -----------------------------------------------------------------------------------


class Scale(nn.Module):
    """out = w * (last input step), K times: a model whose gradient paths are easy to follow."""

    def __init__(self, *, bundle=1):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.9))
        self.bundle = bundle
        self.calls: list[bool] = []  # whether each call's input required grad

    def forward(self, x, fields):
        self.calls.append(fields.requires_grad)
        last = fields[:, -F:]
        return (self.w * last).repeat(1, self.bundle, 1, 1)


def scale_model(*, history=1, bundle=1):
    return Surrogate(network=Scale(bundle=bundle), x_low=[0, 0, 0], x_high=[1, 1, 1], y_low=[0, 0], y_high=[1, 1],
                     in_fields=history * F, stride=1, history=history, bundle=bundle)


def windows(*, h=1, K=1, n=3, B=4):
    spec = SampleSpec.make("autoregressive", 1, n_fields=F, history=h, bundle=K, unroll=n)
    params, times, fields = member(n_steps=h + n * K + B - 1)
    x, y, _ = spec.member_samples(params, times, fields / 10)
    return x, y


def loss_of(model, x, y, *, unroll, pushforward):
    """The loss train_step minimises, with autograd kept (lr 0: the weights stay)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, opt, x, y, unroll=unroll, pushforward=pushforward)
    return model.network.w.grad.clone()


def test_pushforward_sends_no_gradient_through_the_earlier_applications():
    x, y = windows(n=3)
    model = scale_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, opt, x, y, pushforward=True)
    # three applications; only the last one was in the graph, and its input did not require grad
    assert model.network.calls == [False, False, False]
    g_push = model.network.w.grad.clone()
    # The pushforward gradient is that of the last application alone with its input held fixed:
    # d/dw mean((w * u2 - y3)^2) with u2 = w^2 u0 treated as a constant.
    w = float(model.network.w)
    u0, targets = y[:, :F], y[:, F:]
    u2 = (w**2) * u0
    y3 = targets[:, 2 * F : 3 * F]
    want = (2 * (w * u2 - y3) * u2).mean()
    torch.testing.assert_close(g_push, want.reshape(()), rtol=1e-4, atol=1e-6)

    model = scale_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, opt, x, y, pushforward=False)
    # Backpropagation through the unroll: the later inputs carry the graph of the earlier applications.
    assert model.network.calls == [False, True, True]
    g_bptt = model.network.w.grad.clone()
    w_t = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    u = u0.double()
    losses = []
    for j in range(3):
        u = w_t * u
        losses.append((u - targets[:, j * F : (j + 1) * F].double()).square().mean())
    torch.stack(losses).mean().backward()
    torch.testing.assert_close(g_bptt, w_t.grad.float(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(g_push, g_bptt)


def test_each_application_takes_the_last_h_steps_and_its_own_time():
    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(1.0))
            self.seen = []

        def forward(self, x, fields):
            self.seen.append((x.detach().clone(), fields.detach().clone()))
            return self.w * fields[:, -F:].repeat(1, 2, 1, 1) * 0 + self.w  # K = 2 steps of ones

    h, K, n = 2, 2, 3
    spec = SampleSpec.make("autoregressive", 1, n_fields=F, history=h, bundle=K, unroll=n)
    params, times, fields = member(n_steps=h + n * K)
    x, y, _ = spec.member_samples(params, times, fields / 10)
    model = Surrogate(network=Spy(), x_low=[0, 0, 0], x_high=[1, 1, 1], y_low=[0, 0], y_high=[1, 1],
                      in_fields=h * F, stride=1, history=h, bundle=K)
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y, pushforward=True)
    seen = model.network.seen
    assert len(seen) == n
    # application 0 takes the true steps 0 and 1; application 1 the last h = 2 of (0, 1, p2, p3): the
    # K = 2 predictions, all ones
    assert torch.equal(seen[0][1], y[:, : h * F])
    ones = torch.ones(1, K * F, *GRID)
    assert torch.equal(seen[1][1], ones.expand(1, -1, -1, -1)[:, -h * F :].expand_as(seen[1][1]))
    for j in range(n):
        # x: params (normalised over [0, 1]: unchanged) and application j's time
        assert seen[j][0][0, :2].tolist() == pytest.approx(params)
        assert float(seen[j][0][0, 2]) == pytest.approx(float(times[h - 1 + j * K]))


def test_a_curriculum_grows_the_unroll_over_the_warmup():
    assert [unroll_now(b, unroll=4, warmup=8) for b in range(10)] == [1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    assert [unroll_now(b, unroll=4, warmup=0) for b in range(3)] == [4, 4, 4]
    assert unroll_now(0, unroll=1, warmup=8) == 1
    x, y = windows(n=3)
    model = scale_model()
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y, unroll=1)
    assert len(model.network.calls) == 1  # the later steps of the window are unused in this batch
    with pytest.raises(ValueError, match="unroll 4"):
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y, unroll=4)


def test_unrolled_training_lowers_the_loss_of_a_real_model(tiny_config):
    cfg = study(tiny_config, history=2, bundle=2, unroll=2, target="delta")
    _, times, fields = member(n_steps=20)
    fields = fields[:, :1].repeat(1, 1, 2, 2)[:, :, :8, :8]  # heat: one field of 8 x 8
    spec = SampleSpec.of(cfg)
    x, y, _ = spec.member_samples([0.5] * (cfg.problem.n_inputs - 1), times, fields)
    model = build_surrogate(small_args(cfg, "unet", delta=[1.0]))
    opt, _ = make_optimizer(model, cfg)
    first = float(train_step(model, opt, x, y))
    for _ in range(30):
        last = float(train_step(model, opt, x, y))
    assert last < first


# -- rollouts ---------------------------------------------------------------------------------------------


class Shift(nn.Module):
    """A network of a known map on the normalised scale: the next step is 0.9 x the last one, plus t.
    Bundled: step i (1-based) of the bundle is 0.9^i x the last one plus t, the same as i single steps
    with the same t."""

    def __init__(self, bundle):
        super().__init__()
        self.bundle = bundle
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x, fields):
        last = fields[:, -F:]
        t = x[:, -1].reshape(-1, 1, 1, 1)
        steps, u = [], last
        for _ in range(self.bundle):
            u = 0.9 * u + 0.01 * t
            steps.append(u)
        return torch.cat(steps, dim=1) + self.anchor


def shift_model(bundle, history=1, stride=1):
    return Surrogate(network=Shift(bundle), x_low=[0, 0, 0], x_high=[1, 1, 1], y_low=[0, 0], y_high=[1, 1],
                     in_fields=history * F, stride=stride, history=history, bundle=bundle)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_bundled_rollout_equals_k_single_steps_of_a_model_that_predicts_the_same(stride):
    """With the same input time for every step of a bundle, K single steps and one call of K agree."""
    params, times, fields = member(n_steps=15)
    fields = fields / 10
    t0 = torch.full((15, 1), 0.5)  # one time for every step: a bundle's steps see the same t
    x = torch.cat([torch.tensor(params).expand(15, -1), t0], dim=1)
    single = rollout(shift_model(1, stride=stride), x, fields[:stride])
    for K in (2, 3, 4):
        bundled = rollout(shift_model(K, stride=stride), x, fields[:stride])
        torch.testing.assert_close(bundled, single)
    assert torch.equal(single[:stride], fields[:stride])
    # and it is a rollout: nothing of the true steps after the first reaches it
    changed = fields.clone()
    changed[stride:] = 0
    torch.testing.assert_close(rollout(shift_model(3, stride=stride), x, changed[:stride]), single)


def test_a_rollout_with_history_starts_from_h_true_steps_and_one_step_uses_the_true_history():
    params, times, fields = member(n_steps=10)
    fields = fields / 10
    x = torch.cat([torch.tensor(params).expand(10, -1), times.reshape(-1, 1)], dim=1)
    model = shift_model(2, history=3)
    assert model.warmup == 3
    out = rollout(model, x, fields[:3])
    assert out.shape == fields.shape and torch.equal(out[:3], fields[:3])
    # step 3 from step 2 (true), at step 2's time
    torch.testing.assert_close(out[3], 0.9 * fields[2] + 0.01 * x[2, -1])
    torch.testing.assert_close(out[4], 0.9 * out[3] + 0.01 * x[2, -1])  # the bundle's second step: same t
    torch.testing.assert_close(out[5], 0.9 * out[4] + 0.01 * x[4, -1])  # the next call: from step 4's time
    one = one_step(model, x, fields)
    assert one.shape == (7, F, *GRID)
    torch.testing.assert_close(one, 0.9 * fields[2:-1] + 0.01 * x[2:-1, -1].reshape(-1, 1, 1, 1))


# -- the config -----------------------------------------------------------------------------------------


def test_window_keys_are_checked_before_anything_runs(tiny_config):
    cfg = StudyConfig.load(tiny_config())
    assert (cfg.trainer.history, cfg.trainer.bundle, cfg.trainer.unroll, cfg.trainer.pushforward,
            cfg.trainer.unroll_warmup) == (1, 1, 1, True, 0)
    with pytest.raises(ConfigError, match=r"trainer\.bundle.*autoregressive"):
        StudyConfig.load(tiny_config(trainer={"bundle": 2}))
    with pytest.raises(ConfigError, match=r"trainer\.history"):
        StudyConfig.load(tiny_config(trainer={"history": 2}))
    with pytest.raises(ConfigError, match=r"trainer\.unroll"):
        StudyConfig.load(tiny_config(trainer={"sample": "autoregressive", "unroll": 0}))
    # tiny_config members have 20 steps: a window of 1 + 5 x 4 = 21 steps does not fit; 20 would
    with pytest.raises(ConfigError, match=r"trainer\.unroll.*21 steps.*at most 20 steps fit"):
        StudyConfig.load(tiny_config(trainer={"sample": "autoregressive", "bundle": 4, "unroll": 5, "slots": 64}))
    with pytest.raises(ConfigError, match=r"trainer\.slots.*keep a member's last 5 steps.*set trainer\.slots to 12"):
        StudyConfig.load(tiny_config(trainer={"sample": "autoregressive", "history": 2, "bundle": 2, "unroll": 2,
                                              "ingest_workers": 2, "slots": 8}))
    cfg = StudyConfig.load(tiny_config(trainer={"sample": "autoregressive", "history": 2, "bundle": 2, "unroll": 2,
                                                "ingest_workers": 2, "slots": 12}))
    assert SampleSpec.of(cfg).window == 6
