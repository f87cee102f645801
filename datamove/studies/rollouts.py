"""The rollout study: online against offline for every (problem, model, training) and seed (issue 31).

A run is one (problem, model, training, seed): the study's config with the problem's overrides, the
model's, then the training's (trainer keys only: ``one-step: {}``, ``rollout: {trainer: {target:
delta, input_noise: 0.01, unroll: 2}}``) deep-merged in, ``ensemble.seed`` and ``trainer.seed`` set
to the seed, and ``comparison.enabled``: a complete comparison study, as a run of the models study
(:mod:`datamove.studies.models`, whose settings, outputs and statistics this kind reuses). Every
model must be autoregressive (a direct model has no rollout); every model, training and seed of a
problem is tested on the same test members (the sweep's checks).

What it measures, per (problem, model, training, arm): the relative L2 error of the rollout from
each test member's first true steps *at its horizon*, the member's last step (``horizon_rel_l2`` =
sqrt(sum rollout_sq_err / sum sq_truth) over the test members' last steps:
:data:`datamove.studies.stats.HORIZON`), its mean and standard deviation over seeds and each
seed's value; the rollout's relative L2 over all its steps, the one-step relative L2 (from true
inputs), and samples/s (batches x batch size x ranks / training time; a sample is a window of
trainer.history + trainer.unroll x trainer.bundle steps). Online against offline: the improvement
``1 - online / offline`` of the same seed, with the seeds online won and a 95 % interval over test
members (:func:`datamove.studies.models.improvements`, grouped by training too).

The targets of the issue (:func:`targets`), checked on the online arm and marked met / not met in
rollouts.md: the horizon error at most :data:`HORIZON_TARGETS` (by solver and network; other
problems and networks have none); online better than offline at the horizon on the mean over
seeds and on at least two thirds of the seeds (2 of 3); and the one-step error no more than
:data:`ONE_STEP_SLACK` (10 %) above that of the training named :data:`BASELINE` (today's one-step
training) for the same problem and model.

Layout under ``<results_dir>/<study>/rollouts/``: ``runs/<problem>.<model>.<training>.seed<k>/``
each run's comparison study (``online/``, ``offline/``), ``runs/<...>.yaml`` its config, and
``rollouts.csv`` (a row per run and arm), ``rollouts_members.csv`` (a row per run, arm and test
member: the sums the statistics pool), ``rollouts_steps.csv`` (a row per run, arm and step: the
errors' sums over the test members, for the error growth), ``rollouts.md`` and ``rollouts.png``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datamove.config import load_schema
from datamove.evaluation.arms import ARMS
from datamove.studies import models
from datamove.studies.stats import HORIZON, HORIZON_SUMS, STATS, SUMS, arm_config, arm_row, pm, std
from datamove.studies.sweep import StudyKind, named, seed_axis

SECTION = "rollout_study"
#: The training whose one-step error every other training's is compared with.
BASELINE = "one-step"
#: The issue's targets for the horizon error (online arm, mean over seeds), by solver.name and trainer.model.
HORIZON_TARGETS = {"heat": {"fno": 0.05, "unet": 0.05, "mppde": 0.05},
                   "navier-stokes": {"fno": 0.2, "unet": 0.2, "mppde": 0.3}}
#: How much higher than the baseline's a training's one-step error may be (relative).
ONE_STEP_SLACK = 0.10
#: The trainer keys of a training that rollouts.md and rollouts.csv show (the recipe).
RECIPE = ("target", "input_noise", "history", "bundle", "unroll", "pushforward", "unroll_warmup")
#: Keys a training may not set: they are the model's (rollout_study.models).
MODEL_KEYS = ("model", "model_args", "sample")
#: The run's fields, the key of every table.
KEY = ("problem", "model", "training", "seed")
#: Columns of rollouts.csv, one row per (problem, model, training, seed, arm).
COLUMNS = (
    *KEY, "arm", "solver", "network", "sample", *RECIPE, "test_members", "test_samples",
    "test_mse", "test_rel_l2", "rollout_mse", "rollout_rel_l2", "horizon_rel_l2", "horizon_step",
    "batches", "train_s", "batches_per_s", "samples_per_s", "members", "val_loss_final",
)
#: The errors rollouts.md compares online against offline, as it names them.
COMPARED = {"horizon_rel_l2": HORIZON["horizon_rel_l2"], "rollout_rel_l2": STATS["rollout_rel_l2"],
            "test_rel_l2": "one-step relative L2"}
#: Columns of rollouts_steps.csv: per run, arm and step, the sums over the test members.
STEP_COLUMNS = (*KEY, "arm", "step", "test_members", "sq_err", "rollout_sq_err", "sq_truth")


# --------------------------------------------------------------------------- runs and checks


def _settle(cfg: dict[str, Any], values: Mapping[str, Any]) -> None:
    """A comparison study, as the models study's runs; ValueError naming the model where it is not
    autoregressive."""
    models.KIND.settle(cfg, values)
    sample = cfg["trainer"]["sample"]
    if sample != "autoregressive":
        raise ValueError(
            f"key '{SECTION}.models.{values['model']}': trainer.sample is {sample}, and a direct model has no "
            "rollout: the rollout study needs autoregressive models (trainer.sample: autoregressive)")


def _check_trainings(cfg: Mapping[str, Any]) -> None:
    """A training overrides trainer keys only, keys of the schema's trainer, and none of the model's
    (:data:`MODEL_KEYS`); ValueError naming the key."""
    known = set(load_schema()["properties"]["trainer"]["properties"])
    for name, over in cfg[SECTION]["trainings"].items():
        where = f"{SECTION}.trainings.{name}"
        for key in over:
            if key != "trainer":
                raise ValueError(f"key '{where}.{key}': a training overrides trainer keys only (problems and "
                                 f"models set the rest: {SECTION}.problems, {SECTION}.models)")
        trainer = over.get("trainer") or {}
        if not isinstance(trainer, Mapping):
            raise ValueError(f"key '{where}.trainer': must be a mapping of trainer keys, got {trainer!r}")
        for key in trainer:
            if key in MODEL_KEYS:
                raise ValueError(f"key '{where}.trainer.{key}': is the model's ({SECTION}.models), not a training's")
            if key not in known:
                import difflib

                near = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ValueError(f"key '{where}.trainer.{key}': not a trainer key{hint}")


# --------------------------------------------------------------------------- rollouts.csv and the others


def _recipe(folder: Path) -> dict[str, Any]:
    """The arm's solver, network, sample and training recipe (:data:`RECIPE`) from its config."""
    cfg = arm_config(folder)
    trainer = cfg.get("trainer", {})
    return {"solver": cfg.get("solver", {}).get("name"), "network": trainer.get("model"),
            **{k: trainer.get(k) for k in RECIPE}}


