"""Models from outside the package: an import path, any grid network (grid:), an installed plug-in
(entry point group datamove.models); the one-line refusals of bad ones, before any job."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from conftest import datamove
from datamove.config import ConfigError, StudyConfig, validate_config
from datamove.models import build_network, model_names
from datamove.problems.samples import SampleSpec
from datamove.training.step import build_surrogate

# A model that is not one of ours, with the model interface of docs/models.md: keyword-only
# in_dim, out_shape, in_fields and its own arguments; forward(x, fields) -> [batch, n_fields, ny, nx].
MY_MODELS = '''
import torch
from torch import nn


class TinyConv(nn.Module):
    """x [batch, in_dim] (+ fields [batch, in_fields, ny, nx]) -> [batch, n_fields, ny, nx]."""

    def __init__(self, *, in_dim, out_shape, in_fields=0, width=8):
        super().__init__()
        self.n_fields, self.ny, self.nx = out_shape
        self.lift = nn.Linear(in_dim, width * self.ny * self.nx)
        self.conv = nn.Conv2d(width + in_fields, self.n_fields, 3, padding=1)
        self.width = width

    def forward(self, x, fields=None):
        h = self.lift(x).view(x.shape[0], self.width, self.ny, self.nx)
        if fields is not None:
            h = torch.cat([h, fields], dim=1)
        return self.conv(torch.relu(h))


class WrongShape(TinyConv):
    def forward(self, x, fields=None):
        return super().forward(x, fields)[:, :, 1:, :]


class NoInDim(nn.Module):
    def __init__(self, *, out_shape):
        super().__init__()


NOT_A_CLASS = 3


from datamove.problems import Problem
from datamove.reservoir import Buffer


class Newest(Buffer):
    """A reservoir policy of our own: batches of the newest samples."""

    name = "newest"
    consumes = False

    def _pick(self, batch_size):
        return torch.arange(max(0, len(self) - batch_size), len(self))


class NoConsumes(Buffer):
    name = "no-consumes"

    def _pick(self, batch_size):
        return torch.arange(min(batch_size, len(self)))


class Ramp(Problem):
    """A Python problem of our own: one field, a ramp a t."""

    name = "ramp"
    SOLVER = {"n": {"type": "integer", "minimum": 2, "default": 6}}
    RANGES = {"a": [0.0, 1.0]}

    def __init__(self, *, solver, ranges):
        self.n_steps = solver["n_steps"]
        self._take_parameters(ranges, solver)
        self.fields = {"f": (solver["n"], solver["n"])}

    def constants(self):
        return {}


class NoSolverKeys(Ramp):
    SOLVER = None
'''


@pytest.fixture
def my_models(tmp_path, monkeypatch):
    """mymodels.py in a folder on the Python path (this process's and its children's)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "mymodels.py").write_text(MY_MODELS)
    (folder / "broken.py").write_text("raise RuntimeError('this module fails as it imports')\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    return folder


def _validate(model, model_args=None, **trainer):
    return validate_config({"solver": {"nx": 12, "ny": 10, "n_steps": 20},
                            "trainer": {"model": model, "model_args": model_args or {}, **trainer}})


@pytest.mark.parametrize("model, model_args, key, words", [
    ("broken:Net", {}, "trainer.model", "module 'broken' of 'broken:Net' does not import: RuntimeError: this module fails"),
    ("mymodels:Missing", {}, "trainer.model", "module 'mymodels' has no 'Missing'"),
    ("mymodels:NOT_A_CLASS", {}, "trainer.model", "not a torch.nn.Module class"),
    ("mymodels:TinyConv", {"depth": 3}, "trainer.model_args", "['depth'] are not arguments of model 'mymodels:TinyConv'"),
    ("mymodels:TinyConv", {"width": -1}, "trainer.model_args", "cannot be built with {'width': -1}"),
    ("mymodels:WrongShape", {}, "trainer.model", "returned [2, 1, 9, 12] for a dry batch of 2 samples, expected [2, 1, 10, 12]"),
    ("mymodels:NoInDim", {}, "trainer.model", "does not take in_dim: a model's constructor takes in_dim"),
    ("grid:torch.nn:Conv2d", {"kernel_size": 3}, "trainer.model", "returned [2, 1, 8, 10] for inputs [2, 8, 10, 12]"),
    ("grid:torch.nn:Conv2d", {"kernel_size": 3, "padding": 1, "out_channels": 4}, "trainer.model_args",
     "out_channels is the channel count DATAMOVE gives the network"),
    ("grid:mymodels", {}, "trainer.model", "after grid: comes an import path package.module:ClassName"),
    ("transformer", {}, "trainer.model", "'transformer' is not a built-in or installed name (fc, fno, mppde, unet"),
])
def test_a_bad_model_from_outside_is_refused_in_one_line_naming_the_key(my_models, model, model_args, key, words):
    with pytest.raises(ConfigError) as err:
        _validate(model, model_args)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].strip().startswith(f"key '{key}': "), str(err.value)
    assert words in lines[0], lines[0]


