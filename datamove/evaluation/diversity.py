"""The data-diversity study: test error against the number of distinct members (diversity.smk).

A run is one (model, arm, members, seed): the study's config with the model's overrides deep-merged
in (:func:`datamove.evaluation.models.merge`, as the models study does), ``ensemble.seed`` and
``trainer.seed`` set to the seed, ``ensemble.n_members`` to the members, and one arm, not a
comparison pair:

- ``online``: ``stream.engine`` SST, the members streamed (never stored), training stopped at
  ``trainer.batch_budget`` batches in all;
- ``offline``: ``stream.engine`` BP5, the members stored, training stopped at the same budget by
  ``offline.max_batches``, with ``offline.epochs`` set to the budget too: an epoch is at least one
  batch, so the epochs never end training first, however few the stored members.

So every point of a model's curve trains the same number of batches; only the number of distinct
members it could learn from differs. Every run is tested on the same test members (their seed,
sampler and count are the config's, which no run changes: :func:`check_diversity`), each run
writing them afresh from the same seed into its own data folder.

Errors are those of the models study (datamove.evaluation.models): pooled over a run's test samples
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
(:func:`read_parts`, ``datamove diversity-table``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datamove.config import validate_config
from datamove.evaluation.models import (
    STATS, SUMS, _check_model_args, arm_row, check_selected, differing_key, identity_of_test_members, merge, models_of,
    pooled_stats, seed_clash, selected,
)
from datamove.evaluation.tables import write_csv

#: The arms, in the order of a seed's runs and of the table.
ARMS = ("offline", "online")
#: Columns of diversity.csv, one row per run. The rollout columns are empty for direct models.
COLUMNS = (
    "model", "arm", "members", "members_trained", "seed", "sample", "test_members", "test_samples",
    "test_mse", "test_rel_l2", "rollout_mse", "rollout_rel_l2",
    "batches", "train_s", "samples_per_s", "val_loss_final",
)
SECTION = "diversity_study"


# --------------------------------------------------------------------------- runs and their configs


def diversity_models(cfg: Mapping[str, Any]) -> dict[str, dict]:
    """diversity_study.models, or the config's own model (named after trainer.model) when empty."""
    return models_of(cfg, section=SECTION)


def run_name(model: str, arm: str, members: int, seed: int) -> str:
    """Unambiguous: model names have no dot (the schema's propertyNames)."""
    return f"{model}.{arm}{members}.seed{seed}"


