"""trainer.tensorboard: the trainers' metrics as TensorBoard event files, read back with TensorBoard's
own reader (tensorboard.backend.event_processing)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import datamove, snakemake
from datamove.config import ConfigError, StudyConfig
from datamove.run.heartbeat import read_heartbeat
from datamove.training.records import MetricsLog

# Columns every trainer logs (online and offline), each a scalar tag of its own.
TAGS = {"train_loss", "val_loss", "samples_per_s", "batches_per_s", "lr", "samples_received", "occupancy",
        "members_done", "wall_s", "seen_mean"}


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files under ``log_dir``: tag -> [(step, value)], as TensorBoard shows them."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def metrics_csv(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def row(batch: int, loss: float) -> dict:
    return {"batch": batch, "wall_s": batch / 10, "train_loss": loss, "val_loss": 2 * loss, "lr": 1e-3,
            "samples_received": batch, "note": "not a number"}


def test_rows_become_scalars_and_a_resumed_run_hides_the_batches_it_trains_again(tmp_path):
    tb = tmp_path / "tensorboard"
    crashed = MetricsLog(tmp_path / "metrics.csv", tensorboard=tb)
    for batch in (10, 20, 30, 40):
        crashed.log(row(batch, 1.0 / batch))
    # kill -9 after batch 40; its checkpoint was taken at batch 20 (rows 10 and 20)
    resumed = MetricsLog(tmp_path / "metrics.csv", rows=crashed.rows[:2], tensorboard=tb)
    resumed.log(row(30, 7.0))
    resumed.replace_last({**resumed.rows[-1], "samples_received": 99})  # the final row, brought up to date
    resumed.close()
    got = scalars(tb)
    assert set(got) == {"wall_s", "train_loss", "val_loss", "lr", "samples_received"}  # numbers only
    assert got["train_loss"] == [(10, pytest.approx(0.1)), (20, pytest.approx(0.05)), (30, 7.0)]
    assert got["samples_received"][-1] == (30, 99.0)  # TensorBoard shows the later value
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2
    # A fresh run starts the study's records afresh: its folder keeps no earlier run's events.
    fresh = MetricsLog(tmp_path / "metrics.csv", tensorboard=tb)
    fresh.log(row(10, 3.0))
    fresh.close()
    assert scalars(tb)["train_loss"] == [(10, 3.0)]


def test_missing_tensorboard_names_the_key_and_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now fails
    with pytest.raises(ConfigError) as err:
        MetricsLog(tmp_path / "metrics.csv", tensorboard=tmp_path / "tensorboard")
    assert "trainer.tensorboard" in str(err.value)
    assert "pip install 'datamove[tensorboard]'" in str(err.value)
    assert not (tmp_path / "metrics.csv").exists()  # stopped before touching the study's records


@pytest.mark.slow
def test_trainer_without_tensorboard_stops_before_any_stream(tiny_config):
    path = tiny_config(trainer={"tensorboard": True})
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    hide = "import sys; sys.modules['torch.utils.tensorboard'] = None; from datamove.cli import main; "
    proc = subprocess.run(
        [sys.executable, "-c", hide + f"sys.exit(main(['train', '--config', {str(path)!r}]))"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr  # a config error
    assert proc.stderr.startswith("datamove: key 'trainer.tensorboard': true needs TensorBoard")
    assert "pip install 'datamove[tensorboard]'" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (cfg.study_dir / "metrics.csv").exists()
    # No beat but a last one, which tells a workflow's gate at once why the trainer never started.
    beat = read_heartbeat(cfg.heartbeat_path)
    assert beat["seq"] == 1 and beat["stopped"].startswith("could not start: ConfigError: key 'trainer.tensorboard'")


def test_schema_default_is_off(tiny_config):
    cfg = StudyConfig.load(tiny_config())
    assert cfg.trainer.tensorboard is False
    assert cfg.tensorboard_dir == cfg.study_dir / "tensorboard"


def assert_matches_metrics(cfg: StudyConfig) -> None:
    """The event files hold every column of metrics.csv at its batches, with its values."""
    rows = metrics_csv(cfg.study_dir / "metrics.csv")
    got = scalars(cfg.tensorboard_dir)
    assert TAGS <= set(got), sorted(got)
    batches = [int(r["batch"]) for r in rows]
    assert [step for step, _ in got["train_loss"]] == batches
    for tag in ("train_loss", "val_loss", "lr"):
        want = [float(r[tag]) for r in rows]
        assert all(math.isclose(v, w, rel_tol=1e-6) for (_, v), w in zip(got[tag], want)), tag
    # The final row is brought up to date after the last batch: its value is the last shown.
    assert got["samples_received"][-1] == (batches[-1], float(rows[-1]["samples_received"]))


@pytest.mark.slow
def test_online_study_writes_event_files(tiny_config, tmp_path):
    path = tiny_config(trainer={"tensorboard": True})
    cfg = StudyConfig.load(path)
    proc = snakemake(tmp_path, path, "--cores", 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_matches_metrics(cfg)
    assert scalars(cfg.tensorboard_dir)["samples_received"][-1][1] == cfg.ensemble.n_members * cfg.problem.n_steps


@pytest.mark.slow
def test_offline_trainer_writes_event_files(tiny_config):
    path = tiny_config(stream={"engine": "BP5"}, trainer={"tensorboard": True}, offline={"epochs": 3})
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    for member in range(cfg.ensemble.n_members):
        datamove("simulate", "--config", path, "--member", member, "--marker", cfg.member_marker(member))
    datamove("train-offline", "--config", path)
    assert_matches_metrics(cfg)
