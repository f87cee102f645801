"""Windows of h + n K steps from stored member files (issue 31): the offline dataset serves, with
either reader, exactly the windows that the sample spec cuts of a whole member; a real offline run
trains on them; configs whose windows cannot be made are refused naming the key."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml

from datamove.config import ConfigError, StudyConfig
from datamove.data.dataset import MemberDataset, make_loader
from datamove.ensemble.members import run_member
from datamove.problems.samples import SampleSpec

# Small models train fastest in one thread (and do not contend with the processes beside them).
pytestmark = pytest.mark.usefixtures("one_thread")

# (history h, bundle K, unroll n, sample_stride s); None: direct samples.
SPECS = {
    "h2-K2-n2-s1": (2, 2, 2, 1),
    "h1-K4-n2-s2": (1, 4, 2, 2),
    "pair": (1, 1, 1, 1),
    "direct": None,
}


def trainer_keys(spec) -> dict:
    if spec is None:
        return {"sample": "direct"}
    h, k, n, s = spec
    # One ingest worker, so that the default slots hold the longest window's steps (a config check
    # of the online trainer, which the offline dataset does not need).
    return {"sample": "autoregressive", "history": h, "bundle": k, "unroll": n, "sample_stride": s,
            "ingest_workers": 1}


def whole_member(mf) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    """params, times [n_steps] and fields [n_steps, n_fields, ny, nx] of a member file, read whole."""
    mf.open()
    try:
        return list(mf.info.params), torch.as_tensor(mf.times), torch.from_numpy(mf.read_all())
    finally:
        mf.close()


@pytest.fixture
def stored(tiny_config):
    """Factory: a tiny BP5 study's member files, written once; returns the config of a spec whose
    stream_dir holds them."""
    cfg = StudyConfig.load(tiny_config(stream={"engine": "BP5"}))
    for member in range(cfg.ensemble.n_members):
        run_member(cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir)

    def config(spec, reader):
        return StudyConfig.load(tiny_config(stream={"engine": "BP5"}, trainer=trainer_keys(spec),
                                            offline={"reader": reader, "loader_workers": 0}))

    return config


@pytest.mark.parametrize("name", SPECS)
def test_dataset_windows_are_the_member_samples_with_both_readers(stored, name):
    """Every item, one at a time, in one batch of all, and through a DataLoader (``__getitems__``),
    equals ``spec.member_samples`` of its member read whole (x and y); index i is the window of the
    member at i // per_member that starts at step i % per_member."""
    served = {}
    for reader in ("memory", "file"):
        cfg = stored(SPECS[name], reader)
        spec = SampleSpec.of(cfg)
        ds = MemberDataset.from_config(cfg)
        assert ds.spec == spec
        n_steps, per_member = cfg.problem.n_steps, spec.samples_per_member(cfg.problem.n_steps)
        assert ds.per_member == per_member and len(ds) == cfg.ensemble.n_members * per_member
        # The reference: every window of each member, cut by the spec.
        xs, ys = [], []
        for mf in ds.files:
            x, y, last = spec.member_samples(*whole_member(mf))
            assert torch.equal(last, torch.arange(spec.span, n_steps))  # the window starting at j ends at j + span
            xs.append(x)
            ys.append(y)
        x_ref, y_ref = torch.cat(xs), torch.cat(ys)
        assert x_ref.shape == (len(ds), spec.x_dim(cfg.problem.n_inputs))
        assert y_ref.shape == (len(ds), *spec.stored_shape(cfg.problem.sample_shape))
        for i in range(len(ds)):
            x, y, j = ds[i]
            assert j == i
            assert torch.equal(x, x_ref[i]), (reader, i)
            assert torch.equal(y, y_ref[i]), (reader, i)
        # One batch of every sample, in an order that mixes members (overlapping windows: the file
        # reader reads each distinct step once).
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))
        x, y, idx = ds.__getitems__(order.tolist())
        assert torch.equal(idx, order) and torch.equal(x, x_ref[order]) and torch.equal(y, y_ref[order])
        loader = make_loader(ds, batch_size=8, workers=0, seed=0)
        seen = []
        for x, y, idx in loader:
            assert x.shape[0] == y.shape[0] == 8
            assert torch.equal(x, x_ref[idx]) and torch.equal(y, y_ref[idx])
            seen.append(idx)
        assert len(torch.cat(seen).unique()) == len(torch.cat(seen)) == len(ds) // 8 * 8
        ds.close()
        served[reader] = y_ref
    assert torch.equal(served["memory"], served["file"])


def test_window_times_are_the_times_of_each_applications_last_input_step(stored):
    """x of the window starting at j holds t at j + (h - 1 + m K) s for each application m."""
    cfg = stored((2, 2, 2, 1), "memory")
    ds = MemberDataset.from_config(cfg)
    _, times, _ = whole_member(ds.files[1])
    x, _, _ = ds[ds.per_member + 3]  # member 1, window from step 3: steps 3..8, inputs end at 4 and 6
    n_params = cfg.problem.n_inputs - 1
    assert torch.equal(x[n_params:], times[[4, 6]].to(torch.float32))
    ds.close()


