"""trainer.val_rollout_every: the held-out members rolled out during training (both trainers, one
loop), their relative L2 at the last step in metrics.csv, TensorBoard and `datamove status`."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import datamove, snakemake
from datamove.config import ConfigError, StudyConfig, write_config
from datamove.data import load_members
from datamove.evaluation.errors import rollout
from datamove.problems.samples import direct_inputs
from datamove.run.heartbeat import read_heartbeat
from datamove.training.step import load_surrogate

COLUMNS = ("val_rollout_rel_l2", "val_rollout_rel_l2_traj")


# Small models train fastest in one thread (and do not contend with the processes beside them).
pytestmark = pytest.mark.usefixtures("one_thread")


def ar_config(tiny_config, **overrides):
    """A tiny autoregressive study (fc, stride 2) validating rollouts every 20 batches."""
    trainer = {"sample": "autoregressive", "sample_stride": 2, "val_rollout_every": 20, **overrides.pop("trainer", {})}
    return tiny_config(trainer=trainer, **overrides)


def metrics_rows(cfg: StudyConfig) -> list[dict]:
    with open(cfg.study_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def independent_rollout_errors(cfg: StudyConfig) -> tuple[float, float]:
    """The saved model's rollouts of the held-out members, one member at a time, pooled by hand."""
    model, _ = load_surrogate(cfg.study_dir / "model.pt")
    model.eval()
    s = model.stride
    err_last = truth_last = err_all = truth_all = 0.0
    for m in load_members(cfg, cfg.heldout_dir, cfg.heldout, missing="make-heldout"):
        truth = torch.from_numpy(m.fields)
        pred = rollout(model, direct_inputs(m.params, m.times), truth[:s]).double()
        err = (pred[s:] - truth[s:].double()).square()
        err_last += float(err[-1].sum())
        truth_last += float(truth[-1].double().square().sum())
        err_all += float(err.sum())
        truth_all += float(truth[s:].double().square().sum())
    return math.sqrt(err_last / truth_last), math.sqrt(err_all / truth_all)


def test_the_key_is_checked(tiny_config):
    assert StudyConfig.load(tiny_config()).trainer.val_rollout_every == 0  # the schema's default: off
    with pytest.raises(ConfigError, match=r"key 'trainer.val_rollout_every': 20 needs autoregressive samples"):
        StudyConfig.load(tiny_config(trainer={"val_rollout_every": 20}))  # direct samples
    with pytest.raises(ConfigError, match=r"key 'trainer.val_rollout_every': 15 is not a multiple of trainer.log_every 10"):
        StudyConfig.load(ar_config(tiny_config, trainer={"val_rollout_every": 15}))
    assert StudyConfig.load(tiny_config(trainer={"val_rollout_every": 0})).trainer.val_rollout_every == 0


@pytest.mark.parametrize("budget", [45, 50])
def test_offline_training_logs_rollouts_to_metrics_tensorboard_and_status(tiny_config, budget):
    """Rows at multiples of val_rollout_every and the final row carry the rollout errors, the final
    ones those of the saved model; TensorBoard has them at the same batches; `datamove status` shows
    the last. Budget 50: the final row is one the loop logged already, brought up to date."""
    from datamove.ensemble.members import make_heldout, run_member
    from datamove.training.offline import train_offline

    path = ar_config(tiny_config, stream={"engine": "BP5"}, trainer={"tensorboard": True},
                     offline={"loader_workers": 0, "reader": "memory"})
    cfg = StudyConfig.load(path)
    write_config(yaml.safe_load(path.read_text()), cfg.study_dir / "config.yaml")  # as the workflow does
    for member in range(cfg.ensemble.n_members):
        run_member(cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir)
    make_heldout(cfg)
    train_offline(cfg, budget_batches=budget)

    rows = metrics_rows(cfg)
    assert [int(r["batch"]) for r in rows] == [10, 20, 30, 40, budget]
    rolled = {int(r["batch"]): (float(r[COLUMNS[0]]), float(r[COLUMNS[1]])) for r in rows if r[COLUMNS[0]]}
    assert sorted(rolled) == [20, 40, budget]  # multiples of 20, and the final row
    assert all(r[c] == "" for r in rows if int(r["batch"]) in (10, 30) for c in COLUMNS)
    assert all(math.isfinite(v) and v > 0 for pair in rolled.values() for v in pair)
    horizon, whole = independent_rollout_errors(cfg)
    assert math.isclose(rolled[budget][0], horizon, rel_tol=1e-4), (rolled[budget], horizon)
    assert math.isclose(rolled[budget][1], whole, rel_tol=1e-4), (rolled[budget], whole)

    acc = EventAccumulator(str(cfg.tensorboard_dir), size_guidance={"scalars": 0})
    acc.Reload()
    for i, tag in enumerate(COLUMNS):
        events = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [step for step, _ in events] == [20, 40, budget], tag
        assert all(math.isclose(v, rolled[step][i], rel_tol=1e-6) for step, v in events), tag

    st = json.loads(datamove("status", cfg.study_dir, "--json").stdout)
    assert st["rollout_batch"] == budget and math.isclose(st["val_rollout_rel_l2"], rolled[budget][0], rel_tol=1e-9)
    text = datamove("status", cfg.study_dir).stdout
    assert f"held-out rollout relative L2 {rolled[budget][0]:.3e} at the last step (at batch {budget})" in text