def _steps(evaluation: pd.DataFrame) -> pd.DataFrame:
    """Per step, the sums over the test members of sq_err, rollout_sq_err and sq_truth."""
    g = evaluation.groupby("step", sort=True)
    out = pd.DataFrame({"test_members": g["member"].nunique(), "sq_err": g["sq_err"].sum(),
                        "rollout_sq_err": g["rollout_sq_err"].sum() if "rollout_sq_err" in evaluation else np.nan,
                        "sq_truth": g["sq_truth"].sum()})
    return out.reset_index()


def collect(runs: Mapping[tuple[str, str, str, int], str | Path]) -> dict[str, pd.DataFrame]:
    """rollouts.csv (``summary``), the per test member sums (``members``) and the per step sums
    (``steps``) of every arm of every run: ``runs`` maps (problem, model, training, seed) to the
    run's comparison-study folder (with online/ and offline/)."""
    rows, sums, steps = [], [], []
    for (problem, model, training, seed), folder in runs.items():
        for arm in ARMS:
            where = Path(folder) / arm
            key = {"problem": problem, "model": model, "training": training, "seed": seed, "arm": arm}
            row, s = arm_row(where, horizon=True, **key)
            rows.append({**row, **_recipe(where)})
            sums.append(s)
            steps.append(_steps(pd.read_csv(where / "evaluation.csv")).assign(**key))
    return {"summary": pd.DataFrame(rows, columns=list(COLUMNS)),
            "members": pd.concat(sums, ignore_index=True)[[*KEY, "arm", "member", *SUMS, *HORIZON_SUMS]],
            "steps": pd.concat(steps, ignore_index=True)[list(STEP_COLUMNS)]}


def improvements(members: pd.DataFrame, *, resamples: int = 2000, rng_seed: int = 0) -> pd.DataFrame:
    """Online against offline per (problem, model, training) and error of :data:`COMPARED`, as
    :func:`datamove.studies.models.improvements`."""
    return models.improvements(members, resamples=resamples, rng_seed=rng_seed, by=KEY[:3],
                               stats=COMPARED, sums=(*SUMS, *HORIZON_SUMS))


