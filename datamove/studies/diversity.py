"""The data-diversity study: test error against the number of distinct members (diversity.smk).

A run is one (model, arm, members, seed): the study's config with the model's overrides deep-merged
in (datamove.config.merge_config, as the models study does), ``ensemble.seed`` and
``trainer.seed`` set to the seed, ``ensemble.n_members`` to the members, and one arm, not a
comparison pair:

- ``online``: ``stream.engine`` SST, the members streamed (never stored), training stopped at
  ``trainer.batch_budget`` batches in all;
- ``offline``: ``stream.engine`` BP5, the members stored, training stopped at the same budget by
  ``offline.max_batches``, with ``offline.epochs`` set to the budget too: an epoch is at least one
  batch, so the epochs never end training first, however few the stored members.

So every point of a model's curve trains the same number of batches; only the number of distinct
members it could learn from differs. Every run is tested on the same test members (their seed,
sampler and count are the config's, which no run changes: the sweep's checks), each run
writing them afresh from the same seed into its own data folder.

Errors are those of the models study (datamove.studies.stats): pooled over a run's test samples
(``test_mse``, ``test_rel_l2``; for an autoregressive model one-step errors, and ``rollout_mse``,
``rollout_rel_l2`` of rollouts from the members' first steps). A point (model, arm, members) is
summed up by the mean and standard deviation over seeds, and a 95 % interval over test members: a
percentile bootstrap of the mean over seeds, the test members resampled (the same resample for
every run).

``members_trained`` counts the members at least one batch learnt from: online, from the ledger
(``steps_trained`` > 0: with a fixed budget a large ensemble streams steps the reservoir evicts or
never draws); offline, the stored members (the offline trainer draws from all of them and does not
count draws per member).

Layout under ``<results_dir>/<study>/diversity/``: ``runs/<model>.<arm><members>.seed<k>/`` each
run's study folder, ``runs/<...>.yaml`` its config, and ``diversity.csv`` (a row per run),
``diversity_members.csv`` (a row per run and test member: the sums the statistics pool),
``diversity.md`` and ``diversity.png``. A study run in parts (``diversity_study.only``), in other
folders or on other machines, is one table again from its parts' two CSV files
(datamove.studies.tables.read_parts, ``datamove study-table diversity``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datamove.evaluation.arms import ARMS
from datamove.studies.stats import STATS, SUMS, arm_row, bootstrap_weights, pooled_stats, std
from datamove.studies.sweep import Axis, StudyKind, named, seed_axis

#: Columns of diversity.csv, one row per run. The rollout columns are empty for direct models.
COLUMNS = (
    "model", "arm", "members", "members_trained", "seed", "sample", "test_members", "test_samples",
    "test_mse", "test_rel_l2", "rollout_mse", "rollout_rel_l2",
    "batches", "train_s", "samples_per_s", "val_loss_final",
)
SECTION = "diversity_study"


# --------------------------------------------------------------------------- runs and their configs


def _points(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """(arm, members) of every point of a model's curve: offline, then online, by members. A point
    sets ensemble.n_members (and the arm's engine and budget: :func:`_settle`)."""
    st = cfg[SECTION]
    return [{"arm": arm, "members": int(n)} for arm in ("offline", "online") for n in sorted(st[f"{arm}_members"])]


def _settle(cfg: dict[str, Any], values: Mapping[str, Any]) -> None:
    """The arm's engine and budget (the module's docstring); ValueError naming the key where the
    model has no trainer.batch_budget."""
    model, arm = values["model"], values["arm"]
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    budget = cfg["trainer"]["batch_budget"]
    if budget is None:
        raise ValueError(
            f"key '{SECTION}.models.{model}.trainer.batch_budget': model {model!r} has no batch budget (nor has "
            "trainer.batch_budget): every point of its curve must train the same number of batches"
        )
    cfg["comparison"]["enabled"] = False
    cfg["evaluation"]["enabled"] = True
    if arm == "online":
        cfg["stream"]["engine"] = "SST"
    else:
        cfg["stream"]["engine"] = "BP5"
        cfg["stream"]["xml_config"] = None  # an XML file configures SST streams
        cfg["offline"].update(epochs=int(budget), max_batches=int(budget), max_seconds=None)


# --------------------------------------------------------------------------- errors and diversity.csv


def members_trained(ledger: pd.DataFrame) -> int:
    """Members of a ledger.csv with at least one step a batch learnt from (MemberRecord.steps_trained)."""
    trained = (ledger["steps_received"] - ledger["steps_dropped"] - ledger["steps_evicted"] - ledger["steps_unused"]
               - ledger["steps_unpaired"])
    return int((trained > 0).sum())


def run_row(folder: str | Path, *, model: str, arm: str, members: int, seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """One row of diversity.csv from a run's evaluation.csv, metrics.csv, config.yaml and (online)
    ledger.csv, and the run's per test member sums (datamove.studies.stats.arm_row)."""
    folder = Path(folder)
    row, sums = arm_row(folder, model=model, arm=arm, seed=seed)
    ledger = folder / "ledger.csv"
    trained = members_trained(pd.read_csv(ledger)) if arm == "online" and ledger.exists() else int(members)
    out = {**row, "members": int(members), "members_trained": trained}
    return {k: out.get(k, np.nan) for k in COLUMNS}, sums.assign(members=int(members))


def collect(runs: Mapping[tuple[str, str, int, int], str | Path]) -> dict[str, pd.DataFrame]:
    """diversity.csv (``summary``) and the per test member sums of every run (``members``):
    ``runs`` maps (model, arm, members, seed) to the run's study folder."""
    rows, sums = [], []
    for (model, arm, members, seed), folder in runs.items():
        row, s = run_row(folder, model=model, arm=arm, members=members, seed=seed)
        rows.append(row)
        sums.append(s)
    return {"summary": pd.DataFrame(rows, columns=list(COLUMNS)),
            "members": pd.concat(sums, ignore_index=True)[["model", "arm", "members", "seed", "member", *SUMS]]}


def report(frames: Mapping[str, pd.DataFrame], paths: Mapping[str, Path], *, resamples: int = 2000) -> str:
    """diversity.md and diversity.png from diversity.csv and diversity_members.csv; returns the
    Markdown."""
    pts = points(frames["members"], frames["summary"], resamples=resamples)
    text = markdown(frames["summary"], pts, resamples=resamples)
    paths["markdown"].write_text(text)
    plot(pts, paths["figure"])
    return text


def _arrays(part: pd.DataFrame, seeds: Sequence[int], ids: Sequence[int], where: str) -> dict[str, np.ndarray]:
    """The sums of one point as arrays [seeds, test members], in the order ``ids``; ValueError where
    a seed's test members differ."""
    out = {k: np.empty((len(seeds), len(ids))) for k in SUMS}
    for i, seed in enumerate(seeds):
        rows = part[part["seed"] == seed].sort_values("member")
        if rows["member"].tolist() != list(ids):
            raise ValueError(f"{where}, seed {seed}: test members {rows['member'].tolist()} differ from {list(ids)}")
        for k in SUMS:
            out[k][i] = rows[k].to_numpy()
    return out


def points(members: pd.DataFrame, summary: pd.DataFrame, *, resamples: int = 2000, rng_seed: int = 0) -> pd.DataFrame:
    """Per (model, arm, members) and statistic of :data:`datamove.studies.stats.STATS` the model
    has (rollouts only for an autoregressive one): seeds, members trained (mean over seeds), the
    mean and standard deviation over seeds, and the 2.5 and 97.5 percentiles of the mean over seeds
    over ``resamples`` bootstrap resamples of the test members (``ci_low``, ``ci_high``; the same
    resamples for every point, since every run has the same test members, or ValueError)."""
    ids = sorted(set(members["member"]))
    rng = np.random.default_rng(rng_seed)
    weights = bootstrap_weights(rng, len(ids), resamples)
    trained = summary.groupby(["model", "arm", "members"])["members_trained"].mean()
    rows = []
    for (model, arm, n), part in members.groupby(["model", "arm", "members"], sort=False):
        seeds = sorted(set(part["seed"]))
        arrays = _arrays(part, seeds, ids, f"model {model}, {arm} with {n} members")
        full = pooled_stats(arrays)  # [seeds]
        boot = pooled_stats(arrays, weights)  # [seeds, resamples]
        for stat in STATS:
            values = full[stat]
            if np.isnan(values).all():
                continue  # a direct model: no rollout
            lo, hi = np.percentile(boot[stat].mean(0), [2.5, 97.5])
            rows.append({"model": model, "arm": arm, "members": int(n), "members_trained": float(trained[(model, arm, n)]),
                         "stat": stat, "seeds": len(seeds), "test_members": len(ids), "mean": float(values.mean()),
                         "std": std(values), "ci_low": float(lo), "ci_high": float(hi)})
    # Models and arms as the runs came (offline then online: the points' order), errors as STATS
    # lists them, by members.
    rank = {"model": {m: i for i, m in enumerate(dict.fromkeys(members["model"]))},
            "stat": {s: i for i, s in enumerate(STATS)}, "arm": {a: i for i, a in enumerate(dict.fromkeys(members["arm"]))}}
    return pd.DataFrame(rows).sort_values(["model", "stat", "arm", "members"], key=lambda c: c.map(rank.get(c.name, {}))
                                          if c.name in rank else c, kind="stable", ignore_index=True)


def crossover(pts: pd.DataFrame) -> pd.DataFrame:
    """Per (model, statistic): the best offline point (lowest mean), and the fewest streamed members
    whose online mean is below it (``online_members`` NaN where none is), with its mean."""
    rows = []
    for (model, stat), part in pts.groupby(["model", "stat"], sort=False):
        off = part[part["arm"] == "offline"]
        on = part[part["arm"] == "online"].sort_values("members")
        if off.empty or on.empty:
            continue
        best = off.loc[off["mean"].idxmin()]
        beats = on[on["mean"] < best["mean"]]
        first = beats.iloc[0] if len(beats) else None
        rows.append({"model": model, "stat": stat, "offline_members": int(best["members"]),
                     "offline_mean": float(best["mean"]),
                     "online_members": float(first["members"]) if first is not None else np.nan,
                     "online_mean": float(first["mean"]) if first is not None else np.nan,
                     "online_best_mean": float(on["mean"].min())})
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame, pts: pd.DataFrame, *, resamples: int) -> str:
    """diversity.md: per model, a row per point with its number of seeds, each error's mean +- std
    over them (no std with one seed) and its 95 % interval over test members; where online first
    beats the best offline point; then the training each point had."""
    seeds = sorted(set(summary["seed"]))
    lines = [
        f"Test error against distinct members, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), "
        f"{int(summary['test_members'].iloc[0])} test members (the same for every run). Members: stored (offline) "
        "or streamed (online); trained: members at least one batch learnt from (online: the ledger's steps_trained); "
        "seeds: the seeds run at that point (a study run in parts may have fewer at some points). "
        f"Each error: mean +- standard deviation over seeds (none with one seed), then the 95 % interval over test members (percentile "
        f"bootstrap of the mean over seeds, {resamples} resamples of the test members, the same for every run). "
        "Every point of a model trains the same batches (its trainer.batch_budget).", "",
    ]
    for model, part in pts.groupby("model", sort=False):
        stats = [s for s in STATS if s in set(part["stat"])]
        lines += [f"### {model}", "",
                  "| arm | members | trained | seeds | " + " | ".join(STATS[s] for s in stats) + " |",
                  "|---|---:|---:|---:|" + "---|" * len(stats)]
        table = part.set_index(["arm", "members", "stat"])
        for (arm, n), p in part.groupby(["arm", "members"], sort=False):
            cells = []
            for s in stats:
                r = table.loc[(arm, n, s)]
                spread = f" +- {r['std']:.1e}" if r["seeds"] > 1 else ""  # one seed has no spread
                cells.append(f"{r['mean']:.3e}{spread} [{r['ci_low']:.2e}, {r['ci_high']:.2e}]")
            lines.append(f"| {arm} | {n:,} | {p['members_trained'].iloc[0]:,.0f} | {p['seeds'].iloc[0]} | "
                         + " | ".join(cells) + " |")
        lines.append("")
        for c in crossover(part).itertuples():
            best = f"the best offline point ({c.offline_members:,} stored, {c.offline_mean:.3e})"
            if np.isnan(c.online_members):
                lines.append(f"- {STATS[c.stat]}: online does not beat {best} at any member count "
                             f"(its best: {c.online_best_mean:.3e}).")
            else:
                lines.append(f"- {STATS[c.stat]}: online first beats {best} at {c.online_members:,.0f} streamed "
                             f"members ({c.online_mean:.3e}).")
        lines.append("")
    lines += ["Training, mean over seeds:", "",
              "| model | sample | arm | members | batches | training time (s) | samples/s |",
              "|---|---|---|---:|---:|---:|---:|"]
    mean = summary.groupby(["model", "sample", "arm", "members"], sort=False)[["batches", "train_s", "samples_per_s"]].mean()
    for (model, sample, arm, n), r in mean.iterrows():
        lines.append(f"| {model} | {sample} | {arm} | {n:,} | {r.batches:,.0f} | {r.train_s:,.1f} | {r.samples_per_s:,.1f} |")
    return "\n".join(lines) + "\n"


def plot(pts: pd.DataFrame, path: str | Path) -> Path:
    """One panel per error statistic: the mean over seeds against members (log-log), one colour
    per model, offline dashed with open squares and online solid with filled circles, the standard
    deviation over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from datamove.evaluation.plots import save_figure  # matplotlib only where a figure is drawn

    stats = [s for s in STATS if s in set(pts["stat"])]
    models = list(dict.fromkeys(pts["model"]))
    fig, axes = plt.subplots(1, len(stats), figsize=(4.8 * len(stats), 4.2), squeeze=False)
    style = {"offline": {"ls": "--", "marker": "s", "mfc": "white"}, "online": {"ls": "-", "marker": "o"}}
    for ax, stat in zip(axes[0], stats):
        for k, model in enumerate(models):
            for arm in dict.fromkeys(pts["arm"]):
                p = pts[(pts["stat"] == stat) & (pts["model"] == model) & (pts["arm"] == arm)].sort_values("members")
                if p.empty:
                    continue
                ax.errorbar(p["members"], p["mean"], yerr=np.nan_to_num(p["std"]), color=f"C{k % 10}", capsize=3,
                            label=f"{model} {arm}", **style[arm])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("members (stored offline, streamed online)")
        ax.set_ylabel(STATS[stat])
        ax.set_title(STATS[stat])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("mean over seeds +- std; the same batches at every point of a model", fontsize=9)
    return save_figure(fig, path)


KIND = StudyKind(
    name="diversity", section=SECTION, rule="diversity", target="diversity",
    axes=(named(SECTION, "models", "model", default=lambda cfg: cfg["trainer"]["model"]),
          Axis(key="points", fields=("arm", "members"), values=_points, selectable=False,
               override=lambda cfg, point: {"ensemble": {"n_members": int(point["members"])}}),
          seed_axis(SECTION)),
    loop=("seeds", "models", "points"), run_name="{model}.{arm}{members}.seed{seed}", key=("model", "arm", "members", "seed"),
    # A run is one study: its own diversity_study has no points and its model_study no models.
    resets={"model_study": {}, SECTION: {"offline_members": [], "online_members": []}}, settle=_settle,
    run_outputs={"evaluation": "evaluation.csv", "metrics": "metrics.csv", "ledger": "ledger.csv"},
    ledger="ledger.csv", run_figures=lambda st: False,
    # Nothing to check where diversity_study names no model (the default, whose config needs no
    # batch budget unless the study runs, and every run's own config): a run is refused, naming
    # the key, when its config is written.
    declared=lambda st: bool(st["models"]),
    tables={"summary": "diversity.csv", "members": "diversity_members.csv", "markdown": "diversity.md",
            "figure": "diversity.png"},
    collect=collect, report=report, caption="diversity.rst",
)
