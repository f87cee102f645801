"""The models study: online against offline for every (problem, model) and seed.

A run is one (problem, model, seed): the study's config with the problem's overrides, then the
model's, deep-merged in (datamove.config.merge_config), ``ensemble.seed`` and ``trainer.seed`` set
to the seed, and ``comparison.enabled``: a complete comparison study (datamove.evaluation.arms),
whose online arm streams ``ensemble.n_members`` members and whose offline arm trains on
``comparison.offline_members`` stored ones with the same budget (``comparison.budget``). Every
model and seed of a problem is tested on the same test members (the sweep's checks).

The improvement of online over offline is ``1 - online / offline`` of the same seed (positive:
online has the lower error; the comparison study's table says the same in %). Its 95 % interval
over test members is a percentile bootstrap: the test members are resampled (the same resample for
both arms and every seed of a (problem, model), since they are the same members), and the mean
improvement over seeds recomputed on each resample. Errors: datamove.studies.stats.

Layout under ``<results_dir>/<study>/models/``: ``runs/<problem>.<model>.seed<k>/`` each run's
comparison study (``online/``, ``offline/``; its figures and ``results.md`` with
``model_study.run_figures``), ``runs/<problem>.<model>.seed<k>.yaml`` its config, and ``models.csv``
(a row per run and arm), ``models_members.csv`` (a row per run, arm and test member: the sums the
statistics pool), ``models.md`` and ``models.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datamove.evaluation.arms import ARMS
from datamove.studies.stats import STATS, SUMS, arm_row, bootstrap_weights, pooled_stats, std
from datamove.studies.sweep import StudyKind, named, seed_axis

SECTION = "model_study"
#: Columns of models.csv, one row per (problem, model, seed, arm). The rollout columns are empty for
#: direct models.
COLUMNS = (
    "problem", "model", "seed", "arm", "sample", "test_members", "test_samples",
    "test_mse", "test_rel_l2", "rollout_mse", "rollout_rel_l2",
    "batches", "train_s", "batches_per_s", "samples_per_s", "members", "val_loss_final",
)


# --------------------------------------------------------------------------- errors and models.csv


def collect(runs: Mapping[tuple[str, str, int], str | Path]) -> dict[str, pd.DataFrame]:
    """models.csv (``summary``) and the per test member sums of every arm of every run
    (``members``): ``runs`` maps (problem, model, seed) to the run's comparison-study folder (with
    online/ and offline/)."""
    rows, sums = [], []
    for (problem, model, seed), folder in runs.items():
        for arm in ARMS:
            row, s = arm_row(Path(folder) / arm, problem=problem, model=model, seed=seed, arm=arm)
            rows.append(row)
            sums.append(s)
    return {"summary": pd.DataFrame(rows, columns=list(COLUMNS)),
            "members": pd.concat(sums, ignore_index=True)[["problem", "model", "seed", "arm", "member", *SUMS]]}


def _arrays(members: pd.DataFrame, seeds: Sequence[int], sums: Sequence[str] = SUMS) -> dict[str, np.ndarray]:
    """The ``sums`` of one (problem, model) as arrays [seeds, arms, members]; the same members in
    every seed and arm, or ValueError."""
    ids = sorted(set(members["member"]))
    out = {k: np.empty((len(seeds), len(ARMS), len(ids))) for k in sums}
    for i, seed in enumerate(seeds):
        for j, arm in enumerate(ARMS):
            part = members[(members["seed"] == seed) & (members["arm"] == arm)].sort_values("member")
            if part["member"].tolist() != ids:
                raise ValueError(f"seed {seed}, arm {arm}: test members {part['member'].tolist()} differ from {ids}")
            for k in sums:
                out[k][i, j] = part[k].to_numpy()
    return out


def improvements(members: pd.DataFrame, *, resamples: int = 2000, rng_seed: int = 0,
                 by: Sequence[str] = ("problem", "model"), stats: Mapping[str, str] = STATS,
                 sums: Sequence[str] = SUMS) -> pd.DataFrame:
    """Per (problem, model) and statistic of :data:`STATS` the model has (rollouts only for an
    autoregressive one): online and offline mean and standard deviation over seeds; the improvement
    1 - online / offline per seed, its mean and standard deviation over seeds and the seeds it won;
    and the 2.5 and 97.5 percentiles of the mean improvement over ``resamples`` bootstrap resamples
    of the test members (``ci_low``, ``ci_high``).

    Another kind groups by more fields (``by``: the rollout study's (problem, model, training)) and
    compares other statistics of :func:`datamove.studies.stats.pooled_stats` (``stats``), pooled
    from the per member ``sums`` they need."""
    rows = []
    rng = np.random.default_rng(rng_seed)
    for key, part in members.groupby(list(by), sort=False):
        seeds = sorted(set(part["seed"]))
        arrays = _arrays(part, seeds, sums)
        n_members = arrays["n"].shape[-1]
        weights = bootstrap_weights(rng, n_members, resamples)
        full = pooled_stats(arrays)  # [seeds, arms]
        boot = pooled_stats(arrays, weights)  # [seeds, arms, resamples]
        for stat in stats:
            values = full[stat]
            if np.isnan(values).all():
                continue  # a direct model: no rollout
            gain = 1.0 - values[:, 0] / values[:, 1]  # per seed
            boot_gain = (1.0 - boot[stat][:, 0] / boot[stat][:, 1]).mean(0)
            lo, hi = np.percentile(boot_gain, [2.5, 97.5])
            rows.append({
                **dict(zip(by, key)), "stat": stat, "seeds": len(seeds), "test_members": n_members,
                "online_mean": float(values[:, 0].mean()), "online_std": std(values[:, 0]),
                "offline_mean": float(values[:, 1].mean()), "offline_std": std(values[:, 1]),
                "gain_mean": float(gain.mean()), "gain_std": std(gain), "wins": int((gain > 0).sum()),
                "ci_low": float(lo), "ci_high": float(hi),
            })
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame, gains: pd.DataFrame, *, resamples: int) -> str:
    """models.md: the errors of both arms and the improvement of online over offline per (problem,
    model), then their training budgets and throughputs."""
    seeds = sorted(set(summary["seed"]))
    tests = summary.groupby("problem", sort=False)["test_members"].first()
    lines = [
        f"Online against offline, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); test members: "
        + ", ".join(f"{p} {n}" for p, n in tests.items()) + ".",
        "Each arm: mean +- standard deviation over seeds. Improvement: 1 - online / offline error of the same "
        "seed (positive: online has the lower error), mean +- standard deviation over seeds, and the seeds "
        f"online won. 95 % interval over test members: percentile bootstrap of the mean improvement, {resamples} "
        "resamples of the test members (the same for both arms and every seed).", "",
        "| problem | model | error | online | offline | improvement | seeds won | 95 % interval (test members) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in gains.itertuples():
        lines.append(
            f"| {r.problem} | {r.model} | {STATS[r.stat]} | {r.online_mean:.3e} +- {r.online_std:.1e} | "
            f"{r.offline_mean:.3e} +- {r.offline_std:.1e} | {r.gain_mean:+.1%} +- {r.gain_std:.1%} | "
            f"{r.wins} of {r.seeds} | [{r.ci_low:+.1%}, {r.ci_high:+.1%}] |"
        )
    lines += ["", "Training, mean over seeds (the offline arm trains as many batches as the online arm, or as many "
              "seconds: comparison.budget):", "",
              "| problem | model | sample | arm | batches | training time (s) | samples/s | members |",
              "|---|---|---|---|---:|---:|---:|---:|"]
    mean = summary.groupby(["problem", "model", "sample", "arm"], sort=False)[["batches", "train_s", "samples_per_s", "members"]].mean()
    for (problem, model, sample, arm), r in mean.iterrows():
        lines.append(f"| {problem} | {model} | {sample} | {arm} | {r.batches:,.0f} | {r.train_s:,.1f} | "
                     f"{r.samples_per_s:,.1f} | {r.members:,.0f} |")
    return "\n".join(lines) + "\n"


def plot(gains: pd.DataFrame, members: pd.DataFrame, path: str | Path) -> Path:
    """One panel per error statistic: the improvement of online over offline of each (problem,
    model), the bar its mean over seeds with the standard deviation as error bar, a dot per seed,
    and the 95 % interval over test members as a grey line beside the bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [s for s in STATS if s in set(gains["stat"])]
    pairs = list(dict.fromkeys(zip(gains["problem"], gains["model"])))
    fig, axes = plt.subplots(1, len(stats), figsize=(max(4.0, 1.2 * len(pairs) + 2) * len(stats), 4.5), squeeze=False)
    for ax, stat in zip(axes[0], stats):
        g = gains[gains["stat"] == stat].set_index(["problem", "model"])
        for x, pair in enumerate(pairs):
            if pair not in g.index:
                continue
            r = g.loc[pair]
            ax.bar(x, 100 * r["gain_mean"], width=0.6, color=f"C{x % 10}", alpha=0.7,
                   yerr=100 * np.nan_to_num(r["gain_std"]), capsize=4)
            ax.plot([x + 0.38] * 2, [100 * r["ci_low"], 100 * r["ci_high"]], color="0.4", lw=2)
            part = members[(members["problem"] == pair[0]) & (members["model"] == pair[1])]
            seeds = sorted(set(part["seed"]))
            per_seed = pooled_stats(_arrays(part, seeds))[stat]
            ax.scatter(x + np.linspace(-0.15, 0.15, len(seeds)), 100 * (1 - per_seed[:, 0] / per_seed[:, 1]),
                       color="k", s=12, zorder=3)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(pairs)), [f"{p}\n{m}" for p, m in pairs])
        ax.set_ylabel("improvement of online over offline (%)")
        ax.set_title(STATS[stat])
    fig.suptitle("bars: mean over seeds +- std; dots: seeds; grey: 95 % interval over test members", fontsize=9)
    from datamove.evaluation.plots import save_figure  # matplotlib only where a figure is drawn

    return save_figure(fig, path)


