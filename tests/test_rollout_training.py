"""Training for rollouts (issue 31): delta targets (trainer.target) and input noise (trainer.input_noise),
in the shared surrogate and train step, so online and offline training get them alike."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from datamove.config import ConfigError, StudyConfig
from datamove.data import load_members
from datamove.evaluation.errors import evaluate_members, rollout
from datamove.models import Surrogate
from datamove.problems import Normalisation
from datamove.problems.samples import SampleSpec
from datamove.training.step import (
    build_surrogate,
    delta_scale,
    evaluate,
    load_surrogate,
    make_optimizer,
    save_checkpoint,
    surrogate_args,
    train_step,
)


# Small models train fastest in one thread (and do not contend with the processes beside them).
pytestmark = pytest.mark.usefixtures("one_thread")


def ar_config(tiny_config, name="config.yaml", **trainer):
    """A tiny heat study of autoregressive pairs (stride 1) with a small fc network."""
    path = tiny_config(name, trainer={"sample": "autoregressive", "sample_stride": 1, **trainer},
                       stream={"engine": "BP5"}, test={"n_members": 2},
                       offline={"loader_workers": 0, "reader": "memory"})
    return path


def heat_norm(cfg) -> Normalisation:
    ny, nx = cfg.problem.field_shape
    return cfg.problem.normalisation(times=np.ones(1), fields=np.zeros((1, 1, ny, nx)))


class Recorder(nn.Module):
    """A network that keeps the (normalised) fields it is given and returns ``w * fields``."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, fields):
        self.seen.append(fields.detach().clone())
        return self.w * fields


