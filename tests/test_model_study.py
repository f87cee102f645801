"""The models study (snakemake compare_models): its runs and refusals, the aggregation of the arms'
errors (rollout columns included) on synthetic frames, end to end at the size of
config/models-tiny.yaml, and the full config/models.yaml as a dry run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from datamove.config import ConfigError, StudyConfig, load_config
from datamove.config import merge_config as merge
from datamove.studies import tables
from datamove.studies.models import COLUMNS, KIND, improvements, markdown, plot

from conftest import REPO, datamove, planned_jobs, run_keys, snakemake, summary_and_members


def study_file(tmp_path, name="models-tiny.yaml", **overrides):
    raw = yaml.safe_load((REPO / "config" / name).read_text())
    raw.update(results_dir=str(tmp_path / "results"), data_dir=str(tmp_path / "data"), **overrides)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --------------------------------------------------------------------------- runs and refusals


def test_the_full_study_plans_every_problem_model_and_seed(tmp_path):
    base = load_config(REPO / "config" / "models.yaml")
    path = tmp_path / "models.yaml"  # with run_cores 3 (--config would pass it as a string)
    path.write_text(yaml.safe_dump({**base, "model_study": {**base["model_study"], "run_cores": 3}}, sort_keys=False))
    result = snakemake(tmp_path, path, "-n", "-p", "compare_models",
                       "--config", f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    runs = run_keys(KIND, base)
    assert len(runs) == len(base["model_study"]["problems"]) * len(base["model_study"]["models"]) * 3
    assert out.count("--cores 3 --nolock") == len(runs)  # model_study.run_cores: each nested run's --cores
    for problem, model, seed in runs:
        assert f"run={problem}.{model}.seed{seed}" in out
    for problem in base["model_study"]["problems"]:
        cfgs = [StudyConfig.from_dict(KIND.run_config(base, root=tmp_path, data_root=tmp_path, problem=p, model=m, seed=k))
                for p, m, k in runs if p == problem]
        assert all(c.test == cfgs[0].test and c.test.n_members >= 50 for c in cfgs)  # the same 50+ test members
        assert all(c.comparison.enabled and c.problem.name == cfgs[0].problem.name for c in cfgs)


def test_seeds_change_only_the_seeds_and_a_problem_replaces_the_solver(tmp_path):
    base = load_config(REPO / "config" / "models-tiny.yaml")
    one = KIND.run_config(base, root=tmp_path, data_root=tmp_path, problem="heat", model="fno", seed=1)
    two = KIND.run_config(base, root=tmp_path, data_root=tmp_path, problem="heat", model="fno", seed=2)
    assert {k for k in one if one[k] != two[k]} == {"study", "ensemble", "trainer"}
    assert {k for k in one["trainer"] if one["trainer"][k] != two["trainer"][k]} == {"seed"}
    assert {k for k in one["ensemble"] if one["ensemble"][k] != two["ensemble"][k]} == {"seed"}
    assert one["study"] == "heat.fno.seed1" and one["comparison"]["enabled"] and one["model_study"]["models"] == {}
    # A model naming another trainer.model replaces model_args (fc's hidden would be refused by fno).
    assert one["trainer"]["model_args"] == {"modes": 4, "width": 8, "layers": 2}
    # A problem naming another solver replaces the heat solver's keys and ranges.
    ns = merge(base, {"solver": {"name": "navier-stokes", "n": 16, "n_steps": 10}})
    assert ns["solver"] == {"name": "navier-stokes", "n": 16, "n_steps": 10} and ns["parameters"]["ranges"] == {}
    assert merge(base, {"solver": {"nx": 14}})["solver"]["ny"] == base["solver"]["ny"]  # the same problem merges


def test_models_that_would_see_other_test_members_are_refused(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "models-tiny.yaml").read_text())
    raw["model_study"]["models"]["fno"]["test"] = {"n_members": 3}
    path = study_file(tmp_path, model_study=raw["model_study"])
    result = snakemake(tmp_path, path, "-n", "compare_models", timeout=120)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "model_study.models.fno" in out and "test.n_members" in out


def test_other_refusals_name_the_key():
    base = load_config(REPO / "config" / "models-tiny.yaml")
    bad = {**base, "model_study": {**base["model_study"], "seeds": [0, 2000]}}
    with pytest.raises(ValueError, match=r"model_study.seeds.*test.seed"):
        KIND.check(bad)
    grid = {**base, "model_study": {**base["model_study"], "models": {
        "fc": {}, "fno": {"trainer": {"model": "fno"}, "solver": {"nx": 16}}}}}
    with pytest.raises(ValueError, match=r"model_study.models.fno.*solver.nx"):
        KIND.check(grid)
    args = {**base, "model_study": {**base["model_study"], "models": {"fno": {"trainer": {"model": "fno", "model_args": {"hidden": 3}}}}}}
    with pytest.raises(ValueError, match=r"model_study.models.fno.*\['hidden'\] are not arguments of model 'fno'"):
        KIND.check(args)
    wrong = {**base, "model_study": {**base["model_study"], "models": {"fno": {"trainer": {"model": "fno", "batch_size": 0}}}}}
    with pytest.raises(ConfigError, match=r"models study run heat.fno.seed0(.|\n)*trainer.batch_size"):
        KIND.check(wrong)
    with pytest.raises(ConfigError, match="model_study.seed"):
        load_config_from({**base, "model_study": {"seed": [0]}})
    with pytest.raises(ConfigError, match="model_study.models"):
        load_config_from({**base, "model_study": {"models": {"f.c": {}}}})


def test_only_selects_problems_and_models_and_refuses_others():
    base = load_config(REPO / "config" / "models.yaml")
    part = load_config_from({**base, "model_study": {**base["model_study"], "only": {
        "problems": ["navier-stokes"], "models": ["fno", "fc"]}}})
    # The study's order, seed by seed, whatever the order of the selection.
    assert run_keys(KIND, part) == [("navier-stokes", m, k) for k in (0, 1, 2) for m in ("fc", "fno")]
    models = load_config_from({**base, "model_study": {**base["model_study"], "only": {"models": ["unet"]}}})
    assert run_keys(KIND, models) == [(p, "unet", k) for k in (0, 1, 2) for p in ("heat", "navier-stokes")]
    assert run_keys(KIND, load_config_from({**base, "model_study": {**base["model_study"], "only": {}}})) == run_keys(KIND, base)
    # A run's config does not depend on the selection (a part's runs are the whole study's).
    assert KIND.run_config(part, root="r", data_root="d", problem="navier-stokes", model="fno", seed=1) == \
        KIND.run_config(base, root="r", data_root="d", problem="navier-stokes", model="fno", seed=1)
    KIND.check(part)
    for key, only in (("problems", {"problems": ["burgers"]}), ("models", {"models": ["fc", "fnx"]})):
        bad = load_config_from({**base, "model_study": {**base["model_study"], "only": only}})
        with pytest.raises(ValueError, match=rf"key 'model_study.only.{key}': '(burgers|fnx)' is not one"):
            KIND.check(bad)
    with pytest.raises(ConfigError, match="model_study.only"):
        load_config_from({**base, "model_study": {"only": {"model": ["fc"]}}})


def load_config_from(raw):
    from datamove.config import validate_config

    return validate_config(raw)


# --------------------------------------------------------------------------- aggregation


def evaluation_frame(rng, *, members=4, steps=5, scale=1.0, rollout=False):
    """An evaluation.csv of ``members`` test members: rows (member, step), errors ``scale`` times a
    fixed random pattern (the same for every call with the same rng state)."""
    n = members * steps
    frame = pd.DataFrame({
        "arm": "x", "member": np.repeat(np.arange(members), steps), "step": np.tile(np.arange(2, steps + 2), members),
        "mse": scale * rng.uniform(1, 2, n), "sq_err": scale * rng.uniform(1, 2, n),
        "sq_truth": rng.uniform(50, 60, n), "n_points": 100,
    })
    frame["rel_l2"] = np.sqrt(frame["sq_err"] / frame["sq_truth"])
    if rollout:
        frame["rollout_mse"] = 3 * frame["mse"]
        frame["rollout_sq_err"] = 4 * frame["sq_err"]
        frame["rollout_rel_l2"] = np.sqrt(frame["rollout_sq_err"] / frame["sq_truth"])
    return frame


def write_arm(folder, evaluation, *, batches=300, wall_s=6.0, sample="direct"):
    folder.mkdir(parents=True)
    evaluation.to_csv(folder / "evaluation.csv", index=False)
    pd.DataFrame({"batch": [100, batches], "wall_s": [2.0, wall_s], "val_loss": [0.1, 0.05]}).to_csv(
        folder / "metrics.csv", index=False)
    (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": {"batch_size": 8, "world_size": 1, "sample": sample}}))


def synthetic_study(tmp_path):
    """Two (problem, model): heat.fc direct, ns.fno autoregressive; 3 seeds; online errors half the
    offline ones for heat.fc (every member), online worse for ns.fno in seed 2."""
    runs = {}
    for seed in (0, 1, 2):
        for problem, model, rollout, ratio in (("heat", "fc", False, 0.5), ("ns", "fno", True, 0.8 if seed < 2 else 1.25)):
            folder = tmp_path / f"{problem}.{model}.seed{seed}"
            offline = evaluation_frame(np.random.default_rng(seed), rollout=rollout)
            online = evaluation_frame(np.random.default_rng(seed), rollout=rollout, scale=ratio)
            sample = "autoregressive" if rollout else "direct"
            write_arm(folder / "online", online, sample=sample)
            write_arm(folder / "offline", offline, wall_s=3.0, sample=sample)
            runs[(problem, model, seed)] = folder
    return runs


def test_models_csv_and_improvements_from_synthetic_arms(tmp_path):
    runs = synthetic_study(tmp_path)
    summary, members = summary_and_members(KIND, runs)
    assert list(summary.columns) == list(COLUMNS) and len(summary) == 12
    heat = summary[summary["problem"] == "heat"]
    assert heat["rollout_mse"].isna().all() and heat["rollout_rel_l2"].isna().all()  # direct: no rollout
    # The pooled errors are those of datamove.evaluation.errors.pooled over the arm's samples.
    row = summary[(summary["problem"] == "ns") & (summary["seed"] == 1) & (summary["arm"] == "online")].iloc[0]
    ev = pd.read_csv(runs[("ns", "fno", 1)] / "online" / "evaluation.csv")
    assert row["test_mse"] == pytest.approx(ev["mse"].mean())
    assert row["test_rel_l2"] == pytest.approx(np.sqrt(ev["sq_err"].sum() / ev["sq_truth"].sum()))
    assert row["rollout_mse"] == pytest.approx(3 * ev["mse"].mean())
    assert row["rollout_rel_l2"] == pytest.approx(2 * row["test_rel_l2"])
    assert row["sample"] == "autoregressive" and row["test_members"] == 4 and row["test_samples"] == 20
    assert row["batches"] == 300 and row["samples_per_s"] == pytest.approx(300 * 8 / 6.0)
    offline = summary[summary["arm"] == "offline"]
    assert offline["samples_per_s"].tolist() == pytest.approx([300 * 8 / 3.0] * 6)

    gains = improvements(members, resamples=500).set_index(["problem", "model", "stat"])
    assert set(gains.loc[("heat", "fc")].index) == {"test_mse", "test_rel_l2"}
    assert set(gains.loc[("ns", "fno")].index) == {"test_mse", "test_rel_l2", "rollout_mse", "rollout_rel_l2"}
    # heat.fc: online is half of offline on every member: 50 % MSE, 1 - sqrt(0.5) rel L2, whatever
    # the resample.
    h = gains.loc[("heat", "fc", "test_mse")]
    assert h["gain_mean"] == pytest.approx(0.5) and h["ci_low"] == pytest.approx(0.5) and h["ci_high"] == pytest.approx(0.5)
    assert h["wins"] == 3 and h["seeds"] == 3 and h["test_members"] == 4
    assert gains.loc[("heat", "fc", "test_rel_l2"), "gain_mean"] == pytest.approx(1 - np.sqrt(0.5))
    # ns.fno: 0.8, 0.8, 1.25 of offline: gains 20 %, 20 %, -25 %; rollouts scale alike.
    n = gains.loc[("ns", "fno", "rollout_mse")]
    assert n["gain_mean"] == pytest.approx((0.2 + 0.2 - 0.25) / 3) and n["wins"] == 2
    assert n["gain_std"] == pytest.approx(np.std([0.2, 0.2, -0.25], ddof=1))
    assert n["ci_low"] <= n["gain_mean"] <= n["ci_high"]
    assert n["online_mean"] == pytest.approx(summary.query("problem == 'ns' and arm == 'online'")["rollout_mse"].mean())

    text = markdown(summary, gains.reset_index(), resamples=500)
    assert "| heat | fc | test MSE |" in text and "| ns | fno | rollout relative L2 |" in text
    assert "| heat | fc | rollout" not in text and "+50.0% +- 0.0% | 3 of 3 | [+50.0%, +50.0%]" in text
    figure = plot(gains.reset_index(), members, tmp_path / "models.png")
    assert figure.stat().st_size > 10_000


def test_a_study_in_parts_is_one_table_again(tmp_path):
    """Parts (here one seed each) join into the table of the whole study: datamove study-table."""
    runs = synthetic_study(tmp_path / "runs")
    whole = tables.write_table(KIND, KIND.collect(runs), tmp_path / "whole", resamples=300)
    for seed in (0, 1, 2):
        tables.write_table(KIND, KIND.collect({r: f for r, f in runs.items() if r[2] == seed}), tmp_path / f"part{seed}",
                           resamples=300)
    out = datamove("study-table", "models", *(tmp_path / f"part{k}" for k in (0, 1, 2)), "--out", tmp_path / "joined",
                   "--bootstrap", "300")
    assert "6 runs from 3 part(s)" in out.stdout  # runs are rows of models.csv: a run's two arms
    assert (tmp_path / "joined" / "models.md").read_text() == whole
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "joined" / "models.csv"),
                                  pd.read_csv(tmp_path / "whole" / "models.csv"))
    bad = datamove("study-table", "modles", tmp_path / "part0", "--out", tmp_path / "x", check=False)
    assert bad.returncode != 0 and "no study kind 'modles' (one of models, diversity, sampling, policies, rollouts)" in bad.stderr


def test_arms_with_different_test_members_are_refused(tmp_path):
    runs = synthetic_study(tmp_path)
    folder = runs[("heat", "fc", 1)] / "offline"
    ev = pd.read_csv(folder / "evaluation.csv")
    ev[ev["member"] != 3].to_csv(folder / "evaluation.csv", index=False)
    _, members = summary_and_members(KIND, runs)
    with pytest.raises(ValueError, match="seed 1, arm offline: test members"):
        improvements(members)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.study
def test_the_tiny_study_runs_end_to_end(tmp_path):
    path = study_file(tmp_path)
    raw = yaml.safe_load(path.read_text())
    result = snakemake(tmp_path, path, "--cores", "2", "compare_models", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    root = tmp_path / "results" / "models-tiny" / "models"
    summary = pd.read_csv(root / "models.csv")
    assert list(summary.columns) == list(COLUMNS)
    study = raw["model_study"]
    expected = [(p, m, k, arm) for k in study["seeds"] for p in study["problems"] for m in study["models"]
                for arm in ("online", "offline")]
    assert [tuple(r) for r in summary[["problem", "model", "seed", "arm"]].itertuples(index=False)] == expected
    # The same budget in both arms: the online arm's batch_budget (per model).
    budgets = {m: o.get("trainer", {}).get("batch_budget", raw["trainer"]["batch_budget"]) for m, o in study["models"].items()}
    assert (summary["batches"] == summary["model"].map(budgets)).all()
    assert (summary["test_members"] == raw["test"]["n_members"]).all()
    assert (summary.loc[summary["arm"] == "online", "members"] == raw["ensemble"]["n_members"]).all()
    assert (summary["samples_per_s"] > 0).all()
    direct = summary["sample"] == "direct"  # fc; fno is autoregressive: one-step and rollout errors
    assert set(summary.loc[~direct, "model"]) == {"fno"}
    assert summary.loc[direct, ["rollout_mse", "rollout_rel_l2"]].isna().all().all()
    assert (summary.loc[~direct, ["rollout_mse", "rollout_rel_l2"]] > 0).all().all()
    text = (root / "models.md").read_text()
    for model in study["models"]:
        assert f"| heat | {model} | test MSE |" in text and f"| heat | {model} | relative L2 |" in text
    assert f" of {len(study['seeds'])} | [" in text  # seeds won, then the interval over test members
    assert (root / "models.png").stat().st_size > 10_000
    # Every run of the problem was tested on the same test members and steps.
    # (An autoregressive model's rows start after its first step, its input.)
    for m in study["models"]:
        evals = [pd.read_csv(root / "runs" / f"heat.{m}.seed{k}" / arm / "evaluation.csv")
                 for k in study["seeds"] for arm in ("online", "offline")]
        assert all(e[["member", "step", "time"]].equals(evals[0][["member", "step", "time"]]) for e in evals)
        assert sorted(evals[0]["member"].unique()) == list(range(raw["test"]["n_members"]))
    # A part of the study (model_study.only) reuses the runs done: only its table is made again.
    done = {p: p.stat().st_mtime_ns for p in (root / "runs").glob("*/*/evaluation.csv")}
    part = snakemake(tmp_path, path, "--cores", "2", "compare_models", "--config", "model_study={only: {models: [fno]}}",
                     timeout=300)
    assert part.returncode == 0, part.stderr[-4000:]
    assert set(pd.read_csv(root / "models.csv")["model"]) == {"fno"}
    assert {p: p.stat().st_mtime_ns for p in done} == done
    # A run done again (an output deleted) does not make the runs after it run again.
    first = root / "runs" / f"heat.{next(iter(study['models']))}.seed{study['seeds'][0]}" / "offline" / "evaluation.csv"
    first.unlink()
    plan = snakemake(tmp_path, path, "-n", "--cores", "2", "compare_models", timeout=300)
    assert plan.returncode == 0, plan.stderr[-4000:]
    out = plan.stdout + plan.stderr
    assert planned_jobs(out) == {"run_model_study": 1, "compare_models": 1, "total": 2}, out[-3000:]