def test_offline_training_on_windows_saves_a_model_that_loads(tiny_config):
    """A short real offline run on windows (h 2, K 2, n 2) of a 16 x 16 grid, unet, from the file
    reader: it finishes, counts the first (L - 1) s steps of each member as ending no window, and
    writes a model.pt that load_surrogate rebuilds with its history and bundle."""
    from datamove.ensemble.members import make_heldout
    from datamove.training.offline import train_offline
    from datamove.training.step import load_surrogate

    path = tiny_config(
        solver={"nx": 16, "ny": 16, "n_steps": 12}, stream={"engine": "BP5"},
        trainer={"model": "unet", "sample": "autoregressive", "history": 2, "bundle": 2, "unroll": 2,
                 "sample_stride": 1, "batch_size": 4, "log_every": 5},
        offline={"loader_workers": 0, "reader": "file"},
    )
    raw = yaml.safe_load(path.read_text())
    raw["trainer"]["model_args"] = {"width": 8, "levels": 2}  # in place of TINY's fc args
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = StudyConfig.load(path)
    for member in range(cfg.ensemble.n_members):
        run_member(cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir)
    make_heldout(cfg)
    result = train_offline(cfg, budget_batches=10)
    assert result.batches == 10 and result.samples == cfg.ensemble.n_members * (12 - 5)
    with open(cfg.study_dir / "ledger.csv") as fh:
        ledger = list(csv.DictReader(fh))
    assert [int(r["steps_unpaired"]) for r in ledger] == [5] * cfg.ensemble.n_members
    model, ckpt = load_surrogate(cfg.study_dir / "model.pt")
    assert (model.history, model.bundle) == (2, 2)
    assert (ckpt["model_args"]["history"], ckpt["model_args"]["bundle"]) == (2, 2)
    n_fields = len(cfg.problem.field_names)
    with torch.no_grad():  # one application: x (params, t of its last input step), h steps in, K steps out
        out = model(torch.zeros(1, cfg.problem.n_inputs), torch.zeros(1, 2 * n_fields, 16, 16))
    assert out.shape == (1, 2 * n_fields, 16, 16)


# -- windows that cannot be made are refused before any job starts ----------------------------------------


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        # Longer than a member of 20 steps: the message names the key and a value that fits.
        ({"history": 5, "bundle": 4, "unroll": 4}, r"key 'trainer.unroll': 4: .*21 steps.*set trainer.unroll to 3"),
        ({"history": 2, "bundle": 19}, r"key 'trainer.bundle': 19: .*set trainer.unroll to 1 and trainer.bundle to 18"),
        ({"history": 20}, r"key 'trainer.history': 20: .*trainer.history to 19"),
        ({"history": 2, "bundle": 2, "unroll": 2, "sample_stride": 5},
         r"key 'trainer.unroll': 2: .*set trainer.unroll to 1, or trainer.sample_stride to 3 or less"),
        ({"sample_stride": 20}, r"key 'trainer.sample_stride': 20 .*set trainer.sample_stride to 19 or less"),
        # Out of the schema's range.
        ({"unroll": 0}, r"key 'trainer.unroll': 0 is less than the minimum of 1"),
        ({"history": 0}, r"key 'trainer.history': 0 is less than the minimum of 1"),
        ({"bundle": 0}, r"key 'trainer.bundle': 0 is less than the minimum of 1"),
        ({"input_noise": -0.1}, r"key 'trainer.input_noise': -0.1 is less than the minimum of 0"),
        # Windows of direct samples.
        ({"sample": "direct", "history": 2}, r"key 'trainer.history': 2 needs trainer.sample autoregressive.*set trainer.history to 1"),
        ({"sample": "direct", "bundle": 3}, r"key 'trainer.bundle': 3 needs trainer.sample autoregressive.*set trainer.bundle to 1"),
        ({"sample": "direct", "unroll": 2}, r"key 'trainer.unroll': 2 needs trainer.sample autoregressive.*set trainer.unroll to 1"),
    ],
)
def test_bad_windows_are_refused_naming_the_key(tiny_config, trainer, message):
    keys = {"sample": "autoregressive", "ingest_workers": 1, "slots": 100, **trainer}
    with pytest.raises(ConfigError, match=message):
        StudyConfig.load(tiny_config(trainer=keys))


def test_fc_takes_history_and_bundle(tiny_config):
    """Not refused: fc flattens the h input steps into its input (its size grows with the grid)."""
    from datamove.problems.base import Normalisation
    from datamove.training.step import build_surrogate, surrogate_args

    cfg = StudyConfig.load(tiny_config(trainer={"model": "fc", "sample": "autoregressive", "history": 2,
                                                "bundle": 2, "unroll": 2}))
    n_in = cfg.problem.n_inputs
    norm = Normalisation(x_low=(0,) * n_in, x_high=(1,) * n_in, y_low=(0,), y_high=(1,))
    model = build_surrogate(surrogate_args(cfg, norm))
    ny, nx = cfg.problem.config.ny, cfg.problem.config.nx
    assert model(torch.zeros(3, n_in), torch.zeros(3, 2, ny, nx)).shape == (3, 2, ny, nx)
