"""The data-diversity study (snakemake diversity): the planning of config/diversity.yaml (every
model x arm x members x seed, as a dry run), its run configs and refusals, diversity.csv and
diversity.md from synthetic run folders, and end to end at the size of config/diversity-tiny.yaml."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from datamove.config import ConfigError, StudyConfig, load_config, validate_config
from datamove.studies import tables
from datamove.studies.diversity import COLUMNS, KIND, crossover, markdown, members_trained, plot, points

from conftest import REPO, datamove, planned_jobs, run_keys, snakemake, summary_and_members
from test_model_study import evaluation_frame


def study_file(tmp_path, name="diversity-tiny.yaml", **overrides):
    raw = yaml.safe_load((REPO / "config" / name).read_text())
    raw.update(results_dir=str(tmp_path / "results"), data_dir=str(tmp_path / "data"), **overrides)
    path = tmp_path / "diversity.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def with_study(base, **study):
    return {**base, "diversity_study": {**base["diversity_study"], **study}}


# --------------------------------------------------------------------------- runs and refusals


def test_the_full_study_plans_every_model_arm_members_and_seed(tmp_path):
    result = snakemake(tmp_path, REPO / "config" / "diversity.yaml", "-n", "diversity",
                       "--config", f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    base = load_config(REPO / "config" / "diversity.yaml")
    st = base["diversity_study"]
    assert (st["offline_members"], st["online_members"]) == ([25, 50, 100, 200], [400, 1600, 6400])
    assert set(st["models"]) == {"fc", "fno"} and st["seeds"] == [0, 1, 2]
    runs = run_keys(KIND, base)
    assert len(runs) == 2 * 7 * 3 == len(set(runs))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert counts["write_diversity_config"] == counts["run_diversity_study"] == str(len(runs))
    assert counts["diversity"] == "1" and counts["total"] == str(2 * len(runs) + 1)
    for run in runs:
        model, arm, n, seed = run
        assert f"run={model}.{arm}{n}.seed{seed}" in out
    # One run at a time, each holding the one study_runs, its config its only input.
    assert out.count("study_runs=1") == len(runs)
    # The same test members and batch budget at every point of a model; 6,400 members in 64 jobs.
    cfgs = {run: StudyConfig.from_dict(KIND.run_config(base, root=tmp_path, data_root=tmp_path, model=run[0], arm=run[1],
                                                  members=run[2], seed=run[3])) for run in runs}
    assert len({c.test for c in cfgs.values()}) == 1 and next(iter(cfgs.values())).test.n_members == 50
    for model, budget in (("fc", 20000), ("fno", 3000)):
        assert {c.trainer.batch_budget for r, c in cfgs.items() if r[0] == model} == {budget}
    big = cfgs[("fc", "online", 6400, 0)]
    assert big.ensemble.n_members == 6400 and -(-6400 // big.members_per_job) == 64


def test_a_part_of_the_study_plans_its_runs_only_on_the_run_cores(tmp_path):
    # --config reads nested values as strings: the seeds arrive as '1', '2'.
    result = snakemake(tmp_path, REPO / "config" / "diversity.yaml", "-n", "-p", "diversity",
                       "--config", f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}",
                       "diversity_study={only: {models: [fno], seeds: [1, 2]}}", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert planned_jobs(out) == {"write_diversity_config": 14, "run_diversity_study": 14, "diversity": 1, "total": 29}
    names = set(re.findall(r"run=(\S+)", out))
    assert names == {f"fno.{arm}{n}.seed{k}" for k in (1, 2) for arm, ns in
                     (("offline", (25, 50, 100, 200)), ("online", (400, 1600, 6400))) for n in ns}
    # config/diversity.yaml's run_cores: the trainer and two solver jobs at once in every run.
    assert out.count("--cores 3 --nolock") == 14
    base = load_config(REPO / "config" / "diversity.yaml")
    part = with_study(base, only={"models": ["fc"], "seeds": ["2"]})
    assert run_keys(KIND, part) == [r for r in run_keys(KIND, base) if r[0] == "fc" and r[3] == 2]
    # A part's runs have the configs they have in the whole study: it runs only what is missing.
    assert (KIND.run_config(part, root="r", data_root="d", model="fc", arm="online", members=400, seed=2)
            == KIND.run_config(base, root="r", data_root="d", model="fc", arm="online", members=400, seed=2))
    with pytest.raises(ValueError, match=r"diversity_study.only.models.*'mlp' is not one of the study's models"):
        KIND.check(with_study(base, only={"models": ["mlp"]}))
    with pytest.raises(ValueError, match=r"diversity_study.only.seeds.*'7' is not one of the study's seeds"):
        KIND.check(with_study(base, only={"seeds": ["7"]}))
    with pytest.raises(ConfigError, match="diversity_study.run_cores"):
        validate_config(with_study(base, run_cores=1))


def test_runs_differ_only_in_seeds_members_engine_and_budget(tmp_path):
    base = load_config(REPO / "config" / "diversity-tiny.yaml")

    def cfg(arm, n, seed, model="fno"):
        return KIND.run_config(base, root=tmp_path, data_root=tmp_path, model=model, arm=arm, members=n, seed=seed)

    def diff(a, b):
        return {f"{k}.{j}" for k in a if a[k] != b[k]
                for j in (a[k] if isinstance(a[k], dict) else {"": 0}) if not isinstance(a[k], dict) or a[k][j] != b[k][j]}

    on, on2, on16, off = cfg("online", 8, 0), cfg("online", 8, 1), cfg("online", 16, 0), cfg("offline", 2, 0)
    assert diff(on, on2) == {"study.", "ensemble.seed", "trainer.seed"}
    assert diff(on, on16) == {"study.", "ensemble.n_members"}
    assert diff(on, off) == {"study.", "ensemble.n_members", "stream.engine", "offline.epochs", "offline.max_batches"}
    assert on["stream"]["engine"] == "SST" and off["stream"]["engine"] == "BP5"
    # The offline arm trains exactly the online budget: stopped at it, with more epochs than it needs.
    assert on["trainer"]["batch_budget"] == off["offline"]["max_batches"] == off["offline"]["epochs"] == 150
    assert off["trainer"]["batch_budget"] == 150
    assert on["study"] == "fno.online8.seed0" and on["arm"] is None and not on["comparison"]["enabled"]
    assert on["evaluation"]["enabled"] and on["data_dir"] == str(tmp_path)
    # A run plans no study of its own, and the model replaced fc's model_args.
    assert run_keys(KIND, on) == [] and on["model_study"]["models"] == {}
    assert on["trainer"]["model_args"] == {"modes": 4, "width": 8, "layers": 2}
    assert cfg("online", 8, 0, model="fc")["trainer"]["batch_budget"] == 300
    # A run's config (which decides when it reruns) is the same in a study with more points or seeds.
    more = with_study(base, online_members=[*base["diversity_study"]["online_members"], 32], seeds=[0, 1, 5])
    assert KIND.run_config(more, root=tmp_path, data_root=tmp_path, model="fno", arm="online", members=8, seed=0) == on


def test_a_model_that_would_see_other_test_members_is_refused(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "diversity-tiny.yaml").read_text())
    raw["diversity_study"]["models"]["fno"]["test"] = {"seed": 7}
    path = study_file(tmp_path, diversity_study=raw["diversity_study"])
    result = snakemake(tmp_path, path, "-n", "diversity", timeout=120)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "diversity_study.models.fno" in out and "test.seed" in out


def test_other_refusals_name_the_key():
    base = load_config(REPO / "config" / "diversity-tiny.yaml")
    with pytest.raises(ValueError, match=r"diversity_study.seeds.*seed 2000 equals test.seed"):
        KIND.check(with_study(base, seeds=[0, 2000]))
    with pytest.raises(ValueError, match=r"diversity_study.seeds.*heldout.seed"):
        KIND.check(with_study(base, seeds=[base["heldout"]["seed"]]))
    grid = with_study(base, models={"fc": {}, "fno": {"trainer": {"model": "fno"}, "solver": {"nx": 16}}})
    with pytest.raises(ValueError, match=r"diversity_study.models.fno.*solver.nx"):
        KIND.check(grid)
    args = with_study(base, models={"fno": {"trainer": {"model": "fno", "model_args": {"hidden": 3}}}})
    with pytest.raises(ValueError, match=r"diversity_study.models.fno.*\['hidden'\] are not arguments of model 'fno'"):
        KIND.check(args)
    budget = with_study({**base, "trainer": {**base["trainer"], "batch_budget": None}}, models={"fc": {}})
    with pytest.raises(ValueError, match=r"diversity_study.models.fc.trainer.batch_budget"):
        KIND.check(budget)
    wrong = with_study(base, models={"fno": {"trainer": {"model": "fno", "batch_size": 0}}})
    with pytest.raises(ConfigError, match=r"diversity study run fno.offline4.seed0(.|\n)*trainer.batch_size"):
        KIND.check(wrong)
    nested = with_study(base, models={"fc": {"diversity_study": {}}})
    with pytest.raises(ValueError, match=r"diversity_study.models.fc.diversity_study"):
        KIND.check(nested)
    # Without models the config's own model is the one run of each point, refused when written.
    own = with_study(base, models={}, seeds=[2000])
    KIND.check(own)
    with pytest.raises(ValueError, match=r"diversity_study.seeds"):
        KIND.run_config(own, root="r", data_root="d", model=own["trainer"]["model"], arm="online", members=8, seed=2000)
    with pytest.raises(ConfigError, match="diversity_study.offline_members"):
        validate_config(with_study(base, offline_members=[0]))
    with pytest.raises(ConfigError, match="diversity_study.seed"):
        validate_config({**base, "diversity_study": {"seed": [0]}})


def test_the_default_study_leaves_the_default_workflow_alone(tmp_path):
    """The default config has no batch budget: its (unrequested) diversity study must not stop the
    default target from planning."""
    result = snakemake(tmp_path, REPO / "config" / "config.yaml", "-n",
                       "--config", f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run_diversity_study" not in result.stdout + result.stderr


# --------------------------------------------------------------------------- aggregation


def write_run(folder, evaluation, *, members, batches=300, wall_s=6.0, sample="direct", trained=None):
    """A run's folder: evaluation.csv, metrics.csv, config.yaml and a ledger of ``members`` members
    of which ``trained`` (default all) have a trained step."""
    folder.mkdir(parents=True)
    evaluation.to_csv(folder / "evaluation.csv", index=False)
    pd.DataFrame({"batch": [100, batches], "wall_s": [2.0, wall_s], "val_loss": [0.1, 0.05]}).to_csv(
        folder / "metrics.csv", index=False)
    (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": {"batch_size": 8, "world_size": 1, "sample": sample}}))
    trained = members if trained is None else trained
    unpaired = 1 if sample == "autoregressive" else 0
    ledger = pd.DataFrame({"member": range(members), "steps_expected": 5, "steps_received": 5, "status": "complete",
                           "steps_dropped": 0, "steps_evicted": 0, "steps_unused": 0, "steps_unpaired": unpaired})
    ledger.loc[trained:, "steps_evicted"] = 3  # never drawn: evicted, or left unused at the end
    ledger.loc[trained:, "steps_unused"] = 2 - unpaired
    ledger.to_csv(folder / "ledger.csv", index=False)


#: (model, autoregressive, {(arm, members): error scale}); seed 1 of fc online 16 is worse.
SYNTHETIC = (
    ("fc", False, {("offline", 2): 1.0, ("offline", 4): 0.6, ("online", 8): 0.8, ("online", 16): 0.4}),
    ("fno", True, {("offline", 2): 1.0, ("offline", 4): 0.5, ("online", 8): 0.7, ("online", 16): 0.6}),
)


def synthetic_study(tmp_path, seeds=(0, 1)):
    runs = {}
    for seed in seeds:
        for model, rollout, scales in SYNTHETIC:
            sample = "autoregressive" if rollout else "direct"
            for (arm, n), scale in scales.items():
                if (model, arm, n, seed) == ("fc", "online", 16, 1):
                    scale = 0.5
                folder = tmp_path / f"{model}.{arm}{n}.seed{seed}"
                ev = evaluation_frame(np.random.default_rng(seed), rollout=rollout, scale=scale)
                write_run(folder, ev, members=n, sample=sample, trained=n - 3 if arm == "online" else n,
                          wall_s=3.0 if arm == "offline" else 6.0)
                runs[(model, arm, n, seed)] = folder
    return runs


def test_diversity_csv_and_md_from_synthetic_runs(tmp_path):
    runs = synthetic_study(tmp_path)
    summary, members = summary_and_members(KIND, runs)
    assert list(summary.columns) == list(COLUMNS) and len(summary) == 16
    assert [tuple(r) for r in summary[["model", "arm", "members", "seed"]].itertuples(index=False)] == list(runs)
    online = summary[summary["arm"] == "online"]
    assert (online["members_trained"] == online["members"] - 3).all()  # from the ledger's steps_trained
    offline = summary[summary["arm"] == "offline"]
    assert (offline["members_trained"] == offline["members"]).all()  # the stored members
    assert summary.loc[summary["model"] == "fc", ["rollout_mse", "rollout_rel_l2"]].isna().all().all()
    row = summary[(summary["model"] == "fno") & (summary["arm"] == "online") & (summary["members"] == 8)
                  & (summary["seed"] == 1)].iloc[0]
    ev = pd.read_csv(runs[("fno", "online", 8, 1)] / "evaluation.csv")
    assert row["test_mse"] == pytest.approx(ev["mse"].mean())
    assert row["test_rel_l2"] == pytest.approx(np.sqrt(ev["sq_err"].sum() / ev["sq_truth"].sum()))
    assert row["rollout_mse"] == pytest.approx(3 * ev["mse"].mean())
    assert row["batches"] == 300 and row["samples_per_s"] == pytest.approx(300 * 8 / 6.0)

    pts = points(members, summary, resamples=500).set_index(["model", "arm", "members", "stat"]).sort_index()
    assert set(pts.loc[("fc", "online", 8)].index) == {"test_mse", "test_rel_l2"}
    assert set(pts.loc[("fno", "online", 8)].index) == {"test_mse", "test_rel_l2", "rollout_mse", "rollout_rel_l2"}
    # The mean and std over seeds are those of the per-run rows, and the interval holds the mean.
    fc16 = summary.query("model == 'fc' and arm == 'online' and members == 16")["test_mse"]
    p = pts.loc[("fc", "online", 16, "test_mse")]
    assert p["mean"] == pytest.approx(fc16.mean()) and p["std"] == pytest.approx(fc16.std(ddof=1))
    assert p["ci_low"] <= p["mean"] <= p["ci_high"] and p["seeds"] == 2 and p["members_trained"] == 13
    # fno offline 4 is 0.5 of offline 2 on every test member in every seed, whatever the resample.
    a, b = pts.loc[("fno", "offline", 4, "rollout_mse")], pts.loc[("fno", "offline", 2, "rollout_mse")]
    assert a["ci_low"] / b["ci_low"] == pytest.approx(0.5) and a["mean"] / b["mean"] == pytest.approx(0.5)

    cross = crossover(pts.reset_index()).set_index(["model", "stat"])
    # fc: the best offline point is 4 stored (0.6); online 8 (0.8) does not beat it, online 16 does.
    assert cross.loc[("fc", "test_mse"), "offline_members"] == 4 and cross.loc[("fc", "test_mse"), "online_members"] == 16
    # fno: offline 4 (0.5) beats every online point.
    assert np.isnan(cross.loc[("fno", "test_mse"), "online_members"])

    text = markdown(summary, pts.reset_index(), resamples=500)
    assert "### fc" in text and "### fno" in text and "rollout MSE" in text.split("### fno")[1]
    assert "rollout" not in text.split("### fc")[1].split("### fno")[0].split("\n- ")[0]
    assert "| online | 16 | 13 | 2 | " in text and "| offline | 4 | 4 | 2 | " in text and "nan" not in text
    assert "test MSE: online first beats the best offline point (4 stored" in text and "at 16 streamed members" in text
    assert "test MSE: online does not beat the best offline point (4 stored" in text.split("### fno")[1]
    assert "| fc | direct | online | 16 | 300 | 6.0 | 400.0 |" in text
    figure = plot(pts.reset_index(), tmp_path / "diversity.png")
    assert figure.stat().st_size > 10_000


def test_a_study_in_parts_is_one_table_again(tmp_path):
    runs = synthetic_study(tmp_path / "runs")
    summary, members = summary_and_members(KIND, runs)
    for seed in (0, 1):
        tables.write_table(KIND, KIND.collect({r: f for r, f in runs.items() if r[3] == seed}), tmp_path / f"part{seed}",
                           resamples=300)
    assert {p.name for p in (tmp_path / "part0").iterdir()} == {
        "diversity.csv", "diversity_members.csv", "diversity.md", "diversity.png"}
    # One seed has no spread over seeds: the part's table says 1 seed and gives none.
    one = (tmp_path / "part0" / "diversity.md").read_text()
    assert "| online | 16 | 13 | 1 | " in one and " +- " not in one.split("### fc")[1] and "nan" not in one
    parts = tables.read_parts(KIND, [tmp_path / "part0", tmp_path / "part1"])
    both, both_members = parts["summary"], parts["members"]
    assert both[list(COLUMNS[:4])].equals(summary[list(COLUMNS[:4])])
    pd.testing.assert_frame_equal(both, summary, check_dtype=False, rtol=1e-5)
    whole = points(members, summary, resamples=300)
    parts = points(both_members, both, resamples=300)
    assert whole[["model", "arm", "members", "stat", "seeds"]].equals(parts[["model", "arm", "members", "stat", "seeds"]])
    for col in ("mean", "std", "ci_low", "ci_high"):
        assert parts[col].to_numpy() == pytest.approx(whole[col].to_numpy(), rel=1e-8)
    # The command writes what the diversity target does, from the parts.
    out = datamove("diversity-table", str(tmp_path / "part0"), str(tmp_path / "part1"), "--out",
                  str(tmp_path / "table"), "--bootstrap", "300")
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "table" / "diversity.md").read_text()
    assert text.startswith("Test error against distinct members, 2 seed(s) (0, 1)") and "16 runs from 2 part(s)" in out.stdout
    assert text == markdown(summary, whole, resamples=300)
    # The target's own table (write_table of the whole study) is the one rebuilt from the parts.
    tables.write_table(KIND, {"summary": summary, "members": members}, tmp_path / "whole", resamples=300)
    assert (tmp_path / "whole" / "diversity.md").read_text() == text
    assert (tmp_path / "table" / "diversity.png").stat().st_size > 10_000
    # A run in two parts, or a part without its sums, is refused by name.
    with pytest.raises(ValueError, match=r"run fc.offline2.seed0 is in two parts: .*part0 and .*part0"):
        tables.read_parts(KIND, [tmp_path / "part0", tmp_path / "part0"])
    (tmp_path / "part1" / "diversity_members.csv").unlink()
    bad = datamove("diversity-table", str(tmp_path / "part0"), str(tmp_path / "part1"), "--out", str(tmp_path / "x"), check=False)
    assert bad.returncode != 0 and "part1/diversity_members.csv: no such file" in bad.stderr


def test_runs_with_different_test_members_are_refused(tmp_path):
    runs = synthetic_study(tmp_path)
    folder = runs[("fno", "online", 16, 1)]
    ev = pd.read_csv(folder / "evaluation.csv")
    ev[ev["member"] != 3].to_csv(folder / "evaluation.csv", index=False)
    summary, members = summary_and_members(KIND, runs)
    with pytest.raises(ValueError, match="model fno, online with 16 members, seed 1: test members"):
        points(members, summary)


def test_members_trained_counts_members_with_a_trained_step():
    ledger = pd.DataFrame({"steps_received": [5, 5, 5, 0], "steps_dropped": [0, 1, 0, 0], "steps_evicted": [0, 3, 4, 0],
                           "steps_unused": [0, 1, 0, 0], "steps_unpaired": [1, 0, 1, 0]})
    assert members_trained(ledger) == 1  # only the first: the second and third had every step untrained


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.study
def test_the_tiny_study_runs_end_to_end(tmp_path):
    path = study_file(tmp_path)
    raw = yaml.safe_load(path.read_text())
    result = snakemake(tmp_path, path, "--cores", "2", "diversity", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    root = tmp_path / "results" / "diversity-tiny" / "diversity"
    summary = pd.read_csv(root / "diversity.csv")
    assert list(summary.columns) == list(COLUMNS)
    st = raw["diversity_study"]
    expected = [(m, arm, n, k) for k in st["seeds"] for m in st["models"]
                for arm, ns in (("offline", st["offline_members"]), ("online", st["online_members"])) for n in ns]
    assert [tuple(r) for r in summary[["model", "arm", "members", "seed"]].itertuples(index=False)] == expected
    # Every point of a model trained its batch budget, online and offline.
    budgets = {m: o["trainer"].get("batch_budget", raw["trainer"]["batch_budget"]) for m, o in st["models"].items()}
    assert (summary["batches"] == summary["model"].map(budgets)).all()
    assert (summary["test_members"] == raw["test"]["n_members"]).all() and (summary["samples_per_s"] > 0).all()
    online = summary["arm"] == "online"
    assert (summary.loc[~online, "members_trained"] == summary.loc[~online, "members"]).all()
    # trainer.paced (the tiny config's) spreads the online budget over every streamed member.
    assert (summary.loc[online, "members_trained"] == summary.loc[online, "members"]).all()
    direct = summary["sample"] == "direct"
    assert set(summary.loc[~direct, "model"]) == {"fno"}
    assert summary.loc[direct, ["rollout_mse", "rollout_rel_l2"]].isna().all().all()
    assert (summary.loc[~direct, ["rollout_mse", "rollout_rel_l2"]] > 0).all().all()
    # Each run is its one arm: an online run's ledger has its streamed members complete, an offline
    # run stored its members as BP5 files.
    for m, arm, n, k in expected:
        folder = root / "runs" / f"{m}.{arm}{n}.seed{k}"
        ledger = pd.read_csv(folder / "ledger.csv")
        assert len(ledger) == n and (ledger["status"] == "complete").all()
        assert yaml.safe_load((folder / "config.yaml").read_text())["stream"]["engine"] == ("SST" if arm == "online" else "BP5")
    text = (root / "diversity.md").read_text()
    for m in st["models"]:
        assert f"### {m}" in text and f"| online | {max(st['online_members'])} |" in text
    assert "test MSE: online " in text and "the best offline point" in text
    assert (root / "diversity.png").stat().st_size > 10_000
    # The table's folder is a part that diversity-table reads back (a study run in parts).
    again = tables.read_parts(KIND, [root])
    again, sums = again["summary"], again["members"]
    pd.testing.assert_frame_equal(again, summary)
    assert len(sums) == len(summary) * raw["test"]["n_members"]
    # Every run was tested on the same test members and steps (an autoregressive model's rows start
    # after its first step).
    for m in st["models"]:
        evals = [pd.read_csv(root / "runs" / f"{m}.{arm}{n}.seed{k}" / "evaluation.csv") for mm, arm, n, k in expected if mm == m]
        assert all(e[["member", "step", "time"]].equals(evals[0][["member", "step", "time"]]) for e in evals)
        assert sorted(evals[0]["member"].unique()) == list(range(raw["test"]["n_members"]))
    # A run done again (its output deleted, and the table, which Snakemake would otherwise leave
    # as it is) does not make the runs after it run again, as a chain of runs did.
    (root / "runs" / "{}.{}{}.seed{}".format(*expected[0]) / "evaluation.csv").unlink()
    (root / "diversity.csv").unlink()
    plan = snakemake(tmp_path, path, "-n", "--cores", "2", "diversity", timeout=300)
    assert plan.returncode == 0, plan.stderr[-4000:]
    assert planned_jobs(plan.stdout + plan.stderr) == {"run_diversity_study": 1, "diversity": 1, "total": 2}
