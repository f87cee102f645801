"""The offline arm: BP5 member files, the dataset over them, the offline trainer and its errors."""

from __future__ import annotations

import csv
import dataclasses
import shutil

import numpy as np
import pytest
import torch

from conftest import datamove, read_member
from datamove.config import StudyConfig
from datamove.ensemble.members import job_members, n_jobs, run_member, simulate_job
from datamove.streaming.contract import join_names, stream_path
from datamove.streaming.files import MemberFile
from datamove.streaming.writer import MemberWriter
from datamove.data import DatasetError
from datamove.data.dataset import MemberDataset, make_loader
from datamove.training.offline import online_budget
from datamove.training.records import METRIC_COLUMNS


def bp5_config(tiny_config, **overrides):
    """A tiny BP5 study whose member files and held-out members are written (in this process)."""
    path = tiny_config(stream={"engine": "BP5"}, **overrides)
    cfg = StudyConfig.load(path)
    for member in range(cfg.ensemble.n_members):
        run_member(cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir)
    return path, cfg


def test_member_file_random_access_matches_sequential_read(tiny_config):
    _, cfg = bp5_config(tiny_config)
    path = stream_path(cfg.stream_dir, 1, "BP5")
    info, times, fields = read_member(cfg, path, 1)
    with MemberFile(path, 1, fields=("u",)) as mf:
        assert mf.n_steps == cfg.problem.n_steps and mf.field_shape == (cfg.problem.config.ny, cfg.problem.config.nx)
        np.testing.assert_array_equal(mf.times, times)
        np.testing.assert_array_equal(mf.info.params, info.params)
        for step in (7, 0, cfg.problem.n_steps - 1):  # any order
            np.testing.assert_array_equal(mf.read_step(step), fields[step])
        np.testing.assert_array_equal(mf.read_all(), fields)
        with pytest.raises(IndexError):
            mf.read_step(cfg.problem.n_steps)


@pytest.mark.parametrize("reader", ["memory", "file"])
def test_dataset_indexes_member_and_step(tiny_config, reader):
    _, cfg = bp5_config(tiny_config, offline={"reader": reader})
    ds = MemberDataset.from_config(cfg)
    n = cfg.problem.n_steps
    assert len(ds) == cfg.ensemble.n_members * n
    _, times, fields = read_member(cfg, stream_path(cfg.stream_dir, 2, "BP5"), 2)
    x, y, i = ds[2 * n + 5]
    assert i == 2 * n + 5
    torch.testing.assert_close(y, torch.from_numpy(fields[5]))
    params = torch.as_tensor(cfg.ensemble.params(2), dtype=torch.float32)
    torch.testing.assert_close(x, torch.cat([params, torch.tensor([times[5]], dtype=torch.float32)]))
    xb, yb, ib = ds.__getitems__([2 * n + 5, 3, n])
    assert xb.shape == (3, 6) and yb.shape == (3, 1, cfg.problem.config.ny, cfg.problem.config.nx) and ib.tolist() == [2 * n + 5, 3, n]
    torch.testing.assert_close(yb[0], y)
    ds.close()


def test_loader_workers_shuffle_every_epoch_and_cover_the_dataset(tiny_config):
    _, cfg = bp5_config(tiny_config)
    ds = MemberDataset.from_config(cfg)
    loader = make_loader(ds, batch_size=4, workers=1, seed=0)  # a worker process opens its own files
    epochs = [torch.cat([idx for _, _, idx in loader]) for _ in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(len(ds)))  # 60 samples, batch 4: nothing dropped
    assert epochs[0].tolist() != epochs[1].tolist()
    x, y, idx = next(iter(loader))
    for k in range(len(idx)):
        xk, yk, _ = ds[int(idx[k])]
        torch.testing.assert_close(y[k], yk)
        torch.testing.assert_close(x[k], xk)
    del loader


def _write(cfg, member, *, names=None, solver="heat", nx=None, steps=None):
    """A member file written by hand, to break one thing at a time."""
    ny, nx = cfg.problem.config.ny, nx or cfg.problem.config.nx
    attrs = {"member": member, "params": cfg.ensemble.params(member),
             "param_names": join_names(names or cfg.ensemble.names), "solver": solver, "nx": nx, "ny": ny}
    with MemberWriter(stream=cfg.stream, stream_dir=cfg.stream_dir, member=member, attributes=attrs) as w:
        for k in range(steps or cfg.problem.n_steps):
            w.write_step(time=(k + 1) * cfg.problem.config.dt, fields={"u": np.full((ny, nx), 300.0, np.float32)})


@pytest.mark.parametrize(
    "breakage, message",
    [
        ({"nx": 13}, "fields of 10 x 13 (config: 10 x 12)"),
        ({"names": ["a", "b", "c", "d", "e"]}, "param_names ['a', 'b', 'c', 'd', 'e']"),
        ({"solver": "wave"}, "solver 'wave' (config: solver.name 'heat')"),
        ({"steps": 7}, "is truncated: 7 steps, the config expects solver.n_steps = 20"),
    ],
)
def test_mismatched_member_file_is_refused_naming_the_file(tiny_config, breakage, message):
    _, cfg = bp5_config(tiny_config)
    shutil.rmtree(stream_path(cfg.stream_dir, 1, "BP5"))
    _write(cfg, 1, **breakage)
    with pytest.raises(DatasetError) as err:
        MemberDataset.from_config(cfg)
    assert str(stream_path(cfg.stream_dir, 1, "BP5")) in str(err.value)
    assert message in str(err.value)