def test_status_of_a_study_without_rollouts_says_nothing_of_them(tiny_config):
    """The column is empty in every row (direct samples): no rollout line, None in --json."""
    from datamove.ensemble.members import make_heldout, run_member
    from datamove.training.offline import train_offline

    path = tiny_config(stream={"engine": "BP5"}, offline={"loader_workers": 0, "reader": "memory"})
    cfg = StudyConfig.load(path)
    write_config(yaml.safe_load(path.read_text()), cfg.study_dir / "config.yaml")  # as the workflow does
    for member in range(cfg.ensemble.n_members):
        run_member(cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir)
    make_heldout(cfg)
    train_offline(cfg, budget_batches=20)
    assert all(r[c] == "" for r in metrics_rows(cfg) for c in COLUMNS)
    st = json.loads(datamove("status", cfg.study_dir, "--json").stdout)
    assert st["rollout_batch"] is None and st["val_rollout_rel_l2"] is None
    assert "rollout" not in datamove("status", cfg.study_dir).stdout


@pytest.mark.slow
def test_online_study_logs_rollouts(tiny_config, tmp_path):
    """A real online study (Snakemake, SST streams), with delta targets and input noise besides
    (one study for the three, to keep the suite short): the same columns from the same loop, the
    trainer's last heartbeat carries the last rollout error, and the delta model is saved and
    evaluated (its rollouts finite)."""
    path = ar_config(tiny_config, trainer={"target": "delta", "input_noise": 0.02},
                     evaluation={"enabled": True}, test={"n_members": 2})
    cfg = StudyConfig.load(path)
    proc = snakemake(tmp_path, path, "--cores", 2, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model, ckpt = load_surrogate(cfg.study_dir / "model.pt")
    assert model.delta and ckpt["config"]["trainer"]["input_noise"] == 0.02
    with open(cfg.study_dir / "evaluation.csv") as fh:
        ev = list(csv.DictReader(fh))
    assert ev and all(math.isfinite(float(r["rollout_rel_l2"])) for r in ev)
    rows = metrics_rows(cfg)
    last = int(rows[-1]["batch"])
    for r in rows:
        batch = int(r["batch"])
        due = batch % 20 == 0 or batch == last
        assert bool(r[COLUMNS[0]]) == due and bool(r[COLUMNS[1]]) == due, r
    assert math.isfinite(float(rows[-1][COLUMNS[0]]))
    horizon, _ = independent_rollout_errors(cfg)
    assert math.isclose(float(rows[-1][COLUMNS[0]]), horizon, rel_tol=1e-4)
    beat = read_heartbeat(cfg.heartbeat_path)["status"]
    assert beat["rollout_batch"] == last and math.isclose(beat["val_rollout_rel_l2"], horizon, rel_tol=1e-4)
    assert yaml.safe_load((cfg.study_dir / "config.yaml").read_text())["trainer"]["val_rollout_every"] == 20