def per_arm(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (problem, model, training, arm), in the table's order: each error's mean and standard
    deviation over seeds, the horizon error of every seed (``horizon_per_seed``, seed -> value),
    samples/s and batches (means over seeds)."""
    rows = []
    for (problem, model, training, arm), part in summary.groupby([*KEY[:3], "arm"], sort=False):
        part = part.sort_values("seed")
        row = {"problem": problem, "model": model, "training": training, "arm": arm, "seeds": len(part),
               "solver": part["solver"].iloc[0], "network": part["network"].iloc[0],
               "horizon_step": part["horizon_step"].iloc[0]}
        for stat in ("horizon_rel_l2", "rollout_rel_l2", "test_rel_l2"):
            values = part[stat].to_numpy(dtype=float)
            row[f"{stat}_mean"], row[f"{stat}_std"] = float(values.mean()), std(values)
        row["horizon_per_seed"] = dict(zip(part["seed"].tolist(), part["horizon_rel_l2"].astype(float).tolist()))
        row["samples_per_s"] = float(part["samples_per_s"].mean())
        row["batches"] = float(part["batches"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def wins_needed(seeds: int) -> int:
    """The seeds online must win: two thirds of them, rounded up (2 of 3)."""
    return math.ceil(2 * seeds / 3)


def horizon_target(solver: Any, network: Any) -> float | None:
    """The issue's target for the horizon error of ``network`` on ``solver``, or None."""
    return HORIZON_TARGETS.get(str(solver), {}).get(str(network))


def targets(summary: pd.DataFrame, gains: pd.DataFrame) -> pd.DataFrame:
    """The issue's targets per (problem, model, training), on the online arm: a row per check
    (``horizon``, ``online_vs_offline``, ``one_step``) with ``met`` (True, False, or None where
    there is nothing to check) and ``detail``, the numbers that decide it."""
    arms = per_arm(summary).set_index([*KEY[:3], "arm"])
    g = gains.set_index([*KEY[:3], "stat"]) if len(gains) else None
    rows = []
    for problem, model, training in dict.fromkeys((p, m, t) for p, m, t, _ in arms.index):
        if (problem, model, training, "online") not in arms.index:
            continue
        online = arms.loc[(problem, model, training, "online")]

        def add(check: str, met: bool | None, detail: str) -> None:
            rows.append({"problem": problem, "model": model, "training": training, "check": check,
                         "met": met, "detail": detail})

        limit = horizon_target(online["solver"], online["network"])
        value = online["horizon_rel_l2_mean"]
        if limit is None:
            add("horizon", None, f"{value:.3e}; no target for {online['network']} on {online['solver']}")
        else:
            add("horizon", bool(value <= limit), f"{value:.3e} {'<=' if value <= limit else '>'} {limit:g}")
        key = (problem, model, training, "horizon_rel_l2")
        if g is None or key not in g.index:
            add("online_vs_offline", None, "no offline arm")
        else:
            r = g.loc[key]
            need = wins_needed(int(r["seeds"]))
            met = bool(r["online_mean"] < r["offline_mean"] and r["wins"] >= need)
            add("online_vs_offline", met, f"online {r['online_mean']:.3e} vs offline {r['offline_mean']:.3e}; "
                f"{int(r['wins'])} of {int(r['seeds'])} seeds (at least {need})")
        if training == BASELINE:
            add("one_step", None, f"{online['test_rel_l2_mean']:.3e}; the baseline")
        elif (problem, model, BASELINE, "online") not in arms.index:
            add("one_step", None, f"{online['test_rel_l2_mean']:.3e}; no {BASELINE} training in this table")
        else:
            base = arms.loc[(problem, model, BASELINE, "online"), "test_rel_l2_mean"]
            change = online["test_rel_l2_mean"] / base - 1
            add("one_step", bool(change <= ONE_STEP_SLACK),
                f"{online['test_rel_l2_mean']:.3e} vs {base:.3e} ({change:+.1%}; at most {ONE_STEP_SLACK:+.0%})")
    return pd.DataFrame(rows, columns=[*KEY[:3], "check", "met", "detail"])


def _mark(met: bool | None, detail: str) -> str:
    return f"{'met' if met else 'not met' if met is not None else '-'}: {detail}"


def markdown(summary: pd.DataFrame, gains: pd.DataFrame, checks: pd.DataFrame, *, resamples: int) -> str:
    """rollouts.md: the trainings, each arm's errors and samples/s, online against offline, and the
    issue's targets, met or not."""
    seeds = sorted(set(summary["seed"]))
    firsts = summary.groupby("problem", sort=False)[["test_members", "horizon_step"]].first()
    lines = [
        f"Rollouts: online against offline per training, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
        "test members and horizon (the last step): "
        + ", ".join(f"{p} {r.test_members}, step {r.horizon_step}" for p, r in firsts.iterrows()) + ".", "",
        "Trainings (their trainer keys, from the runs' configs):", "",
        "| training | " + " | ".join(RECIPE) + " |", "|---|" + "---|" * len(RECIPE),
    ]
    for training, r in summary.groupby("training", sort=False)[list(RECIPE)].first().iterrows():
        lines.append(f"| {training} | " + " | ".join(str(r[k]) for k in RECIPE) + " |")
    arms = per_arm(summary)
    lines += [
        "", "Errors per arm, relative L2 pooled over the test members of each seed (sqrt(sum sq_err / sum "
        "sq_truth)), then mean +- standard deviation over seeds (the mean alone for one seed): at the horizon "
        "(the rollout from each test member's first true steps, at its last step; then each seed's), over all "
        "the rollout's steps, and one step from true inputs. samples/s: mean over seeds (a sample is a window "
        "of history + unroll x bundle steps).", "",
        "| problem | model | training | arm | horizon rel L2 | per seed | rollout rel L2 | one-step rel L2 | samples/s |",
        "|---|---|---|---|---|---|---|---|---:|",
    ]
    for r in arms.itertuples():
        per_seed = ", ".join(f"{k}: {v:.3e}" for k, v in r.horizon_per_seed.items())
        lines.append(
            f"| {r.problem} | {r.model} | {r.training} | {r.arm} | {pm(r.horizon_rel_l2_mean, r.horizon_rel_l2_std)} | "
            f"{per_seed} | {pm(r.rollout_rel_l2_mean, r.rollout_rel_l2_std)} | "
            f"{pm(r.test_rel_l2_mean, r.test_rel_l2_std)} | {r.samples_per_s:,.1f} |")
    lines += [
        "", "Online against offline: improvement 1 - online / offline error of the same seed (positive: online "
        "has the lower error), mean +- standard deviation over seeds (the mean alone for one seed), and the seeds "
        "online won; 95 % interval "
        f"over test members: percentile bootstrap of the mean improvement, {resamples} resamples of the test "
        "members (the same for both arms and every seed).", "",
        "| problem | model | training | error | online | offline | improvement | seeds won | 95 % interval (test members) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in gains.itertuples():
        lines.append(
            f"| {r.problem} | {r.model} | {r.training} | {COMPARED[r.stat]} | {pm(r.online_mean, r.online_std)} | "
            f"{pm(r.offline_mean, r.offline_std)} | {pm(r.gain_mean, r.gain_std, '+.1%', '.1%')} | "
            f"{r.wins} of {r.seeds} | [{r.ci_low:+.1%}, {r.ci_high:+.1%}] |")
    limits = "; ".join(f"{solver} " + ", ".join(f"{n} {v:g}" for n, v in nets.items())
                       for solver, nets in HORIZON_TARGETS.items())
    lines += [
        "", "Targets of issue 31, on the online arm's errors (means over seeds): the horizon rel L2 at most the "
        f"issue's target ({limits}; none for other problems and models); online better than offline at the "
        "horizon, on the mean and on at least two thirds of the seeds; the one-step rel L2 at most "
        f"{ONE_STEP_SLACK:.0%} above that of the {BASELINE} training (the baseline).", "",
        "| problem | model | training | horizon rel L2 <= target | online better than offline | "
        f"one-step rel L2 within {ONE_STEP_SLACK:.0%} of {BASELINE} |",
        "|---|---|---|---|---|---|",
    ]
    for (problem, model, training), part in checks.groupby(list(KEY[:3]), sort=False):
        cells = part.set_index("check")
        lines.append(f"| {problem} | {model} | {training} | "
                     + " | ".join(_mark(cells.loc[c, "met"], cells.loc[c, "detail"])
                                  for c in ("horizon", "online_vs_offline", "one_step")) + " |")
    met = checks["met"].dropna()
    lines += ["", f"Targets met: {int(met.astype(bool).sum())} of {len(met)} checked."]
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, steps: pd.DataFrame, path: str | Path) -> Path:
    """A row per problem: the horizon error of every (model, training) per arm (bars: mean over
    seeds, error bars: std, dots: seeds, red marks: the issue's targets; log scale), and the
    rollout's relative L2 against the step (pooled over test members, mean over seeds; online
    solid, offline dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(summary["problem"]))
    fig, axes = plt.subplots(len(problems), 2, figsize=(13, 4.2 * len(problems)), squeeze=False)
    arms = per_arm(summary)
    for row, problem in zip(axes, problems):
        ax, growth = row
        part = arms[arms["problem"] == problem]
        pairs = list(dict.fromkeys(zip(part["model"], part["training"])))
        for x, (model, training) in enumerate(pairs):
            for j, arm in enumerate(ARMS):
                r = part[(part["model"] == model) & (part["training"] == training) & (part["arm"] == arm)]
                if r.empty:
                    continue
                r = r.iloc[0]
                xs = x + (j - 0.5) * 0.38
                ax.bar(xs, r["horizon_rel_l2_mean"], width=0.36, color=f"C{j}", alpha=0.7,
                       yerr=np.nan_to_num(r["horizon_rel_l2_std"]), capsize=3, label=arm if x == 0 else None)
                seeds = list(r["horizon_per_seed"].values())
                ax.scatter(xs + np.linspace(-0.08, 0.08, len(seeds)), seeds, color="k", s=10, zorder=3)
            limit = horizon_target(part["solver"].iloc[0], part[part["model"] == model]["network"].iloc[0])
            if limit is not None:
                ax.plot([x - 0.45, x + 0.45], [limit, limit], color="r", lw=1.5)
        ax.set_yscale("log")
        ax.set_xticks(range(len(pairs)), [f"{m}\n{t}" for m, t in pairs])
        ax.set_ylabel("rollout relative L2 at the horizon")
        ax.set_title(f"{problem}: the horizon (red: the issue's target)")
        ax.legend(fontsize=8)
        st = steps[steps["problem"] == problem]
        for i, (model, training) in enumerate(pairs):
            for arm, style in zip(ARMS, ("-", "--")):
                s = st[(st["model"] == model) & (st["training"] == training) & (st["arm"] == arm)]
                if s.empty:
                    continue
                err = np.sqrt(s["rollout_sq_err"] / s["sq_truth"])
                curve = err.groupby(s["step"]).mean()
                growth.plot(curve.index, curve.to_numpy(), style, color=f"C{i % 10}",
                            label=f"{model} {training} {arm}")
        growth.set_yscale("log")
        growth.set_xlabel("step")
        growth.set_ylabel("rollout relative L2 (mean over seeds)")
        growth.set_title(f"{problem}: error growth")
        growth.legend(fontsize=7)
    from datamove.evaluation.plots import save_figure  # matplotlib only where a figure is drawn

    return save_figure(fig, path)


def report(frames: Mapping[str, pd.DataFrame], paths: Mapping[str, Path], *, resamples: int = 2000) -> str:
    """rollouts.md and rollouts.png from the three CSV files; returns the Markdown."""
    gains = improvements(frames["members"], resamples=resamples)
    checks = targets(frames["summary"], gains)
    text = markdown(frames["summary"], gains, checks, resamples=resamples)
    paths["markdown"].write_text(text)
    plot(frames["summary"], frames["steps"], paths["figure"])
    return text


KIND = StudyKind(
    name="rollouts", section=SECTION, rule="rollout", target="compare_rollouts",
    axes=(named(SECTION, "problems", "problem", default=lambda cfg: cfg["solver"]["name"]),
          named(SECTION, "models", "model", default=lambda cfg: cfg["trainer"]["model"]),
          named(SECTION, "trainings", "training", default=lambda cfg: BASELINE),
          seed_axis(SECTION)),
    loop=("seeds", "problems", "models", "trainings"), run_name="{problem}.{model}.{training}.seed{seed}", key=KEY,
    resets={SECTION: {}}, settle=_settle,
    run_outputs=models.KIND.run_outputs, ledger=models.KIND.ledger, run_figures=lambda st: st["run_figures"],
    same_tests_within=("problem",),
    declared=lambda st: bool(st["problems"] or st["models"] or st["trainings"]),
    check_first=_check_trainings,
    tables={"summary": "rollouts.csv", "members": "rollouts_members.csv", "steps": "rollouts_steps.csv",
            "markdown": "rollouts.md", "figure": "rollouts.png"},
    collect=collect, report=report, caption="rollouts.rst",
)