def test_missing_member_file_is_named(tiny_config):
    _, cfg = bp5_config(tiny_config)
    shutil.rmtree(stream_path(cfg.stream_dir, 2, "BP5"))
    with pytest.raises(DatasetError, match=r"member file .*member-000002\.bp not found"):
        MemberDataset.from_config(cfg)


@pytest.mark.parametrize("damage", ["data", "metadata"])
def test_corrupt_member_file_is_named(tiny_config, damage):
    _, cfg = bp5_config(tiny_config)
    folder = stream_path(cfg.stream_dir, 0, "BP5")
    target = folder / ("data.0" if damage == "data" else "md.0")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])  # cut short, as by a full disk
    with pytest.raises(DatasetError) as err:
        MemberDataset.from_config(cfg)
    assert str(folder) in str(err.value)


def test_files_of_another_ensemble_are_refused(tiny_config):
    path, cfg = bp5_config(tiny_config)
    other = StudyConfig.from_dict({**cfg.raw, "ensemble": {**cfg.raw["ensemble"], "seed": 7}})
    with pytest.raises(DatasetError, match="was written with params"):
        MemberDataset.from_config(other)


def test_jobs_run_several_members_in_one_process(tiny_config):
    path = tiny_config(stream={"engine": "BP5"}, ensemble={"n_members": 5, "members_per_job": 2})
    cfg = StudyConfig.load(path)
    assert n_jobs(cfg) == 3 and job_members(cfg, 0) == [0, 1] and job_members(cfg, 2) == [4]
    with pytest.raises(ValueError, match="outside"):
        job_members(cfg, 3)
    marker = cfg.study_dir / "members" / "job-000001.json"
    datamove("simulate", "--config", path, "--job", 1, "--marker", marker)
    assert [p.name for p in sorted(cfg.stream_dir.iterdir())] == ["member-000002.bp", "member-000003.bp"]
    assert (cfg.study_dir / "members" / "member-000003.json").exists()
    summaries = simulate_job(cfg, 2)
    assert [s["member"] for s in summaries] == [4]


def test_train_offline_cli(tiny_config, tmp_path):
    path, cfg = bp5_config(tiny_config, offline={"epochs": 4}, trainer={"batch_size": 4})  # 60 samples
    datamove("make-heldout", "--config", path)
    out = datamove("train-offline", "--config", path, "--threads", 1).stdout
    assert "stopped by epochs" in out
    with open(cfg.study_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == METRIC_COLUMNS  # the online trainer's columns
    samples = cfg.ensemble.n_members * cfg.problem.n_steps
    assert int(rows[-1]["batch"]) == 4 * (samples // cfg.trainer.batch_size)
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    with open(cfg.study_dir / "seen.csv") as fh:
        seen = {int(r["times_seen"]): int(r["samples"]) for r in csv.DictReader(fh)}
    assert seen == {4: samples}
    ckpt = torch.load(cfg.study_dir / "model.pt", weights_only=False)
    assert ckpt["trainer"] == "offline" and ckpt["step"] == int(rows[-1]["batch"])

    # The comparison's budget: as many batches as the online arm, whatever offline.epochs says.
    online = tmp_path / "online-metrics.csv"
    online.write_text("batch,wall_s\n10,1.0\n33,2.5\n")
    assert online_budget(online, "batches") == 33 and online_budget(online, "seconds") == 2.5
    out = datamove("train-offline", "--config", path, "--threads", 1, "--budget-from", online).stdout
    assert "33 batches" in out and "stopped by batches" in out


def test_train_offline_refuses_sst_and_a_broken_dataset(tiny_config):
    sst = tiny_config("sst.yaml")
    proc = datamove("train-offline", "--config", sst, check=False)
    assert proc.returncode == 2 and "stream.engine is SST" in proc.stderr
    path, cfg = bp5_config(tiny_config)
    datamove("make-heldout", "--config", path)
    shutil.rmtree(stream_path(cfg.stream_dir, 1, "BP5"))
    proc = datamove("train-offline", "--config", path, check=False)
    assert proc.returncode == 3 and "member-000001.bp not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_offline_budget_in_seconds(tiny_config):
    from datamove.ensemble.members import make_heldout
    from datamove.training.offline import train_offline

    path, cfg = bp5_config(tiny_config, offline={"loader_workers": 0, "reader": "file"})
    make_heldout(cfg)
    torch.set_num_threads(1)
    result = train_offline(cfg, budget_seconds=0.5)
    assert result.stopped_by == "seconds" and 0.5 <= result.wall_s < 5
    assert result.epochs > 1
    assert dataclasses.asdict(result)["batches"] > 0