def points_of(cfg: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(arm, members) of every point of a model's curve: offline, then online, by members."""
    st = cfg[SECTION]
    return [("offline", int(n)) for n in sorted(st["offline_members"])] + [
        ("online", int(n)) for n in sorted(st["online_members"])]


def runs_of(cfg: Mapping[str, Any]) -> list[tuple[str, str, int, int]]:
    """(model, arm, members, seed) of every run that diversity_study.only selects (all where it
    selects none), seed by seed (the order of diversity.csv; Snakemake picks the order in which they
    run)."""
    only = cfg[SECTION].get("only") or {}
    seeds = [int(s) for s in selected(cfg[SECTION]["seeds"], only.get("seeds"))]
    models = selected(diversity_models(cfg), only.get("models"))
    return [(model, arm, n, seed) for seed in seeds for model in models for arm, n in points_of(cfg)]


def run_config(base: Mapping[str, Any], *, root: str | Path, data_root: str | Path, model: str, arm: str,
               members: int, seed: int) -> dict[str, Any]:
    """The validated config of one run: ``base`` (the study's, validated) with the model's
    overrides, the seeds, ``members`` members and the arm's engine and budget (the module's
    docstring), folders under ``root``/``data_root``, evaluation on.

    Its own diversity_study has no points and its model_study no models (a run is one study; its
    nested workflow must not plan or check a study again). Raises ValueError naming the key where
    the model has no trainer.batch_budget or the seed is that of the held-out or test members.
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    name = run_name(model, arm, members, seed)
    cfg = merge(base, diversity_models(base)[model])
    budget = cfg["trainer"]["batch_budget"]
    if budget is None:
        raise ValueError(
            f"key '{SECTION}.models.{model}.trainer.batch_budget': model {model!r} has no batch budget (nor has "
            "trainer.batch_budget): every point of its curve must train the same number of batches"
        )
    for other in ("heldout", "test"):
        if seed == cfg[other]["seed"]:
            raise ValueError(f"key '{SECTION}.seeds': seed {seed} equals {other}.seed, so {other} members would "
                             "repeat training members")
    cfg.update(study=name, arm=None, results_dir=str(root), data_dir=str(data_root), model_study={},
               **{SECTION: {"offline_members": [], "online_members": []}})
    cfg["ensemble"]["seed"] = seed
    cfg["trainer"]["seed"] = seed
    cfg["ensemble"]["n_members"] = int(members)
    cfg["comparison"]["enabled"] = False
    cfg["evaluation"]["enabled"] = True
    if arm == "online":
        cfg["stream"]["engine"] = "SST"
    else:
        cfg["stream"]["engine"] = "BP5"
        cfg["stream"]["xml_config"] = None  # an XML file configures SST streams
        cfg["offline"].update(epochs=int(budget), max_batches=int(budget), max_seconds=None)
    return validate_config(cfg, source=f"diversity study run {name}")


def check_diversity(cfg: Mapping[str, Any]) -> None:
    """Every run config must be valid and every run tested on the same test members; seeds must not
    be those of the held-out or test members.

    Raises ValueError (or ConfigError, from validating a run's config) naming the key at fault.
    Nothing to check where diversity_study names no model (the default, whose config needs no batch
    budget unless the study runs, and every run's own config): :func:`run_config` refuses a run,
    naming the key, when its config is written. Else one config per (model, arm) is built, with the
    arm's fewest members and the first seed: the points of an arm differ only in ensemble.n_members
    and the seeds only in ensemble.seed and trainer.seed, none of which decides the test members.
    """
    st = cfg[SECTION]
    check_selected(SECTION, st.get("only") or {}, {"models": diversity_models(cfg), "seeds": st["seeds"]})
    if not st["models"] or not points_of(cfg):
        return
    for name, over in diversity_models(cfg).items():
        for section in (SECTION, "model_study"):
            if section in over:
                raise ValueError(f"key '{SECTION}.models.{name}.{section}': a run cannot hold another study")
    seed = int(st["seeds"][0])
    first, reference = None, None
    for model in diversity_models(cfg):
        for arm in ARMS:
            counts = [n for a, n in points_of(cfg) if a == arm]
            if not counts:
                continue
            run = run_config(cfg, root="results", data_root="data", model=model, arm=arm, members=counts[0], seed=seed)
            clash = seed_clash(run, st["seeds"])  # every seed, where a run's config sees only its own
            if clash:
                raise ValueError(f"key '{SECTION}.seeds': seed {clash[0]} equals {clash[1]}.seed of model {model!r}, "
                                 f"so {clash[1]} members would repeat training members")
            _check_model_args(run, f"{SECTION}.models.{model}")
            ident = identity_of_test_members(run)
            where = f"model {model!r} {arm}"
            if reference is None:
                first, reference = where, ident
                continue
            key = differing_key(ident, reference)
            if key is not None:
                raise ValueError(
                    f"key '{SECTION}.models.{model}': sets {key} to {ident.get(key)!r} ({where}) where {first} "
                    f"has {reference.get(key)!r}, so the runs would be tested on different test members; set "
                    "it in the config, for every model, or not at all"
                )


# --------------------------------------------------------------------------- errors and diversity.csv


def members_trained(ledger: pd.DataFrame) -> int:
    """Members of a ledger.csv with at least one step a batch learnt from (MemberRecord.steps_trained)."""
    trained = (ledger["steps_received"] - ledger["steps_dropped"] - ledger["steps_evicted"] - ledger["steps_unused"]
               - ledger["steps_unpaired"])
    return int((trained > 0).sum())


def run_row(folder: str | Path, *, model: str, arm: str, members: int, seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """One row of diversity.csv from a run's evaluation.csv, metrics.csv, config.yaml and (online)
    ledger.csv, and the run's per test member sums (datamove.evaluation.models.member_sums)."""
    folder = Path(folder)
    row, sums = arm_row(folder, problem="", model=model, seed=seed, arm=arm)
    ledger = folder / "ledger.csv"
    trained = members_trained(pd.read_csv(ledger)) if arm == "online" and ledger.exists() else int(members)
    out = {**{k: row[k] for k in COLUMNS if k in row}, "members": int(members), "members_trained": trained}
    return {k: out.get(k, np.nan) for k in COLUMNS}, sums.drop(columns="problem").assign(members=int(members))


def collect(runs: Mapping[tuple[str, str, int, int], str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """diversity.csv, and the per test member sums of every run: ``runs`` maps (model, arm,
    members, seed) to the run's study folder."""
    rows, sums = [], []
    for (model, arm, members, seed), folder in runs.items():
        row, s = run_row(folder, model=model, arm=arm, members=members, seed=seed)
        rows.append(row)
        sums.append(s)
    return pd.DataFrame(rows, columns=list(COLUMNS)), pd.concat(sums, ignore_index=True)


#: The files of a study's table in its folder, as write_table writes them (the diversity rule's
#: outputs) and read_parts reads the first two back.
TABLE_FILES = {"summary": "diversity.csv", "members": "diversity_members.csv", "markdown": "diversity.md",
               "figure": "diversity.png"}
SUMMARY_FILE, MEMBERS_FILE = TABLE_FILES["summary"], TABLE_FILES["members"]


def read_parts(folders: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """diversity.csv and the per test member sums of a study run in parts: the concatenated
    ``diversity.csv`` and ``diversity_members.csv`` of each folder (a finished table's folder, or
    a copy of its two files), in the order given.

    Raises ValueError naming the file where one is missing or lacks columns, and naming both folders
    where a run (model, arm, members, seed) is in two parts: which to keep would be a guess.
    """
    summaries, sums, where = [], [], {}
    key = ["model", "arm", "members", "seed"]
    for folder in map(Path, folders):
        frames = []
        for name, columns in ((SUMMARY_FILE, COLUMNS), (MEMBERS_FILE, (*key, "member", *SUMS))):
            path = folder / name
            if not path.is_file():
                raise ValueError(f"{path}: no such file (a part's folder holds {SUMMARY_FILE} and {MEMBERS_FILE})")
            frame = pd.read_csv(path)
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise ValueError(f"{path}: no column {missing[0]!r}")
            frames.append(frame)
        summary, member_sums = frames
        for run in summary[key].itertuples(index=False):
            run = tuple(run)
            if run in where:
                raise ValueError(f"run {run_name(*run)} is in two parts: {where[run]} and {folder}; keep one")
            where[run] = folder
        summaries.append(summary)
        sums.append(member_sums)
    if not summaries:
        raise ValueError("no parts to read")
    return pd.concat(summaries, ignore_index=True), pd.concat(sums, ignore_index=True)


def write_table(summary: pd.DataFrame, members: pd.DataFrame, folder: str | Path, *, resamples: int) -> str:
    """diversity.csv, diversity_members.csv, diversity.md and diversity.png into ``folder``, from
    :func:`collect` or :func:`read_parts`; returns the Markdown."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The table and figure from the CSVs as written: what diversity-table rebuilds from them.
    summary = write_csv(summary, folder / SUMMARY_FILE)
    members = write_csv(members, folder / MEMBERS_FILE, float_format="%.10g")  # sums: keep their digits
    pts = points(members, summary, resamples=resamples)
    text = markdown(summary, pts, resamples=resamples)
    (folder / TABLE_FILES["markdown"]).write_text(text)
    plot(pts, folder / TABLE_FILES["figure"])
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


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def points(members: pd.DataFrame, summary: pd.DataFrame, *, resamples: int = 2000, rng_seed: int = 0) -> pd.DataFrame:
    """Per (model, arm, members) and statistic of :data:`datamove.evaluation.models.STATS` the model
    has (rollouts only for an autoregressive one): seeds, members trained (mean over seeds), the
    mean and standard deviation over seeds, and the 2.5 and 97.5 percentiles of the mean over seeds
    over ``resamples`` bootstrap resamples of the test members (``ci_low``, ``ci_high``; the same
    resamples for every point, since every run has the same test members, or ValueError)."""
    ids = sorted(set(members["member"]))
    rng = np.random.default_rng(rng_seed)
    weights = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=resamples).astype(float)
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
                         "std": _std(values), "ci_low": float(lo), "ci_high": float(hi)})
    # Models as they came, errors as STATS lists them, offline then online, by members.
    rank = {"model": {m: i for i, m in enumerate(dict.fromkeys(members["model"]))},
            "stat": {s: i for i, s in enumerate(STATS)}, "arm": {a: i for i, a in enumerate(ARMS)}}
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

    from datamove.evaluation.plots import save_figure

    stats = [s for s in STATS if s in set(pts["stat"])]
    models = list(dict.fromkeys(pts["model"]))
    fig, axes = plt.subplots(1, len(stats), figsize=(4.8 * len(stats), 4.2), squeeze=False)
    style = {"offline": {"ls": "--", "marker": "s", "mfc": "white"}, "online": {"ls": "-", "marker": "o"}}
    for ax, stat in zip(axes[0], stats):
        for k, model in enumerate(models):
            for arm in ARMS:
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