@pytest.mark.parametrize("section, message", [
    ({"solver": {"name": "mymodels:TinyConv"}}, "key 'solver.name': 'mymodels:TinyConv' (import path) is <class "
                                                "'mymodels.TinyConv'>, not a subclass of datamove.problems.Problem"),
    ({"solver": {"name": "mymodels:NoSolverKeys"}}, "key 'solver.name': problem 'mymodels:NoSolverKeys' (import path) "
                                                    "declares no SOLVER (its solver keys, name -> JSON schema with a default)"),
    ({"solver": {"name": "mymodels:Ramp", "nx": 4}}, "unknown key 'solver.nx' (known keys here: command, n, n_steps, "
                                                     "name, step_delay_s)"),
    ({"solver": {"name": "mymodels:Ramp", "n": 1}}, "key 'solver.n': 1 is less than the minimum of 2"),
    ({"solver": {"name": "mymodels:Ramp"}, "parameters": {"ranges": {"b": [0, 1]}}},
     "unknown key 'parameters.ranges.b' (known keys here: a)"),
    ({"reservoir": {"policy": "torch.nn:Linear"}}, "key 'reservoir.policy': 'torch.nn:Linear' (import path) is "
                                                   "<class 'torch.nn.modules.linear.Linear'>, not a subclass of "
                                                   "datamove.reservoir.Buffer"),
    ({"reservoir": {"policy": "mymodels:Oldest"}}, "key 'reservoir.policy': module 'mymodels' has no 'Oldest' "
                                                   "('mymodels:Oldest')"),
    ({"reservoir": {"policy": "mymodels:NoConsumes"}}, "key 'reservoir.policy': policy 'mymodels:NoConsumes' (import "
                                                       "path) declares no consumes (True: each drawn sample leaves "
                                                       "the buffer; False: samples are drawn again)"),
])
def test_a_bad_problem_or_policy_from_outside_is_refused_naming_the_key(my_models, section, message):
    with pytest.raises(ConfigError) as err:
        validate_config(section)
    lines = [line.strip() for line in str(err.value).splitlines()[1:]]
    assert lines == [message], str(err.value)


def test_a_problem_and_a_policy_by_import_path(my_models):
    """solver.name and reservoir.policy take import paths: the problem's solver keys and parameter
    ranges get their defaults as a built-in problem's do, and the buffer is the policy's."""
    from datamove.reservoir import make_buffer

    cfg = validate_config({"solver": {"name": "mymodels:Ramp", "n_steps": 4},
                           "reservoir": {"policy": "mymodels:Newest", "capacity": 8, "watermark": 2}})
    assert cfg["solver"] == {"name": "mymodels:Ramp", "n_steps": 4, "n": 6, "command": None, "step_delay_s": 0.0}
    assert cfg["parameters"]["ranges"] == {"a": [0.0, 1.0]}
    problem = StudyConfig.from_dict(cfg).problem
    assert (problem.name, problem.fields, problem.param_names) == ("mymodels:Ramp", {"f": (6, 6)}, ("a",))
    buf = make_buffer(cfg["reservoir"]["policy"], capacity=8, watermark=2, x_dim=2, y_shape=(1, 6, 6))
    assert type(buf).__name__ == "Newest"
    for k in range(5):
        buf.put(torch.full((2,), float(k)), torch.zeros(1, 6, 6), member=0, step=k)
    assert sorted(buf.sample(2).step.tolist()) == [3, 4]


