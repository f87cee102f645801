"""The policy study (datamove.studies.policies, run by workflow/rules/studies.smk): its runs'
configs, the summary table and the figure, and a dry run of the rules."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY, _merge, planned_jobs
from datamove.config import ConfigError, load_config, validate_config
from datamove.reservoir import POLICIES
from datamove.studies.policies import KIND, SUMMARY_COLUMNS, plot_policy_study
from datamove.studies.sweep import require_complete


def study(**section):
    """The default study with policy_study's settings at the repository's files (and ``section``)."""
    settings = {s: str(REPO / "config" / f"policies-{s}.yaml") for s in ("fast", "slow")}
    return validate_config({**load_config(REPO / "config" / "config.yaml"),
                            "policy_study": {"settings": settings, **section}})


def test_every_registered_policy_is_in_the_study_under_every_setting():
    runs = [run.key(KIND.key) for run in KIND.runs(study())]
    assert runs == [(s, p) for s in ("fast", "slow") for p in POLICIES]
    assert [r.name for r in KIND.runs(study(only={"policies": ["fifo"]}))] == ["fast.fifo", "slow.fifo"]
    assert [r.name for r in KIND.runs(study(policies=["firo", "fifo"], only={"settings": ["slow"]}))] == [
        "slow.firo", "slow.fifo"]
    with pytest.raises(ValueError, match=r"key 'policy_study.only.settings': 'medium' is not one of the study's settings"):
        KIND.check(study(only={"settings": ["medium"]}))


@pytest.mark.parametrize("setting", ["fast", "slow"])
def test_setting_files_are_valid_and_differ_only_in_producer_speed(setting):
    cfg = load_config(REPO / "config" / f"policies-{setting}.yaml")
    other = load_config(REPO / "config" / f"policies-{'slow' if setting == 'fast' else 'fast'}.yaml")
    diff = {k for k in cfg if cfg[k] != other[k]}
    assert diff == {"study", "solver"}
    assert {k for k in cfg["solver"] if cfg["solver"][k] != other["solver"][k]} == {"step_delay_s"}


def test_a_run_is_its_setting_with_one_policy_and_its_folders(tmp_path):
    base = load_config(REPO / "config" / "policies-fast.yaml")
    cfg = KIND.run_config(study(), root=tmp_path / "res", data_root=tmp_path / "d", setting="fast", policy="firo")
    assert cfg["reservoir"]["policy"] == "firo" and cfg["study"] == "fast.firo"
    assert cfg["results_dir"] == str(tmp_path / "res") and cfg["data_dir"] == str(tmp_path / "d")
    for key in ("solver", "trainer", "ensemble", "heldout", "stream"):
        assert cfg[key] == base[key]
    assert cfg["policy_study"]["settings"] == {}  # a run plans no study of its own
    with pytest.raises(ConfigError, match="reservoir.policy"):
        KIND.run_config(study(), root="r", data_root="d", setting="fast", policy="lifo")
    missing = study(settings={"fast": str(tmp_path / "nowhere.yaml")})
    with pytest.raises(ValueError, match=r"key 'policy_study.settings.fast': .*nowhere.yaml: no such file"):
        KIND.run_config(missing, root="r", data_root="d", setting="fast", policy="fifo")


def fake_run(folder, *, val_losses, batch_size=8, steps=20, members=2):
    """The files a finished sub-study leaves: metrics.csv, ledger.csv, members/, config.yaml."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": {"batch_size": batch_size}}))
    rows = [{"batch": 10 * (i + 1), "wall_s": 2.0 * (i + 1), "val_loss": v, "n_evicted": 5, "evicted_unseen": 1,
             "n_dropped": "", "seen_mean": 1.5} for i, v in enumerate(val_losses)]
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    pd.DataFrame([{"member": m, "steps_expected": steps, "steps_received": steps, "status": "complete"}
                  for m in range(members)]).to_csv(folder / "ledger.csv", index=False)
    (folder / "members").mkdir()
    for m in range(members):
        (folder / "members" / f"member-{m:06d}.json").write_text(
            json.dumps({"member": m, "steps": steps, "open_s": 0.5, "solve_s": 0.5, "total_s": 2.5}))


def test_summary_and_figure(tmp_path):
    runs = {}
    for setting in ("fast", "slow"):
        for k, policy in enumerate(("fifo", "reservoir")):
            runs[(setting, policy)] = tmp_path / setting / policy
            fake_run(runs[(setting, policy)], val_losses=[0.5, 0.1 + k, 0.2])
    frames = KIND.collect(runs)
    summary = frames["summary"]
    assert list(summary.columns) == list(SUMMARY_COLUMNS) and len(summary) == 4
    row = summary[(summary.setting == "fast") & (summary.policy == "fifo")].iloc[0]
    assert row.val_loss_final == 0.2 and row.val_loss_best == 0.1
    assert row.batches == 30 and row.batches_per_s == pytest.approx(30 / 6.0)
    assert row.trained_samples_per_s == pytest.approx(30 * 8 / 6.0)
    assert row.samples_received == row.steps_expected == 40 and row.members_complete == 2
    assert row.solver_steps_per_s == pytest.approx(40 / 4.0) and row.solver_wait_s == pytest.approx(3.0)
    assert pd.isna(row.n_dropped) and row.evicted_unseen == 1
    curves = frames["curves"]
    assert len(curves) == 4 * 3 and curves.loc[curves["policy"] == "reservoir", "val_loss"].max() == 1.1
    png = plot_policy_study(curves, summary, tmp_path / "out" / "policies.png")
    assert png.read_bytes()[:4] == b"\x89PNG"

def test_compare_policies_plans_every_run_one_after_another(tmp_path):
    """A dry run (no training; the study itself was removed from the suite: minutes, and load-
    sensitive in CI): one run per setting x policy, one at a time, then the comparison; `all`
    untouched."""
    (tmp_path / "config").mkdir()
    for setting in ("fast", "slow"):
        (tmp_path / "config" / f"policies-{setting}.yaml").write_text(yaml.safe_dump(TINY))
    main = _merge(TINY, {"results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data")})
    (tmp_path / "main.yaml").write_text(yaml.safe_dump(main))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "main.yaml"), "-n", "compare_policies"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    n = 2 * len(POLICIES)
    assert planned_jobs(proc.stdout) == {"write_policy_config": n, "run_policy_study": n, "compare_policies": 1,
                                         "total": 2 * n + 1}, proc.stdout
    # One run at a time, each holding the one study_runs (their throughputs are compared).
    assert proc.stdout.count("study_runs=1") == n
    assert "train_online" not in proc.stdout  # the default study is not part of it


def test_an_incomplete_run_is_refused(tmp_path):
    fake_run(tmp_path / "ok", val_losses=[0.1])
    require_complete(tmp_path / "ok" / "ledger.csv")
    pd.DataFrame([{"member": 0, "steps_expected": 20, "steps_received": 7, "status": "lost",
                   "reason": "ingest process crashed"}]).to_csv(tmp_path / "lost.csv", index=False)
    with pytest.raises(SystemExit, match="member 0: lost, 7/20 steps, ingest process crashed"):
        require_complete(tmp_path / "lost.csv")
