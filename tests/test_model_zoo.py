"""The model registry's networks (fc, fno, mppde, unet) on every problem's samples: shapes, fields of
a step as extra input, gradients, learning, checkpoints, argument checks, and a real training run."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import yaml

from datamove.config import ConfigError, StudyConfig, validate_config
from datamove.models import MODELS, build_network
from datamove.models.fno import SpectralConv2d
from datamove.models.mppde import grid_graph
from datamove.training.step import (
    build_surrogate,
    load_surrogate,
    make_optimizer,
    save_checkpoint,
    surrogate_args,
    train_step,
)

# Small arguments, so that each case takes a fraction of a second on one core.
SMALL = {
    "fc": {"hidden": 32, "layers": 2},
    "fno": {"modes": 6, "width": 8, "layers": 2},
    "mppde": {"hidden": 16, "layers": 2},
    "unet": {"width": 8, "levels": 2},
}
PROBLEMS = {
    "heat-20x24": {"solver": {"ny": 20, "nx": 24}},
    "heat-33x33": {"solver": {"ny": 33, "nx": 33}},
    "ns-w": {"solver": {"name": "navier-stokes", "n": 16, "outputs": ["w"]}},
    "ns-w-ux-uy": {"solver": {"name": "navier-stokes", "n": 16, "outputs": ["w", "ux", "uy"]}},
}



@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the workflow's trainer: small ops on a shared machine run several times
    faster than with a thread per core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


models = pytest.mark.parametrize("name", sorted(MODELS))
problems = pytest.mark.parametrize("problem", sorted(PROBLEMS))


def study(name: str, problem: str, **trainer) -> StudyConfig:
    raw = {**PROBLEMS[problem], "trainer": {"model": name, "model_args": SMALL[name], **trainer}}
    return StudyConfig.from_dict(validate_config(raw))


def surrogate_of(cfg: StudyConfig):
    """The model and its args, with scales from a few made-up samples (navier-stokes has no declared
    bounds; heat ignores the samples)."""
    rng = np.random.default_rng(0)
    fields = rng.normal(size=(4, *cfg.problem.sample_shape)).astype(np.float32)
    args = surrogate_args(cfg, cfg.problem.normalisation(times=np.linspace(0.0, 1.0, 4), fields=fields))
    torch.manual_seed(0)
    return build_surrogate(args), args


def batch(model, n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw inputs inside the bounds [n, in_dim] and raw targets [n, *shape] whose normalised values
    are a smooth pattern in [0.2, 0.8] that depends on the inputs."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, model.x_low.numel(), generator=gen)
    x = model.x_low + u * model.x_span
    n_fields, ny, nx = shape
    yy, xx = torch.meshgrid(torch.linspace(0, math.pi, ny), torch.linspace(0, math.pi, nx), indexing="ij")
    pattern = torch.sin(yy) * torch.sin(xx)  # [ny, nx]
    scale = u[:, :1, None, None].expand(n, n_fields, 1, 1) * torch.arange(1, n_fields + 1).view(1, -1, 1, 1) / n_fields
    y_norm = 0.2 + 0.6 * scale * pattern
    return x, y_norm * model.y_span + model.y_low


@models
@problems
def test_output_shape_and_gradients(name, problem):
    cfg = study(name, problem)
    model, _ = surrogate_of(cfg)
    x, y = batch(model, 3, cfg.problem.sample_shape)
    out = model(x)
    assert out.shape == (3, *cfg.problem.sample_shape) and torch.isfinite(out).all()
    torch.nn.functional.mse_loss(model.forward_normalised(x), model.normalise_y(y)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


@models
@problems
def test_fields_of_a_step_as_extra_input(name, problem):
    """in_fields > 0 (autoregressive samples, future work): forward(x, fields) uses the fields."""
    cfg = study(name, problem)
    n_fields, ny, nx = cfg.problem.sample_shape
    torch.manual_seed(0)
    net = build_network(name, in_dim=cfg.problem.n_inputs, out_shape=(n_fields, ny, nx), in_fields=n_fields,
                        **SMALL[name])
    x = torch.rand(2, cfg.problem.n_inputs)
    fields = torch.rand(2, n_fields, ny, nx, requires_grad=True)
    out = net(x, fields)
    assert out.shape == (2, n_fields, ny, nx)
    out.square().sum().backward()
    assert fields.grad.abs().sum() > 0
    assert not torch.allclose(net(x, fields.detach() + 1.0), out.detach())
    with pytest.raises(ValueError, match="takes fields"):
        net(x)
    with pytest.raises(ValueError, match=r"fields must be \[2, %d, %d, %d\]" % (n_fields, ny, nx)):
        net(x, torch.rand(2, n_fields, ny + 1, nx))
    plain = build_network(name, in_dim=cfg.problem.n_inputs, out_shape=(n_fields, ny, nx), **SMALL[name])
    with pytest.raises(ValueError, match="in_fields=0"):
        plain(x, fields)


@models
@problems
def test_adam_steps_reduce_the_loss_on_a_fixed_batch(name, problem):
    cfg = study(name, problem, lr=1e-2, weight_decay=0.0)
    model, _ = surrogate_of(cfg)
    opt, _ = make_optimizer(model, cfg)
    x, y = batch(model, 4, cfg.problem.sample_shape)
    losses = [float(train_step(model, opt, x, y)) for _ in range(12)]
    assert losses[-1] < 0.5 * losses[0], losses


@models
@problems
def test_checkpoint_round_trip(name, problem, tmp_path):
    cfg = study(name, problem)
    model, args = surrogate_of(cfg)
    opt, _ = make_optimizer(model, cfg)
    x, y = batch(model, 4, cfg.problem.sample_shape)
    train_step(model, opt, x, y)  # weights away from their initial values
    save_checkpoint(tmp_path / "m.pt", model=model, optimizer=opt, model_args=args, config=cfg.raw, step=1)
    again, ckpt = load_surrogate(tmp_path / "m.pt")
    assert ckpt["model_args"]["model"] == name and ckpt["model_args"]["model_args"] == SMALL[name]
    assert not any(p.is_complex() for p in model.parameters())  # optimisers, the gradient all-reduce
    torch.testing.assert_close(again(x), model.eval()(x))


@pytest.mark.parametrize("name, args, match", [
    ("fc", {"hidden": 0}, "hidden must be an integer >= 1, got 0"),
    ("fc", {"in_fields": -1}, "in_fields must be an integer >= 0"),
    ("fno", {"modes": 0}, "modes must be an integer >= 1, got 0"),
    ("fno", {"width": 8.5}, "width must be an integer >= 1, got 8.5"),
    ("fno", {"layers": True}, "layers must be an integer"),
    ("fno", {"hidden": 32}, "unexpected keyword argument 'hidden'"),
    ("mppde", {"neighbours": 6}, "neighbours must be 4 or 8, got 6"),
    ("mppde", {"hidden": -1}, "hidden must be an integer >= 1"),
    ("mppde", {"width": 8}, "unexpected keyword argument 'width'"),
    ("unet", {"levels": -1}, "levels must be an integer >= 0"),
    ("unet", {"levels": 9}, "levels must be <= 8"),
    ("unet", {"modes": 4}, "unexpected keyword argument 'modes'"),
])
def test_bad_model_args_are_named(name, args, match):
    with pytest.raises(ValueError, match=rf"bad trainer.model_args .* for model '{name}': .*{match}"):
        build_network(name, in_dim=6, out_shape=(1, 8, 8), **args)


def test_schema_knows_the_models_and_defaults_follow_the_model():
    for name in MODELS:
        cfg = StudyConfig.from_dict(validate_config({"trainer": {"model": name}}))
        assert cfg.trainer.model_args == {}  # each model's own defaults, not fc's
    with pytest.raises(ConfigError, match="transformer"):
        validate_config({"trainer": {"model": "transformer"}})


def test_fc_defaults_keep_the_reference_network():
    """Checkpoints written before the registry grew still load: same layers, same names."""
    net = build_network("fc", in_dim=6, out_shape=(1, 10, 12))
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == {
        "net.0.weight": (256, 6), "net.0.bias": (256,), "net.2.weight": (256, 256), "net.2.bias": (256,),
        "net.4.weight": (120, 256), "net.4.bias": (120,),
    }


@pytest.mark.parametrize("ny, nx, modes", [(20, 24, 6), (33, 33, 12), (5, 3, 12)])
def test_spectral_conv_matches_a_full_rfft2(ny, nx, modes):
    """The layer's split transforms (rfft along x, fft along y on the kept columns) compute what
    zeroing all but the kept modes of a full rfft2 does."""
    torch.manual_seed(0)
    m1, m2 = max(1, min(modes, ny // 2)), min(modes, nx // 2 + 1)
    layer = SpectralConv2d(width=3, m1=m1, m2=m2)
    h = torch.randn(2, 3, ny, nx)
    h_ft = torch.fft.rfft2(h, norm="ortho")
    out = torch.zeros(2, 3, ny, nx // 2 + 1, dtype=torch.cfloat)
    weight = torch.view_as_complex(layer.weight.detach())
    out[:, :, :m1, :m2] = torch.einsum("bixy,ioxy->boxy", h_ft[:, :, :m1, :m2], weight[0])
    out[:, :, -m1:, :m2] = torch.einsum("bixy,ioxy->boxy", h_ft[:, :, -m1:, :m2], weight[1])
    torch.testing.assert_close(layer(h), torch.fft.irfft2(out, s=(ny, nx), norm="ortho"), atol=1e-5, rtol=1e-4)


def test_mppde_evaluates_a_large_batch_in_chunks(monkeypatch):
    """Without gradients mppde splits a batch whose per-edge tensors would be large: same output."""
    import datamove.models.mppde as mppde

    torch.manual_seed(0)
    net = build_network("mppde", in_dim=3, out_shape=(2, 6, 5), in_fields=2, **SMALL["mppde"]).eval()
    x, fields = torch.rand(7, 3), torch.rand(7, 2, 6, 5)
    with torch.no_grad():
        whole = net(x, fields)
        monkeypatch.setattr(mppde, "EVAL_ELEMENTS", 2 * net.edge_index.shape[1] * 16)  # 2 samples a chunk
        chunked = net(x, fields)
    torch.testing.assert_close(chunked, whole)


@pytest.mark.parametrize("neighbours", [4, 8])
def test_grid_graph_links_each_node_to_its_neighbours(neighbours):
    ny, nx = 4, 5
    edge_index, rel = grid_graph(ny, nx, neighbours)
    axis = ny * (nx - 1) + nx * (ny - 1)
    diagonal = 2 * (ny - 1) * (nx - 1) if neighbours == 8 else 0
    assert edge_index.shape == (2, 2 * (axis + diagonal)) and rel.shape == (edge_index.shape[1], 2)
    src, tgt = edge_index
    dy, dx = src // nx - tgt // nx, src % nx - tgt % nx
    assert torch.equal(torch.stack([dy, dx], 1).float(), rel)
    assert rel.abs().max() == 1 and (rel.abs().sum(1) > 0).all()
    assert len(set(zip(src.tolist(), tgt.tolist()))) == edge_index.shape[1]  # no duplicate edge


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(MODELS) - {"fc"}))
def test_offline_trainer_trains_the_model(name, tiny_config):
    """The real offline trainer on a tiny BP5 study (3 members x 20 steps of 10x12), model by name."""
    from datamove.ensemble.members import make_heldout, run_member
    from datamove.training.offline import train_offline

    path = tiny_config(stream={"engine": "BP5"}, trainer={"model": name, "log_every": 10},
                       offline={"loader_workers": 0, "reader": "memory"})
    raw = yaml.safe_load(path.read_text())
    raw["trainer"]["model_args"] = SMALL[name]  # in place of TINY's fc args (the fixture merges dicts)
    path.write_text(yaml.safe_dump(raw))
    cfg = StudyConfig.load(path)
    for member in range(cfg.ensemble.n_members):
        run_member(cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir)
    make_heldout(cfg)
    result = train_offline(cfg, budget_batches=40)
    assert result.batches == 40 and result.stopped_by == "batches"
    model, ckpt = load_surrogate(cfg.study_dir / "model.pt")
    assert ckpt["model_args"]["model"] == name and ckpt["trainer"] == "offline"
    with open(cfg.study_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
