"""The workflow with stream.engine SST or BP5, and the online-versus-offline comparison study end to end."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, SNAKEMAKE, datamove, planned_jobs, snakemake
from datamove.config import StudyConfig, load_config
from datamove.evaluation.plots import FIGURES

def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_engine_bp5_alone_moves_a_study_to_disk(tiny_config, tmp_path):
    """The tiny study of test_workflow.test_tiny_online_study (SST, nothing stored) with one key
    changed; the comparison study below runs both engines from one config."""
    path = tiny_config(stream={"engine": "BP5"})
    cfg = StudyConfig.load(path)
    proc = snakemake(tmp_path, path, "--cores", 2, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (cfg.study_dir / "logs" / "train_offline").is_dir()
    assert not (cfg.study_dir / "logs" / "train_online").exists()
    metrics = rows(cfg.study_dir / "metrics.csv")
    assert float(metrics[-1]["val_loss"]) < float(metrics[0]["val_loss"])
    ledger = rows(cfg.study_dir / "ledger.csv")
    assert [r["status"] for r in ledger] == ["complete"] * cfg.ensemble.n_members
    stored = sorted(p.name for p in Path(cfg.results_dir).rglob("*.bp"))
    assert stored == [f"member-{m:06d}.bp" for m in range(cfg.ensemble.n_members)]


@pytest.mark.slow
def test_tiny_comparison_study_end_to_end(tiny_config, tmp_path):
    path = tiny_config(
        study="cmp",
        ensemble={"n_members": 4, "members_per_job": 2},
        test={"n_members": 2, "seed": 77},
        comparison={"enabled": True, "offline_members": 2, "budget": "batches"},
    )
    cfg = StudyConfig.load(path)
    proc = snakemake(tmp_path, path, "--cores", 2, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    study, online, offline = cfg.study_dir, cfg.study_dir / "online", cfg.study_dir / "offline"

    # The online arm streamed 4 members (2 jobs of 2) and stored none; the offline arm stored 2.
    assert [r["status"] for r in rows(online / "ledger.csv")] == ["complete"] * 4
    assert sorted(p.name for p in (online / "members").glob("job-*.json")) == ["job-000000.json", "job-000001.json"]
    assert json.loads((online / "members" / "job-000001.json").read_text())["members"][1]["member"] == 3
    assert not list(online.rglob("*.bp"))
    assert sorted(p.name for p in (offline / "streams").iterdir()) == ["member-000000.bp", "member-000001.bp"]
    # The same budget: the offline arm trained as many batches as the online arm.
    assert rows(offline / "metrics.csv")[-1]["batch"] == rows(online / "metrics.csv")[-1]["batch"]
    # Both arms validated on the same held-out members and were tested on the same test members.
    assert load_config(online / "config.yaml")["heldout"] == load_config(offline / "config.yaml")["heldout"]
    errors = {arm: pd.read_csv(study / arm / "evaluation.csv") for arm in ("online", "offline")}
    for arm in errors:
        assert sorted(errors[arm]["member"].unique()) == [0, 1]
        assert len(errors[arm]) == 2 * cfg.problem.n_steps
    assert errors["online"]["t_init"].tolist() == errors["offline"]["t_init"].tolist()

    # Figures, figure data and the table.
    for name in FIGURES:
        assert (study / "figures" / f"{name}.png").stat().st_size > 5000
    data = pd.read_csv(study / "figure_data.csv")
    assert set(data["arm"]) == {"online", "offline"}
    table = pd.read_csv(study / "results.csv").set_index("quantity")
    assert list(table.columns) == ["online", "offline", "online vs offline"]
    assert table.loc["test relative L2 error", "online vs offline"].endswith("%")
    assert table.loc["batch throughput (batches/s)", "online vs offline"].startswith("x")
    assert "| quantity | online | offline | online vs offline |" in out  # printed at the end
    assert (study / "results.md").read_text().startswith("| quantity |")

    # The summary: printed last, after Snakemake's own lines (to stdout), and kept in summary.txt;
    # each arm's members and test error as the table has them, what the disk holds.
    summary = (study / "summary.txt").read_text()
    assert proc.stdout.rstrip().endswith(summary.rstrip()), proc.stdout[-2000:]
    on, off = (f"{table.loc['test relative L2 error', arm]:.4f}" for arm in ("online", "offline"))
    lines = summary.splitlines()
    assert any(line.split() == ["online", "(SST)", "4", on] for line in lines), summary
    assert any(line.split() == ["offline", "(BP5)", "2", off] for line in lines), summary
    gain = table.loc["test relative L2 error", "online vs offline"].lstrip("+-")
    assert f"Online training is {gain}" in " ".join(lines), summary
    assert "the offline arm's 2 members" in " ".join(lines) and "never written" in summary
    assert "--report" in summary and f"{study.name}/report.html" in summary
    # Again from its files (the same paths from the same folder; the report's command names the
    # config files it is given).
    again = datamove("summary", study, cwd=tmp_path).stdout.strip().splitlines()
    assert again[:-1] == summary.strip().splitlines()[:-1] and "--configfile" not in again[-1]

    # One HTML page of the study.
    report = tmp_path / "report.html"
    proc = snakemake(tmp_path, path, "--report", report, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = report.read_text(errors="replace")
    for name in FIGURES:
        assert f"{name}.png" in html
    assert "results.csv" in html
    assert "members trained on" in html  # the summary, on the front page


def test_comparison_dry_run_lists_both_arms(tiny_config, tmp_path):
    path = tiny_config(comparison={"enabled": True, "offline_members": 2}, ensemble={"members_per_job": 2})
    proc = snakemake(tmp_path, path, "--cores", 2, "-n", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for rule in ("online_train_online", "online_simulate_members", "online_open_gate", "offline_simulate_members",
                 "offline_train_offline", "make_testset", "collect_figure_data", "make_results_table",
                 *(f"plot_{name}" for name in FIGURES)):
        assert rule in proc.stdout, rule
    assert "offline_train_online" not in proc.stdout and "offline_open_gate" not in proc.stdout
    lint = snakemake(tmp_path, path, "--lint", timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("name", ["config.yaml", "workstation.yaml", "fullscale.yaml"])
def test_shipped_study_configs_are_valid(name):
    cfg = StudyConfig.load(REPO / "config" / name)
    assert cfg.comparison.enabled and cfg.study == yaml.safe_load((REPO / "config" / name).read_text())["study"]
    assert cfg.comparison.offline_members < cfg.ensemble.n_members


def test_the_default_study_compares_and_hands_no_comparison_to_another_study(tmp_path):
    """The README's first command runs config/config.yaml: online against offline with figures,
    table and summary. Under a --configfile, its keys are the other study's defaults, but not its
    comparison: that study compares only where its own config says so."""
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    here = ["--config", f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}"]
    plan = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "2", "-n", *here],
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    jobs = planned_jobs(plan.stdout)
    assert jobs["online_train_online"] == 1 and jobs["offline_train_offline"] == 1, jobs
    assert jobs["summarize"] == 1 and jobs["make_results_table"] == 1, jobs
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"study": "mine", "trainer": {"model": "fno"}}))
    proc = snakemake(tmp_path, mine, "--cores", 2, "-n", *here, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = planned_jobs(proc.stdout)
    assert jobs.get("train_online") == 1 and not any(rule.startswith("offline_") for rule in jobs), jobs
    # The default's other keys stay: its members, in jobs of 8.
    assert jobs["simulate_members"] == 4, jobs
    mine.write_text(yaml.safe_dump({"study": "mine", "comparison": {"offline_members": 2}}))
    proc = snakemake(tmp_path, mine, "--cores", 2, "-n", *here, timeout=120)
    assert proc.returncode == 0 and "offline_train_offline" not in proc.stdout, proc.stdout + proc.stderr
    mine.write_text(yaml.safe_dump({"study": "mine", "comparison": {"enabled": True}}))
    proc = snakemake(tmp_path, mine, "--cores", 2, "-n", *here, timeout=120)
    assert proc.returncode == 0 and "offline_train_offline" in proc.stdout, proc.stdout + proc.stderr


def test_default_config_dry_run(tmp_path):
    proc = snakemake(tmp_path, REPO / "config" / "config.yaml", "--cores", 2, "-n", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "online_simulate_members" in proc.stdout and "offline_train_offline" in proc.stdout
