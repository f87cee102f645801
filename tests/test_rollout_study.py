"""The rollout study (snakemake compare_rollouts): the full config/rollouts.yaml as a dry run, its
refusals, the table's maths (the horizon error, online against offline, the issue's targets) on
synthetic evaluation frames, and the tiny study end to end (config/rollouts-tiny.yaml)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import yaml

from datamove.config import ConfigError, StudyConfig, load_config, validate_config
from datamove.studies import tables
from datamove.studies.rollouts import COLUMNS, KIND, STEP_COLUMNS, improvements, markdown, per_arm, plot, targets

from conftest import REPO, datamove, planned_jobs, run_keys, snakemake, summary_and_members
from test_model_study import evaluation_frame


def study_file(tmp_path, name="rollouts-tiny.yaml", **overrides):
    raw = yaml.safe_load((REPO / "config" / name).read_text())
    raw.update(results_dir=str(tmp_path / "results"), data_dir=str(tmp_path / "data"), **overrides)
    path = tmp_path / "rollouts.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def with_study(base, **study):
    return validate_config({**base, "rollout_study": {**base["rollout_study"], **study}})


# --------------------------------------------------------------------------- runs and refusals


def test_the_full_study_plans_every_problem_model_training_and_seed(tmp_path):
    base = load_config(REPO / "config" / "rollouts.yaml")
    st = base["rollout_study"]
    result = snakemake(tmp_path, REPO / "config" / "rollouts.yaml", "-n", "-p", "compare_rollouts",
                       "--config", f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    runs = run_keys(KIND, base)
    assert len(runs) == 2 * 3 * 3 * 3 == len(st["problems"]) * len(st["models"]) * len(st["trainings"]) * len(st["seeds"])
    assert set(st["models"]) == {"fno", "unet", "mppde"}
    assert set(st["trainings"]) == {"one-step", "rollout", "rollout-unroll"}
    for problem, model, training, seed in runs:
        assert f"run={problem}.{model}.{training}.seed{seed}" in out
    assert planned_jobs(out) == {"write_rollout_config": 54, "run_rollout_study": 54, "compare_rollouts": 1,
                                 "total": 109}, out[-3000:]
    # Each run's config carries its training's trainer keys (and the one-step runs today's training),
    # its model's, and is a comparison study tested on its problem's test members.
    models = load_config(REPO / "config" / "models.yaml")["model_study"]["models"]
    tests = {}
    for problem, model, training, seed in runs:
        cfg = KIND.run_config(base, root=tmp_path, data_root=tmp_path, problem=problem, model=model,
                              training=training, seed=seed)
        trainer = cfg["trainer"]
        for key, value in st["trainings"][training].get("trainer", {}).items():
            assert trainer[key] == value, (problem, model, training, key)
        if training == "one-step":
            assert (trainer["target"], trainer["input_noise"], trainer["unroll"]) == ("state", 0, 1)
        assert trainer["model"] == model and trainer["sample"] == "autoregressive"
        assert trainer["model_args"] == models[model]["trainer"]["model_args"]  # config/models.yaml's widths
        assert trainer["batch_budget"] == models[model]["trainer"]["batch_budget"]
        assert (trainer["seed"], cfg["ensemble"]["seed"]) == (seed, seed)
        assert cfg["comparison"]["enabled"] and cfg["rollout_study"]["trainings"] == {}
        sc = StudyConfig.from_dict(cfg)
        assert tests.setdefault(problem, sc.test) == sc.test and sc.test.n_members == 50
    assert st["trainings"]["rollout"]["trainer"] == {"target": "delta", "input_noise": 0.01, "history": 1, "bundle": 2,
                                                     "unroll": 1, "pushforward": True, "unroll_warmup": 0,
                                                     "val_rollout_every": 0}
    assert st["trainings"]["rollout-unroll"]["trainer"] == {"target": "delta", "input_noise": 0, "history": 1,
                                                            "bundle": 1, "unroll": 4, "pushforward": True,
                                                            "unroll_warmup": 0, "val_rollout_every": 0}


def test_only_selects_trainings_and_a_run_does_not_depend_on_the_selection():
    base = load_config(REPO / "config" / "rollouts.yaml")
    part = with_study(base, only={"problems": ["heat"], "models": ["fno"], "trainings": ["rollout"]})
    assert run_keys(KIND, part) == [("heat", "fno", "rollout", k) for k in (0, 1, 2)]
    KIND.check(part)
    values = dict(problem="heat", model="fno", training="rollout", seed=1)
    assert KIND.run_config(part, root="r", data_root="d", **values) == KIND.run_config(base, root="r", data_root="d", **values)


def test_refusals_name_the_key(tmp_path):
    base = load_config(REPO / "config" / "rollouts-tiny.yaml")
    trainings = base["rollout_study"]["trainings"]
    cases = (
        ({"trainings": {**trainings, "rollout": {"trainer": {"target": "delta", "unrol": 2}}}},
         r"key 'rollout_study.trainings.rollout.trainer.unrol': not a trainer key \(did you mean unroll\?\)"),
        ({"trainings": {**trainings, "rollout": {"trainer": {"model": "unet"}}}},
         r"key 'rollout_study.trainings.rollout.trainer.model': is the model's"),
        ({"trainings": {**trainings, "rollout": {"solver": {"nx": 16}}}},
         r"key 'rollout_study.trainings.rollout.solver': a training overrides trainer keys only"),
        ({"only": {"trainings": ["noise"]}},
         r"key 'rollout_study.only.trainings': 'noise' is not one of the study's trainings \(one-step, rollout"),
        ({"models": {"fc": {"trainer": {"model": "fc", "model_args": {"hidden": 8}}}}},
         r"key 'rollout_study.models.fc': trainer.sample is direct"),
        ({"seeds": [0, 2000]}, r"rollout_study.seeds.*test.seed"),
    )
    for study, message in cases:
        with pytest.raises(ValueError, match=message):
            KIND.check(with_study(base, **study))
    with pytest.raises(ConfigError, match=r"rollouts study run heat.fno.rollout.seed0(.|\n)*trainer.input_noise"):
        KIND.check(with_study(base, trainings={"rollout": {"trainer": {"input_noise": -1}}}))
    with pytest.raises(ConfigError, match="rollout_study.only"):
        with_study(base, only={"training": ["rollout"]})
    # In the workflow: the check runs when the table is wanted, and names the key.
    raw = yaml.safe_load((REPO / "config" / "rollouts-tiny.yaml").read_text())
    raw["rollout_study"]["trainings"]["rollout"]["trainer"]["input_nois"] = 0.1
    result = snakemake(tmp_path, study_file(tmp_path, rollout_study=raw["rollout_study"]), "-n", "compare_rollouts",
                       timeout=120)
    assert result.returncode != 0
    assert "rollout_study.trainings.rollout.trainer.input_nois" in result.stdout + result.stderr


# --------------------------------------------------------------------------- the table's maths

#: (problem, solver, training) -> (one-step error scale of the online arm, {arm: horizon rel L2 per seed}).
SYNTHETIC = {
    ("heat", "heat", "one-step"): (1.0, {"online": (0.2, 0.3, 0.4), "offline": (0.1, 0.1, 0.1)}),
    ("heat", "heat", "rollout"): (1.1, {"online": (0.03, 0.04, 0.05), "offline": (0.06, 0.05, 0.04)}),
    ("ns", "navier-stokes", "one-step"): (1.0, {"online": (0.5, 0.5, 0.5), "offline": (0.6, 0.6, 0.6)}),
    ("ns", "navier-stokes", "rollout"): (1.44, {"online": (0.25, 0.25, 0.25), "offline": (0.3, 0.3, 0.3)}),
}


def write_arm(folder, evaluation, *, solver, training, wall_s):
    folder.mkdir(parents=True)
    evaluation.to_csv(folder / "evaluation.csv", index=False)
    pd.DataFrame({"batch": [100, 300], "wall_s": [2.0, wall_s], "val_loss": [0.1, 0.05]}).to_csv(
        folder / "metrics.csv", index=False)
    recipe = {"target": "delta", "input_noise": 0.01} if training == "rollout" else {"target": "state", "input_noise": 0}
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "solver": {"name": solver},
        "trainer": {"batch_size": 8, "world_size": 1, "sample": "autoregressive", "model": "fno", "history": 1,
                    "bundle": 1, "unroll": 1, "pushforward": True, "unroll_warmup": 0, **recipe}}))


def synthetic_study(tmp_path):
    """fno on heat and ns, trainings one-step and rollout, 3 seeds: every test member's rollout has
    the relative L2 of SYNTHETIC at its last step (step 6), and the online one-step errors are
    sqrt(scale) times the offline ones."""
    runs = {}
    for seed in (0, 1, 2):
        for (problem, solver, training), (scale, horizon) in SYNTHETIC.items():
            folder = tmp_path / f"{problem}.fno.{training}.seed{seed}"
            for arm in ("online", "offline"):
                ev = evaluation_frame(np.random.default_rng(seed), rollout=True, scale=scale if arm == "online" else 1.0)
                last = ev["step"] == ev["step"].max()
                ev.loc[last, "rollout_sq_err"] = horizon[arm][seed] ** 2 * ev.loc[last, "sq_truth"]
                write_arm(folder / arm, ev, solver=solver, training=training, wall_s=6.0 if arm == "online" else 3.0)
            runs[(problem, "fno", training, seed)] = folder
    return runs


def test_rollouts_csv_the_horizon_and_the_targets_from_synthetic_arms(tmp_path):
    runs = synthetic_study(tmp_path)
    frames = KIND.collect(runs)
    summary, members, steps = frames["summary"], frames["members"], frames["steps"]
    assert list(summary.columns) == list(COLUMNS) and len(summary) == 24
    assert list(steps.columns) == list(STEP_COLUMNS) and len(steps) == 24 * 5  # steps 2..6 of every arm
    # The horizon: the last step's rows, pooled over the test members.
    row = summary.query("problem == 'heat' and training == 'rollout' and seed == 1 and arm == 'online'").iloc[0]
    ev = pd.read_csv(runs[("heat", "fno", "rollout", 1)] / "online" / "evaluation.csv")
    last = ev[ev["step"] == 6]
    assert row["horizon_rel_l2"] == pytest.approx(np.sqrt(last["rollout_sq_err"].sum() / last["sq_truth"].sum()))
    assert row["horizon_rel_l2"] == pytest.approx(0.04) and row["horizon_step"] == 6
    assert row["rollout_rel_l2"] == pytest.approx(np.sqrt(ev["rollout_sq_err"].sum() / ev["sq_truth"].sum()))
    assert row["test_rel_l2"] == pytest.approx(np.sqrt(ev["sq_err"].sum() / ev["sq_truth"].sum()))
    assert (row["solver"], row["network"], row["target"], row["input_noise"]) == ("heat", "fno", "delta", 0.01)
    assert row["samples_per_s"] == pytest.approx(300 * 8 / 6.0) and row["test_members"] == 4
    for (problem, _, training), (_, horizon) in SYNTHETIC.items():
        for arm in ("online", "offline"):
            part = summary.query("problem == @problem and training == @training and arm == @arm").sort_values("seed")
            assert part["horizon_rel_l2"].tolist() == pytest.approx(list(horizon[arm]))
    assert set(members.columns) >= {"horizon_sq_err", "horizon_sq_truth"} and len(members) == 24 * 4

    arms = per_arm(summary).set_index(["problem", "training", "arm"])
    heat = arms.loc[("heat", "rollout", "online")]
    assert heat["horizon_rel_l2_mean"] == pytest.approx(0.04) and heat["horizon_rel_l2_std"] == pytest.approx(0.01)
    assert heat["horizon_per_seed"] == pytest.approx({0: 0.03, 1: 0.04, 2: 0.05})
    # The online one-step error of a scale s arm is sqrt(s) times the one-step training's.
    ratio = heat["test_rel_l2_mean"] / arms.loc[("heat", "one-step", "online"), "test_rel_l2_mean"]
    assert ratio == pytest.approx(np.sqrt(1.1))

    gains = improvements(members, resamples=300)
    g = gains.set_index(["problem", "model", "training", "stat"])
    h = g.loc[("heat", "fno", "rollout", "horizon_rel_l2")]
    assert h["gain_mean"] == pytest.approx(np.mean([1 - 0.03 / 0.06, 1 - 0.04 / 0.05, 1 - 0.05 / 0.04]))
    assert h["wins"] == 2 and h["seeds"] == 3
    # Every member has the same ratio: the interval over test members is the mean itself.
    assert h["ci_low"] == pytest.approx(h["gain_mean"]) and h["ci_high"] == pytest.approx(h["gain_mean"])
    assert set(gains["stat"]) == {"horizon_rel_l2", "rollout_rel_l2", "test_rel_l2"}

    checks = targets(summary, gains).set_index(["problem", "training", "check"])
    expected = {
        ("heat", "one-step"): (False, False, None), ("heat", "rollout"): (True, True, True),
        ("ns", "one-step"): (False, True, None), ("ns", "rollout"): (False, True, False),
    }
    for (problem, training), met in expected.items():
        got = tuple(checks.loc[(problem, training, c), "met"] for c in ("horizon", "online_vs_offline", "one_step"))
        assert got == met, (problem, training, got)
    assert checks.loc[("heat", "rollout", "horizon"), "detail"] == "4.000e-02 <= 0.05"
    assert checks.loc[("ns", "rollout", "horizon"), "detail"] == "2.500e-01 > 0.2"  # navier-stokes fno: 0.2
    assert "2 of 3 seeds (at least 2)" in checks.loc[("heat", "rollout", "online_vs_offline"), "detail"]
    assert "(+4.9%; at most +10%)" in checks.loc[("heat", "rollout", "one_step"), "detail"]
    assert "(+20.0%; at most +10%)" in checks.loc[("ns", "rollout", "one_step"), "detail"]

    text = markdown(summary, gains, targets(summary, gains), resamples=300)
    assert "test members and horizon (the last step): heat 4, step 6, ns 4, step 6." in text
    assert "| heat | fno | rollout | online | 4.000e-02 +- 1.0e-02 | 0: 3.000e-02, 1: 4.000e-02, 2: 5.000e-02 |" in text
    assert "| heat | fno | rollout | met: 4.000e-02 <= 0.05 | met: online" in text
    assert "| ns | fno | rollout | not met: 2.500e-01 > 0.2 | met: online" in text
    assert "| heat | fno | one-step | not met: 3.000e-01 > 0.05 | not met: online" in text
    assert "; the baseline |" in text  # the one-step training's one-step cell: nothing to check
    assert "| rollout | delta | 0.01 | 1 | 1 | 1 | True | 0 |" in text
    assert "Targets met: 5 of 10 checked." in text
    assert plot(summary, steps, tmp_path / "rollouts.png").stat().st_size > 10_000


def test_a_study_in_parts_is_one_table_again(tmp_path):
    runs = synthetic_study(tmp_path / "runs")
    whole = tables.write_table(KIND, KIND.collect(runs), tmp_path / "whole", resamples=300)
    for training in ("one-step", "rollout"):
        tables.write_table(KIND, KIND.collect({r: f for r, f in runs.items() if r[2] == training}),
                           tmp_path / training, resamples=300)
    out = datamove("study-table", "rollouts", tmp_path / "one-step", tmp_path / "rollout", "--out", tmp_path / "joined",
                   "--bootstrap", "300")
    assert "12 runs from 2 part(s)" in out.stdout
    joined = (tmp_path / "joined" / "rollouts.md").read_text()
    # The rows come in the parts' order; the same rows and numbers as the whole study's.
    assert sorted(joined.splitlines()) == sorted(whole.splitlines())
    for name in ("rollouts.csv", "rollouts_members.csv", "rollouts_steps.csv"):
        key = ["problem", "model", "training", "seed", "arm"]
        a, b = (pd.read_csv(tmp_path / d / name) for d in ("joined", "whole"))
        sort = key + [c for c in ("member", "step") if c in a]
        pd.testing.assert_frame_equal(a.sort_values(sort).reset_index(drop=True), b.sort_values(sort).reset_index(drop=True))


def test_a_part_without_the_baseline_says_so(tmp_path):
    runs = synthetic_study(tmp_path)
    summary, members = summary_and_members(KIND, {r: f for r, f in runs.items() if r[2] == "rollout"})
    checks = targets(summary, improvements(members, resamples=100)).set_index(["problem", "training", "check"])
    assert checks.loc[("heat", "rollout", "one_step"), "met"] is None
    assert "no one-step training in this table" in checks.loc[("heat", "rollout", "one_step"), "detail"]


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.study
def test_the_tiny_study_runs_end_to_end(tmp_path):
    path = study_file(tmp_path)
    raw = yaml.safe_load(path.read_text())
    start = time.monotonic()
    result = snakemake(tmp_path, path, "--cores", "2", "compare_rollouts", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"the tiny rollout study took {time.monotonic() - start:.0f} s")
    root = tmp_path / "results" / "rollouts-tiny" / "rollouts"
    summary = pd.read_csv(root / "rollouts.csv")
    assert list(summary.columns) == list(COLUMNS)
    st = raw["rollout_study"]
    expected = [("heat", m, t, k, arm) for k in st["seeds"] for m in st["models"] for t in st["trainings"]
                for arm in ("online", "offline")]
    assert [tuple(r) for r in summary[["problem", "model", "training", "seed", "arm"]].itertuples(index=False)] == expected
    assert (summary["horizon_step"] == raw["solver"]["n_steps"]).all()
    assert (summary["horizon_rel_l2"] > 0).all() and (summary["test_rel_l2"] > 0).all()
    assert (summary["samples_per_s"] > 0).all() and (summary["test_members"] == raw["test"]["n_members"]).all()
    # Each run trained its training: the recipe in the arms' configs.
    recipe = summary.groupby("training")[["target", "input_noise"]].agg(set)
    assert recipe.loc["one-step"].tolist() == [{"state"}, {0}] and recipe.loc["rollout"].tolist() == [{"delta"}, {0.01}]
    for run in KIND.runs(load_config(path)):
        cfg = yaml.safe_load((root / "runs" / f"{run.name}.yaml").read_text())
        for key, value in st["trainings"][run.values["training"]].get("trainer", {}).items():
            assert cfg["trainer"][key] == value
    steps = pd.read_csv(root / "rollouts_steps.csv")
    assert len(steps) == len(summary) * (raw["solver"]["n_steps"] - 1)  # steps 2..n of every arm
    text = (root / "rollouts.md").read_text()
    assert "| heat | fno | rollout | online |" in text and "Targets of issue 31" in text
    assert "| heat | fno | rollout | " in text.split("Targets of issue 31")[1] and "Targets met: " in text
    assert (root / "rollouts.png").stat().st_size > 10_000
    # Every run was tested on the same test members and steps.
    evals = [pd.read_csv(root / "runs" / f"{run.name}" / arm / "evaluation.csv")
             for run in KIND.runs(load_config(path)) for arm in ("online", "offline")]
    assert all(e[["member", "step", "time"]].equals(evals[0][["member", "step", "time"]]) for e in evals)
