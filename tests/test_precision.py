"""trainer.precision: the train step under autocast (bf16 on CPU here, fp16 with loss scaling on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamove.config import ConfigError, StudyConfig, validate_config
from datamove.problems.samples import SampleSpec
from datamove.training.step import MixedPrecision, build_surrogate, make_optimizer, surrogate_args, train_step

SMALL = {
    "fc": {"hidden": 32, "layers": 2},
    "fno": {"modes": 4, "width": 8, "layers": 2},
    "mppde": {"hidden": 16, "layers": 2},
    "unet": {"width": 8, "levels": 2},
}


def setup(name: str, sample: str, device: str = "cpu", precision: str = "fp32"):
    raw = {"solver": {"nx": 12, "ny": 10, "n_steps": 6},
           "trainer": {"model": name, "model_args": SMALL[name], "sample": sample, "precision": precision, "lr": 3e-3}}
    cfg = StudyConfig.from_dict(validate_config(raw))
    norm = cfg.problem.normalisation(times=np.linspace(0, 1, 3), fields=np.zeros((3, *cfg.problem.sample_shape)))
    torch.manual_seed(0)
    model = build_surrogate(surrogate_args(cfg, norm)).to(device)
    gen = torch.Generator().manual_seed(1)
    x = model.x_low.cpu() + torch.rand(16, cfg.problem.n_inputs, generator=gen) * model.x_span.cpu()
    u = torch.rand(16, 1, 1, 1, generator=gen)
    shape = SampleSpec.of(cfg).stored_shape(cfg.problem.sample_shape)
    y = (model.y_low.cpu() + (0.2 + 0.6 * u) * model.y_span.cpu()).expand(16, *shape).clone()
    return cfg, model, x.to(device), y.to(device)


@pytest.mark.parametrize("sample", ["direct", "autoregressive"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_bf16_train_steps_learn_and_keep_fp32_weights(name, sample):
    cfg, model, x, y = setup(name, sample, precision="bf16")
    optimizer, _ = make_optimizer(model, cfg)
    amp = MixedPrecision(cfg.trainer.precision, torch.device("cpu"))
    losses = [float(train_step(model, optimizer, x, y, precision=amp)) for _ in range(15)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: fp32 master weights


def test_fp16_needs_cuda_and_the_key_is_named():
    with pytest.raises(ConfigError, match="trainer.precision.*CUDA"):
        MixedPrecision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="trainer.precision"):
        StudyConfig.from_dict(validate_config({"trainer": {"precision": "fp8"}}))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_mixed_precision_on_cuda(name, precision):
    cfg, model, x, y = setup(name, "autoregressive", device="cuda", precision=precision)
    optimizer, _ = make_optimizer(model, cfg)
    amp = MixedPrecision(precision, torch.device("cuda"))
    losses = [float(train_step(model, optimizer, x, y, precision=amp)) for _ in range(20)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
