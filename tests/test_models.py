"""Models, the shared train step and self-describing checkpoints."""

from __future__ import annotations

import pytest
import torch

from conftest import model_args

from datamove.config import StudyConfig, validate_config
from datamove.models import MODELS, build_network
from datamove.training.step import (
    build_surrogate,
    evaluate,
    load_surrogate,
    make_optimizer,
    save_checkpoint,
    train_step,
)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 3, 3), (2, 10, 12), (1, 32, 16)])
@pytest.mark.parametrize("batch", [1, 7])
def test_network_shapes(name, shape, batch):
    net = build_network(name, in_dim=6, out_shape=shape)
    assert net(torch.randn(batch, 6)).shape == (batch, *shape)


def test_unknown_model_and_bad_args():
    with pytest.raises(ValueError, match="'transformer' is not a built-in or installed name .fc, fno"):
        build_network("transformer", in_dim=6, out_shape=(4, 4))
    with pytest.raises(ValueError, match="model_args"):
        build_network("fc", in_dim=6, out_shape=(4, 4), width=3)


def _study(**over):
    raw = {"solver": {"nx": 8, "ny": 6}, "trainer": {"model_args": {"hidden": 16, "layers": 1}}}
    raw.update(over)
    return StudyConfig.from_dict(validate_config(raw))


def test_surrogate_normalises_round_trip():
    cfg = _study()
    model = build_surrogate(model_args(cfg))
    x = torch.tensor([[100.0, 500.0, 300.0, 200.0, 400.0, 0.5]])
    y = model(x)
    assert y.shape == (1, 1, 6, 8)
    assert torch.allclose(model.normalise_y(y), model.forward_normalised(x), atol=1e-6)


def test_train_step_learns_a_fixed_batch():
    torch.manual_seed(0)
    cfg = _study()
    model = build_surrogate(model_args(cfg))
    opt, _ = make_optimizer(model, cfg)
    x = torch.rand(16, 6) * 400 + 100
    y = torch.rand(16, 1, 6, 8) * 400 + 100
    first = float(train_step(model, opt, x, y))
    for _ in range(200):
        last = float(train_step(model, opt, x, y))
    assert last < 0.5 * first
    assert evaluate(model, x, y) == pytest.approx(last, rel=0.5)


def test_checkpoint_rebuilds_the_model(tmp_path):
    cfg = _study()
    args = model_args(cfg)
    model = build_surrogate(args)
    opt, _ = make_optimizer(model, cfg)
    save_checkpoint(tmp_path / "m.pt", model=model, optimizer=opt, model_args=args, config=cfg.raw, step=5)
    again, ckpt = load_surrogate(tmp_path / "m.pt")
    x = torch.rand(3, 6) * 400 + 100
    assert torch.equal(model.eval()(x), again(x))
    assert ckpt["step"] == 5 and ckpt["config"]["solver"]["nx"] == 8
    assert not (tmp_path / "m.pt.tmp").exists()
