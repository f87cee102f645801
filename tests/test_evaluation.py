"""Test-set evaluation, the figure data, the results table, the figures and the arms of a study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import model_args

from datamove.config import ConfigError, StudyConfig, load_config, validate_config
from datamove.ensemble.members import make_testset
from datamove.evaluation.arms import arm_config, arm_dirs, arm_name
from datamove.evaluation.errors import evaluate_members, map_steps, pooled
from datamove.evaluation.plots import FIGURES, plot
from datamove.evaluation.report import COLUMNS, collect_figure_data, format_table, results_table, write_table
from datamove.evaluation.tables import write_csv
from datamove.training.records import METRIC_COLUMNS
from datamove.training.step import build_surrogate


class Exact(torch.nn.Module):
    """A 'surrogate' that returns a fixed field plus an offset: errors are known in closed form."""

    def __init__(self, field: torch.Tensor, offset: float, y_span: float):
        super().__init__()
        self.field, self.offset = field, offset
        self.register_buffer("y_span", torch.tensor(y_span))
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.field.expand(x.shape[0], *self.field.shape) + self.offset


def test_errors_match_their_definitions(tiny_config):
    cfg = StudyConfig.load(tiny_config(test={"n_members": 2, "seed": 5}))
    make_testset(cfg)
    field = torch.full((1, cfg.problem.config.ny, cfg.problem.config.nx), 300.0)
    model = Exact(field, 0.0, y_span=400.0)
    errors, maps = evaluate_members(model, cfg, arm="online")
    assert len(errors) == 2 * cfg.problem.n_steps
    assert list(errors.columns[:4]) == ["arm", "member", "step", "time"]
    assert set(cfg.ensemble.names) <= set(errors.columns)
    # Recompute one sample by hand from the stored truth.
    from datamove.data import load_members

    truth = next(load_members(cfg, cfg.test_dir, cfg.test, missing="")).fields[:, 0]
    err = 300.0 - truth[3].astype(np.float64)
    row = errors[(errors.member == 0) & (errors.step == 4)].iloc[0]
    assert row["mse"] == pytest.approx(np.mean(err**2) / 400.0**2)
    assert row["rel_l2"] == pytest.approx(np.linalg.norm(err) / np.linalg.norm(truth[3]))
    # Pooled: the normalised MSE is the mean over samples, the relative L2 pools the sums.
    overall = pooled(errors).iloc[0]
    assert overall["mse"] == pytest.approx(errors["mse"].mean())
    assert overall["rel_l2"] == pytest.approx(np.sqrt(errors.sq_err.sum() / errors.sq_truth.sum()))
    per_step = pooled(errors, ["step"])
    assert len(per_step) == cfg.problem.n_steps and per_step["samples"].eq(2).all()
    # Maps of member 0 at the first, middle and last steps; the error is prediction - truth.
    assert sorted(maps["step"].unique()) == [s + 1 for s in map_steps(cfg.problem.n_steps)]
    at = maps[(maps.step == 1)].pivot_table(index=["iy", "ix"], columns="kind", values="value")
    np.testing.assert_allclose(at["error"], at["prediction"] - at["truth"], atol=1e-4)


def test_a_perfect_model_has_zero_error(tiny_config):
    cfg = StudyConfig.load(tiny_config(test={"n_members": 1, "seed": 5}))
    make_testset(cfg)
    from datamove.data import load_members

    truth = next(load_members(cfg, cfg.test_dir, cfg.test, missing="")).fields

    class Lookup(Exact):
        def forward(self, x):
            return torch.from_numpy(truth)

    errors, _ = evaluate_members(Lookup(torch.zeros(1), 0.0, 1.0), cfg, arm="offline")
    assert errors["mse"].max() == 0.0 and errors["rel_l2"].max() == 0.0


def test_maps_are_subsampled(tiny_config):
    cfg = StudyConfig.load(tiny_config(test={"n_members": 1, "seed": 5}, evaluation={"map_max_side": 8}))
    make_testset(cfg)
    model = build_surrogate(model_args(cfg))
    _, maps = evaluate_members(model, cfg, arm="online")
    assert maps["ix"].nunique() <= 8 and maps["iy"].nunique() <= 8


def test_arm_configs(tiny_config):
    raw = load_config(tiny_config(comparison={"enabled": True, "offline_members": 2}, ensemble={"n_members": 5}))
    online, offline = (StudyConfig.from_dict(arm_config(raw, a)) for a in ("online", "offline"))
    assert online.stream.engine == "SST" and online.ensemble.n_members == 5
    assert offline.stream.engine == "BP5" and offline.ensemble.n_members == 2
    assert offline.ensemble.seed == online.ensemble.seed  # the offline members are the online's first ones
    assert online.study_dir.name == "online" and offline.study_dir.name == "offline"
    assert online.heldout_dir == offline.heldout_dir and online.test_dir == offline.test_dir
    assert online.evaluation.enabled and offline.evaluation.enabled
    study = StudyConfig.from_dict(raw)
    assert arm_dirs(study) == {"online": study.study_dir / "online", "offline": study.study_dir / "offline"}
    assert arm_dirs(offline) == {"offline": offline.study_dir} and arm_name(offline) == "offline"
    single = StudyConfig.load(tiny_config(stream={"engine": "BP5"}))
    assert arm_dirs(single) == {"offline": single.study_dir}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"test": {"seed": 0}}, "key 'test.seed': equals ensemble.seed"),
        ({"test": {"seed": 1000}}, "key 'test.seed': equals heldout.seed"),
        ({"test": {"n_members": 2}, "evaluation": {"map_member": 2}}, "key 'evaluation.map_member'"),
        ({"ensemble": {"members_per_job": 0}}, "key 'ensemble.members_per_job'"),
        ({"offline": {"reader": "mmap"}}, "key 'offline.reader'"),
        ({"comparison": {"budget": "epochs"}}, "key 'comparison.budget'"),
        ({"arm": "both"}, "key 'arm'"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(overrides)


def _fake_arm(folder, arm, cfg, *, error_scale, batches, seconds, seen=None):
    """The files a trained, evaluated arm leaves in its folder."""
    folder.mkdir(parents=True)
    n = 5
    metrics = pd.DataFrame({c: 0.0 for c in METRIC_COLUMNS}, index=range(n))
    metrics["batch"] = np.linspace(batches / n, batches, n).astype(int)
    metrics["wall_s"] = np.linspace(seconds / n, seconds, n)
    metrics["val_loss"] = np.linspace(0.1, 0.01, n)
    metrics["train_loss"] = np.linspace(0.1, 0.01, n)
    metrics["batches_per_s"] = batches / seconds
    metrics["samples_per_s"] = batches / seconds * cfg.trainer.batch_size
    metrics["occupancy"] = 1.0
    metrics.to_csv(folder / "metrics.csv", index=False)
    pd.DataFrame({"member": [0, 1], "steps_expected": 20, "steps_received": 20, "status": "complete", "reason": ""}).to_csv(
        folder / "ledger.csv", index=False
    )
    rows = []
    for member in range(2):
        for step in range(1, 4):
            sq_truth = 100.0
            rows.append({"arm": arm, "member": member, "step": step, "time": step * 0.01,
                         **{name: 100.0 * (member + 1) for name in cfg.ensemble.names},
                         "mse": error_scale, "rel_l2": np.sqrt(error_scale), "sq_err": error_scale * sq_truth,
                         "sq_truth": sq_truth, "n_points": 4})
    pd.DataFrame(rows).to_csv(folder / "evaluation.csv", index=False)
    iy, ix = np.meshgrid(range(2), range(2), indexing="ij")
    maps = [pd.DataFrame({"arm": arm, "member": 0, "step": s, "time": s * 0.01, "kind": kind,
                          "iy": iy.ravel(), "ix": ix.ravel(), "value": 300.0})
            for s in (1, 3) for kind in ("truth", "prediction", "error")]
    pd.concat(maps).to_csv(folder / "maps.csv", index=False)
    if seen is not None:
        pd.DataFrame({"times_seen": list(seen), "samples": list(seen.values())}).to_csv(folder / "seen.csv", index=False)


@pytest.fixture
def comparison_study(tiny_config):
    cfg = StudyConfig.load(tiny_config(comparison={"enabled": True, "offline_members": 2}))
    dirs = arm_dirs(cfg)
    _fake_arm(dirs["online"], "online", cfg, error_scale=0.01, batches=1000, seconds=10.0)
    _fake_arm(dirs["offline"], "offline", cfg, error_scale=0.04, batches=1000, seconds=40.0, seen={24: 30, 25: 10})
    return cfg


def test_figure_data_and_results_table(comparison_study, tmp_path):
    data = collect_figure_data(comparison_study)
    assert list(data.columns) == COLUMNS
    assert set(data["figure"]) == {"loss_curves", "throughput", "test_error", "error_maps", "reservoir",
                                   "seen_histogram", "parameter_space", "table"}
    assert set(data[data.figure == "seen_histogram"]["arm"]) == {"offline"}  # the online checkpoint has no counters
    table = results_table(data).set_index("quantity")
    assert table.loc["test MSE (normalised)", "online vs offline"] == "+75.0 %"
    assert table.loc["test relative L2 error", "online vs offline"] == "+50.0 %"
    assert table.loc["batch throughput (batches/s)", "online vs offline"] == "x4.00"
    assert table.loc["batch throughput (batches/s)", "online"] == pytest.approx(100.0)
    text = write_table(data, tmp_path / "results.csv", tmp_path / "results.md")
    assert text.startswith("| quantity | online | offline | online vs offline |")
    assert (tmp_path / "results.md").read_text().strip() == text
    assert pd.read_csv(tmp_path / "results.csv").shape == (len(table), 4)


def test_single_arm_table_has_no_comparison_column(tiny_config):
    cfg = StudyConfig.load(tiny_config(stream={"engine": "BP5"}))
    _fake_arm(cfg.study_dir, "offline", cfg, error_scale=0.04, batches=100, seconds=4.0)
    table = results_table(collect_figure_data(cfg))
    assert list(table.columns) == ["quantity", "offline"]
    assert "| quantity | offline |" in format_table(table)


@pytest.mark.parametrize("figure", sorted(FIGURES))
def test_every_figure_draws_from_the_figure_data(comparison_study, tmp_path, figure):
    data_csv = tmp_path / "figure_data.csv"
    collect_figure_data(comparison_study).to_csv(data_csv, index=False)
    out = plot(figure, data_csv, tmp_path / "figures" / f"{figure}.png")
    assert out.stat().st_size > 5000


def test_unknown_figure_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown figure 'pie'"):
        plot("pie", tmp_path / "x.csv", tmp_path / "x.png")


def test_a_summary_csv_is_read_back_as_written(tmp_path):
    """write_csv returns the frame its CSV holds: floats at the format given (a Markdown table built
    from it then agrees with the CSV to the digit), other columns as they were."""
    frame = pd.DataFrame({"model": ["fc", "fno"], "seed": [0, 1], "gain": [-1.0505000001, 0.1234567891]})
    back = write_csv(frame, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines()[1:] == ["fc,0,-1.0505", "fno,1,0.123457"]
    assert back["gain"].tolist() == [-1.0505, 0.123457] and back["model"].tolist() == ["fc", "fno"]
    assert back["seed"].tolist() == [0, 1]
    assert write_csv(frame, tmp_path / "u.csv", float_format="%.10g")["gain"].tolist() == [-1.0505, 0.1234567891]
