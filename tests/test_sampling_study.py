"""The sampling study (snakemake compare_sampling): its runs, table and figure, end to end at the
size of config/sampling-tiny.yaml, and the full config/sampling.yaml as a dry run."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from datamove.config import StudyConfig, load_config
from datamove.studies.sampling import COLUMNS, KIND, gains, markdown

from conftest import REPO, planned_jobs, snakemake


def tiny_study(tmp_path, **overrides):
    raw = yaml.safe_load((REPO / "config" / "sampling-tiny.yaml").read_text())
    raw.update(results_dir=str(tmp_path / "results"), data_dir=str(tmp_path / "data"), **overrides)
    path = tmp_path / "sampling.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_full_study_is_six_runs_and_each_changes_only_sampler_and_seeds(tmp_path):
    raw = load_config(REPO / "config" / "sampling.yaml")
    path = tmp_path / "sampling.yaml"  # with run_cores 3 (--config would pass it as a string)
    path.write_text(yaml.safe_dump({**raw, "sampling_study": {**raw["sampling_study"], "run_cores": 3}}, sort_keys=False))
    result = snakemake(tmp_path, path, "-n", "-p", "compare_sampling",
                       "--config", f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for sampler in ("halton", "adaptive"):
        for seed in (0, 1, 2):
            assert f"run={sampler}-seed{seed}" in out
    # One run at a time, each holding the one study_runs, its config its only input.
    assert out.count("study_runs=1") == planned_jobs(out)["run_sampling_study"] == 6
    assert out.count("--cores 3 --nolock") == 6  # sampling_study.run_cores: each nested run's --cores
    base = load_config(REPO / "config" / "sampling.yaml")
    one = KIND.run_config(base, root=tmp_path / "r", data_root=tmp_path / "d", sampler="halton", seed=2)
    two = KIND.run_config(base, root=tmp_path / "r", data_root=tmp_path / "d", sampler="adaptive", seed=2)
    differ = {k for k in one if one[k] != two[k]}
    assert differ == {"study", "parameters"}
    assert one["parameters"]["sampler"] == "halton" and two["parameters"]["sampler"] == "adaptive"
    assert one["ensemble"]["seed"] == one["trainer"]["seed"] == 2 and one["trainer"]["batch_budget"] == 60000
    a, b = StudyConfig.from_dict(one), StudyConfig.from_dict(two)
    assert a.test == b.test and a.heldout == b.heldout  # the same test members for every run
    # A run's config (which decides when it reruns) is the same in a study with more seeds or samplers.
    more = {**base, "sampling_study": {**base["sampling_study"], "seeds": [0, 1, 2, 3]}}
    assert KIND.run_config(more, root=tmp_path / "r", data_root=tmp_path / "d", sampler="halton", seed=2) == one


def test_samplers_whose_test_members_differ_are_refused(tmp_path):
    path = tiny_study(tmp_path, sampling_study={"samplers": ["uniform", "adaptive"], "seeds": [0]})
    result = snakemake(tmp_path, path, "-n", "compare_sampling", timeout=120)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "sampling_study.samplers" in out and "parameters.adaptive.base" in out
    # Checked when the sampling study is planned, not in every workflow: the study itself runs.
    result = snakemake(tmp_path, path, "-n", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.study
def test_the_tiny_study_runs_end_to_end(tmp_path):
    path = tiny_study(tmp_path)
    result = snakemake(tmp_path, path, "--cores", "2", "compare_sampling", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    root = tmp_path / "results" / "sampling-tiny" / "sampling"
    summary = pd.read_csv(root / "sampling.csv")
    assert list(summary.columns) == list(COLUMNS)
    assert [tuple(r) for r in summary[["sampler", "seed"]].itertuples(index=False)] == [("halton", 0), ("adaptive", 0)]
    budget = yaml.safe_load(path.read_text())["trainer"]["batch_budget"]
    assert (summary["batches"] == budget).all()  # an equal budget, whatever the solvers' pace
    assert (summary["members_complete"] == 6).all() and (summary["test_members"] == 6).all()
    assert summary.loc[summary["sampler"] == "halton", "members_from_proposal"].item() == 0
    assert summary.loc[summary["sampler"] == "adaptive", "members_from_proposal"].item() >= 1
    for col in ("mse", "rel_l2"):
        assert (summary[f"{col}_mean"] <= summary[f"{col}_p99"]).all()
        assert (summary[f"{col}_p99"] <= summary[f"{col}_max"]).all()
    # The table's gain is what the rows say.
    g = gains(summary, "halton").set_index("stat")
    ref, ada = summary.iloc[0], summary.iloc[1]
    assert g.loc["mse_max", "gain_mean"] == pytest.approx(1 - ada["mse_max"] / ref["mse_max"])
    text = (root / "sampling.md").read_text()
    assert text == markdown(summary, "halton") and "Gain over halton" in text
    assert (root / "sampling.png").stat().st_size > 10_000
    # Every run's test members are the same ones.
    evals = [pd.read_csv(root / "runs" / f"{s}-seed0" / "evaluation.csv") for s in ("halton", "adaptive")]
    assert evals[0][["member", "step", "time"]].equals(evals[1][["member", "step", "time"]])
    # A run done again (its output deleted, and the table, which Snakemake would otherwise leave
    # as it is) does not make the run after it run again, as a chain of runs did.
    (root / "runs" / "halton-seed0" / "evaluation.csv").unlink()
    (root / "sampling.csv").unlink()
    plan = snakemake(tmp_path, path, "-n", "--cores", "2", "compare_sampling", timeout=300)
    assert plan.returncode == 0, plan.stderr[-4000:]
    assert planned_jobs(plan.stdout + plan.stderr) == {"run_sampling_study": 1, "compare_sampling": 1, "total": 2}