def test_a_model_by_import_path_builds_and_trains_direct_and_autoregressive(my_models):
    for trainer in ({}, {"sample": "autoregressive", "history": 2, "bundle": 2}):
        cfg = StudyConfig.from_dict(_validate("mymodels:TinyConv", {"width": 4}, **trainer))
        spec = SampleSpec.of(cfg)
        args = {"model": cfg.trainer.model, "model_args": dict(cfg.trainer.model_args), "in_dim": cfg.problem.n_inputs,
                "out_shape": list(cfg.problem.sample_shape), "sample": cfg.trainer.sample,
                "sample_stride": spec.stride, "history": spec.history, "bundle": spec.bundle,
                "x_low": [0.0] * cfg.problem.n_inputs, "x_high": [1.0] * cfg.problem.n_inputs,
                "y_low": [0.0], "y_high": [1.0]}
        model = build_surrogate(args)
        assert type(model.network).__name__ == "TinyConv" and model.network.width == 4
        # A few steps on one batch: the loss falls (it trains, gradients reach its weights).
        torch.manual_seed(0)
        x = torch.rand(8, cfg.problem.n_inputs)
        fields = torch.rand(8, spec.in_fields, 10, 12) if spec.in_fields else None
        y = torch.rand(8, spec.out_fields, 10, 12)
        opt = torch.optim.Adam(model.network.parameters(), lr=1e-2)
        losses = []
        for _ in range(30):
            out = model.network(x, fields) if fields is not None else model.network(x)
            loss = torch.nn.functional.mse_loss(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], losses


def test_any_grid_network_gets_the_grid_inputs_and_its_channel_counts():
    """grid:torch.nn:Conv2d, a plain torch module: c_in = in_dim + 2 coordinates + in_fields,
    c_out = the fields predicted; model_args renames the channel arguments where a class names them
    otherwise (torch.nn.Conv2d's own names here, given explicitly)."""
    net = build_network("grid:torch.nn:Conv2d", in_dim=6, out_shape=(2, 10, 12), in_fields=2, kernel_size=3, padding=1)
    assert (net.net.in_channels, net.net.out_channels) == (6 + 2 + 2, 2)
    out = net(torch.rand(4, 6), torch.rand(4, 2, 10, 12))
    assert out.shape == (4, 2, 10, 12)
    named = build_network("grid:torch.nn:Conv2d", in_dim=3, out_shape=(1, 8, 8), kernel_size=1,
                          in_channels_as="in_channels", out_channels_as="out_channels")
    assert named.net.in_channels == 5
    cfg = _validate("grid:torch.nn:Conv2d", {"kernel_size": 3, "padding": 1}, sample="autoregressive")
    assert cfg["trainer"]["model"] == "grid:torch.nn:Conv2d"


def test_an_installed_plug_in_is_named_like_a_built_in_model(my_models, tmp_path):
    """An entry point of the group datamove.models (what a pip-installed package's pyproject
    declares; here its installed metadata, a dist-info folder on the path) names a model class."""
    info = my_models / "mymodels_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mymodels-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[datamove.models]\ntinyconv = mymodels:TinyConv\nbad = mymodels:Missing\n")
    names = model_names()
    assert names["tinyconv"] == "plug-in mymodels:TinyConv" and names["fno"] == "built-in"
    cfg = _validate("tinyconv", {"width": 2})
    assert cfg["trainer"]["model"] == "tinyconv"
    with pytest.raises(ConfigError, match=r"key 'trainer.model': plug-in 'bad' \(mymodels:Missing\) does not load"):
        _validate("bad")
    listed = datamove("list", "models").stdout
    assert "tinyconv" in listed and "plug-in mymodels:TinyConv" in listed and "width=8" in listed


def test_neuraloperator_fno_as_a_grid_network():
    """trainer.model: grid:neuralop.models:FNO (neuraloperator, an optional extra: runs where it is
    installed). Its FNO takes in_channels and out_channels, as our wrapper gives them."""
    pytest.importorskip("neuralop")
    cfg = _validate("grid:neuralop.models:FNO", {"n_modes": [4, 4], "hidden_channels": 8}, sample="autoregressive")
    net = build_network(cfg["trainer"]["model"], in_dim=6, out_shape=(1, 10, 12), in_fields=1,
                        **cfg["trainer"]["model_args"])
    out = net(torch.rand(3, 6), torch.rand(3, 1, 10, 12))
    assert out.shape == (3, 1, 10, 12)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_the_built_in_names_need_no_torch_to_validate():
    """A config naming a built-in model validates without importing torch (the workflow validates
    every config as it parses); one from outside imports what it needs."""
    import subprocess

    code = ("import sys; from datamove.config import validate_config; "
            "validate_config({'trainer': {'model': 'fno'}}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
