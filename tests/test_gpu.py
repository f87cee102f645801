"""CUDA checks (run on a GPU machine; skipped without one)."""

from __future__ import annotations

import pytest
import torch

from conftest import model_args

from datamove.config import StudyConfig, validate_config
from datamove.reservoir import make_buffer
from datamove.training.step import build_surrogate, make_optimizer, pick_device, train_step

pytestmark = pytest.mark.gpu


def test_auto_device_is_cuda():
    assert pick_device("auto").type == "cuda"


@pytest.mark.parametrize("policy", ["reservoir", "fifo"])
def test_buffer_and_train_step_on_cuda(policy):
    cfg = StudyConfig.from_dict(validate_config({"solver": {"nx": 16, "ny": 8}}))
    device = torch.device("cuda")
    model = build_surrogate(model_args(cfg)).to(device)
    opt, _ = make_optimizer(model, cfg)
    buf = make_buffer(policy, capacity=64, watermark=16, x_dim=6, y_shape=(8, 16), device=device)
    for i in range(64):
        buf.put(torch.rand(6) * 400 + 100, torch.rand(8, 16) * 400 + 100, member=0, step=i)
    batch = buf.sample(16)
    assert batch.x.device.type == "cuda" and batch.y.device.type == "cuda"
    loss = train_step(model, opt, batch.x, batch.y)
    assert loss.device.type == "cuda" and torch.isfinite(loss)