class Constant(nn.Module):
    """A network whose output is known: ``value`` everywhere."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, x, fields):
        return self.value.expand(x.shape[0], *self.value.shape)


def batch(n=16, n_fields=2, ny=5, nx=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g)
    y = 10 * torch.rand(n, 2 * n_fields, ny, nx, generator=g)
    return x, y


# -- delta targets ------------------------------------------------------------------------------------


def test_delta_surrogate_adds_the_scaled_change_to_its_input():
    out = torch.stack([torch.full((5, 4), 1.5), torch.full((5, 4), -2.0)])  # [2 fields, ny, nx]
    model = Surrogate(network=Constant(out), x_low=[0, 0, 0], x_high=[1, 1, 1], y_low=[0, -1], y_high=[10, 9],
                      in_fields=2, stride=1, delta_scale=[0.1, 3.0])
    x, y = batch()
    fields = y[:, :2]
    pred = model(x, fields)
    expected = fields + torch.tensor([0.1, 3.0]).reshape(2, 1, 1) * out
    torch.testing.assert_close(pred, expected)
    # The normalised prediction is that state on the normalised scale (what validation compares).
    torch.testing.assert_close(model.forward_normalised(x, fields), model.normalise_y(expected))
    # What the network should output for a target: the change on the delta scale.
    torch.testing.assert_close(model.network_target(fields, expected), out.expand_as(fields))
    # Delta targets need input fields, and a positive scale per field.
    with pytest.raises(ValueError, match="autoregressive"):
        Surrogate(network=Constant(out), x_low=[0], x_high=[1], y_low=[0, 0], y_high=[1, 1], delta_scale=[1, 1])
    with pytest.raises(ValueError, match="one positive scale per field"):
        Surrogate(network=Constant(out), x_low=[0], x_high=[1], y_low=[0, 0], y_high=[1, 1], in_fields=2,
                  stride=1, delta_scale=[1.0])


@pytest.mark.parametrize("model_name", ["fc", "unet"])
def test_delta_surrogate_round_trips_through_a_checkpoint(model_name, tiny_config, tmp_path):
    args = {"fc": {"hidden": 16, "layers": 1}, "unet": {"width": 4, "levels": 1}}[model_name]
    path = ar_config(tiny_config, target="delta", model=model_name)
    raw = yaml.safe_load(path.read_text())
    raw["trainer"]["model_args"] = args
    path.write_text(yaml.safe_dump(raw))
    cfg = StudyConfig.load(path)
    margs = surrogate_args(cfg, heat_norm(cfg), delta=[0.25])
    assert margs["target"] == "delta" and margs["delta_scale"] == [0.25]
    torch.manual_seed(0)
    model = build_surrogate(margs)
    assert model.delta
    torch.testing.assert_close(model.delta_scale.reshape(-1), torch.tensor([0.25]))
    opt, _ = make_optimizer(model, cfg)
    x = torch.rand(6, cfg.problem.n_inputs)
    y = torch.rand(6, 2, *cfg.problem.field_shape)
    train_step(model, opt, x, y)  # weights off their initial values
    fields = y[:, :1]
    model.eval()
    with torch.no_grad():
        want = model(x, fields)
        torch.testing.assert_close(want, fields + 0.25 * model.network_output(x, fields))
    save_checkpoint(tmp_path / "model.pt", model=model, optimizer=opt, model_args=margs, config=cfg.raw, step=1)
    loaded, ckpt = load_surrogate(tmp_path / "model.pt")
    assert loaded.delta and ckpt["model_args"]["delta_scale"] == [0.25]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, fields), want)
    # A rollout of the loaded model runs on states, as with state targets.
    steps = rollout(loaded, torch.rand(5, cfg.problem.n_inputs), fields[:1])
    assert steps.shape == (5, 1, *cfg.problem.field_shape) and torch.isfinite(steps).all()


def test_a_checkpoint_from_before_targets_is_a_state_model(tiny_config):
    cfg = StudyConfig.load(ar_config(tiny_config))
    margs = surrogate_args(cfg, heat_norm(cfg))
    assert margs["target"] == "state" and "delta_scale" not in margs
    del margs["target"]
    assert not build_surrogate(margs).delta
    with pytest.raises(ValueError, match="delta scale"):
        surrogate_args(cfg, heat_norm(cfg), delta=[1.0])
    with pytest.raises(ValueError, match="trainer.target"):
        build_surrogate({**margs, "target": "residual"})


def test_delta_scale_is_the_rms_change_of_each_field():
    spec = SampleSpec.make("autoregressive", 1, n_fields=3)
    norm = Normalisation(x_low=(0,), x_high=(1,), y_low=(0, 0, 2), y_high=(1, 1, 7))
    inputs = torch.rand(10, 3, 4, 5)
    change = torch.zeros_like(inputs)
    change[:, 0] = 2.0  # every point by 2
    change[::2, 1], change[1::2, 1] = 3.0, -3.0  # by 3, either sign: RMS, not mean
    y = torch.cat([inputs, inputs + change], dim=1)
    scale = delta_scale(y, spec, norm, chunk=3)  # chunks sum as one
    np.testing.assert_allclose(scale, (2.0, 3.0, 5.0), rtol=1e-5)  # field 2 never changes: its span
    with pytest.raises(ValueError, match="autoregressive"):
        delta_scale(y, SampleSpec.make("direct", 0, n_fields=3), norm)


def test_delta_scale_comes_from_the_heldout_members(tiny_config):
    from datamove.ensemble.members import make_heldout
    from datamove.training.distributed import Dist
    from datamove.training.loop import Training

    cfg = StudyConfig.load(ar_config(tiny_config, target="delta", input_noise=0.05))
    make_heldout(cfg)
    sq, n = 0.0, 0
    for m in load_members(cfg, cfg.heldout_dir, cfg.heldout, missing="-"):
        f = np.asarray(m.fields, dtype=np.float64)
        sq += float(np.square(f[1:] - f[:-1]).sum())
        n += f[1:].size
    run = Training(cfg=cfg, dd=Dist(), label="test")
    assert run.margs["target"] == "delta"
    np.testing.assert_allclose(run.margs["delta_scale"], [np.sqrt(sq / n)], rtol=1e-6)
    assert run.model.delta and run.noise_gen is not None


# -- input noise --------------------------------------------------------------------------------------


def recorder_model(delta=None):
    return Surrogate(network=Recorder(), x_low=[0, 0, 0], x_high=[1, 1, 1], y_low=[0, 0], y_high=[10, 20],
                     in_fields=2, stride=1, delta_scale=delta)


def test_noise_reaches_the_train_steps_inputs_only():
    x, y = batch(n=64)
    y0 = y.clone()
    model = recorder_model()
    clean = model.normalise_y(y[:, :2])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay: only the inputs are compared
    train_step(model, opt, x, y, input_noise=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.network.seen[-1], clean)
    train_step(model, opt, x, y, input_noise=0.1, generator=torch.Generator().manual_seed(1))
    noisy = model.network.seen[-1]
    noise = noisy - clean
    assert not torch.allclose(noisy, clean)
    assert abs(float(noise.std()) - 0.1) < 0.01 and abs(float(noise.mean())) < 0.01  # normalised units, each field
    for f in range(2):
        assert abs(float(noise[:, f].std()) - 0.1) < 0.015
    assert torch.equal(y, y0)  # the batch itself is not changed
    # The same generator state draws the same noise: runs stay reproducible.
    train_step(model, opt, x, y, input_noise=0.1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.network.seen[-1], noisy)
    # Validation and evaluation see the clean fields.
    evaluate(model, x, y)
    assert torch.equal(model.network.seen[-1], clean)
    model(x, y[:, :2])
    assert torch.equal(model.network.seen[-1], clean)


def test_delta_with_noise_learns_the_change_from_the_noisy_input_to_the_true_target():
    x, y = batch(n=8)
    model = recorder_model(delta=[0.5, 2.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, opt, x, y, input_noise=0.2, generator=torch.Generator().manual_seed(3))
    noisy = model.network.seen[-1] * model.y_span + model.y_low  # raw noisy inputs
    # With w = 0 the network outputs 0, so the prediction is the noisy input and the loss is the
    # change to the true target on the delta scale.
    with torch.no_grad():
        model.network.w.zero_()
    loss = train_step(model, opt, x, y, input_noise=0.2, generator=torch.Generator().manual_seed(3))
    noisy2 = model.network.seen[-1] * model.y_span + model.y_low
    torch.testing.assert_close(noisy2, noisy)
    # Reported loss: on the normalised state scale, as validation has it.
    torch.testing.assert_close(loss, model.normalise_y(y[:, 2:]).sub(model.normalise_y(noisy)).square().mean())


def test_reported_train_loss_is_the_validation_scale_with_delta_targets():
    x, y = batch(n=8)
    model = recorder_model(delta=[0.5, 2.0])
    before = evaluate(model, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    assert float(train_step(model, opt, x, y)) == pytest.approx(before, rel=1e-5)


# -- the config ---------------------------------------------------------------------------------------


def test_config_defaults_and_refusals(tiny_config):
    cfg = StudyConfig.load(tiny_config())
    assert (cfg.trainer.target, cfg.trainer.input_noise) == ("state", 0)
    cfg = StudyConfig.load(ar_config(tiny_config, target="delta", input_noise=0.01))
    assert (cfg.trainer.target, cfg.trainer.input_noise) == ("delta", 0.01)
    with pytest.raises(ConfigError, match="key 'trainer.target': delta needs trainer.sample autoregressive"):
        StudyConfig.load(tiny_config(trainer={"target": "delta"}))
    with pytest.raises(ConfigError, match="key 'trainer.input_noise': 0.1 needs trainer.sample autoregressive"):
        StudyConfig.load(tiny_config(trainer={"input_noise": 0.1}))
    with pytest.raises(ConfigError, match="trainer.input_noise"):
        StudyConfig.load(ar_config(tiny_config, input_noise=-0.1))
    with pytest.raises(ConfigError, match="trainer.target"):
        StudyConfig.load(ar_config(tiny_config, target="residual"))
    # Direct samples with the defaults are fine.
    assert StudyConfig.load(tiny_config(trainer={"target": "state", "input_noise": 0})).trainer.sample == "direct"


# -- real training --------------------------------------------------------------------------------------


def _metrics(cfg):
    with open(cfg.study_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_offline_training_with_delta_targets_and_noise(tiny_config):
    """A short offline run from files with delta targets and input noise trains, saves a delta model
    and evaluates it (one-step and rollout errors finite); a rerun of the study repeats it."""
    from datamove.ensemble.members import make_heldout, make_testset, run_member
    from datamove.training.offline import train_offline

    cfg = StudyConfig.load(ar_config(tiny_config, target="delta", input_noise=0.02))
    for member in range(cfg.ensemble.n_members):
        run_member(cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir)
    make_heldout(cfg)
    make_testset(cfg)
    result = train_offline(cfg, budget_batches=40)
    assert result.batches == 40
    rows = _metrics(cfg)
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    model, ckpt = load_surrogate(cfg.study_dir / "model.pt")
    assert model.delta and ckpt["model_args"]["target"] == "delta" and "noise_rng" in ckpt
    errors, _ = evaluate_members(model, cfg, arm="offline")
    for col in ("mse", "rel_l2", "rollout_mse", "rollout_rel_l2"):
        assert np.isfinite(errors[col]).all(), col

    train_offline(cfg, budget_batches=40)  # a rerun of the study: the same noise, the same losses
    assert [r["train_loss"] for r in _metrics(cfg)] == [r["train_loss"] for r in rows]