def report(frames: Mapping[str, pd.DataFrame], paths: Mapping[str, Path], *, resamples: int = 2000) -> str:
    """models.md and models.png from models.csv and models_members.csv; returns the Markdown."""
    gains = improvements(frames["members"], resamples=resamples)
    text = markdown(frames["summary"], gains, resamples=resamples)
    paths["markdown"].write_text(text)
    plot(gains, frames["members"], paths["figure"])
    return text


def _settle(cfg: dict[str, Any], values: Mapping[str, Any]) -> None:
    cfg["comparison"]["enabled"] = True  # a run is a comparison study: both arms
    cfg["evaluation"]["enabled"] = True


KIND = StudyKind(
    name="models", section=SECTION, rule="model", target="compare_models",
    axes=(named(SECTION, "problems", "problem", default=lambda cfg: cfg["solver"]["name"]),
          named(SECTION, "models", "model", default=lambda cfg: cfg["trainer"]["model"]),
          seed_axis(SECTION)),
    loop=("seeds", "problems", "models"), run_name="{problem}.{model}.seed{seed}", key=("problem", "model", "seed"),
    # A run is one comparison: its nested workflow need not plan the whole study again.
    resets={SECTION: {}}, settle=_settle,
    run_outputs={"online_evaluation": "online/evaluation.csv", "online_metrics": "online/metrics.csv",
                 "online_ledger": "online/ledger.csv", "offline_evaluation": "offline/evaluation.csv",
                 "offline_metrics": "offline/metrics.csv"},
    ledger="online/ledger.csv", run_figures=lambda st: st["run_figures"], same_tests_within=("problem",),
    # Nothing to check where model_study names no problem and no model (the default, and every
    # run's own config): the one run is the config itself, validated when its config is written.
    declared=lambda st: bool(st["problems"] or st["models"]),
    tables={"summary": "models.csv", "members": "models_members.csv", "markdown": "models.md",
            "figure": "models.png"},
    collect=collect, report=report, caption="models.rst",
)
