"""The models study: online against offline for every (problem, model) and seed (models.smk).

A run is one (problem, model, seed): the study's config with the problem's overrides, then the
model's, deep-merged in (:func:`merge`), ``ensemble.seed`` and ``trainer.seed`` set to the seed, and
``comparison.enabled``: a complete comparison study (datamove.evaluation.arms), whose online arm
streams ``ensemble.n_members`` members and whose offline arm trains on
``comparison.offline_members`` stored ones with the same budget (``comparison.budget``). Every
model and seed of a problem is tested on the same test members (:func:`check_models`).

An arm's test error is pooled over its test samples as in datamove.evaluation.errors: ``mse`` the
mean normalised MSE, ``rel_l2`` = sqrt(sum sq_err / sum sq_truth). For an autoregressive model
(``trainer.sample: autoregressive``) evaluation.csv holds the one-step errors of the steps after the
first ``trainer.sample_stride`` and the errors of a rollout from the member's first steps
(``rollout_mse``, ``rollout_sq_err``), pooled alike; a direct model has no rollout.

The improvement of online over offline is ``1 - online / offline`` of the same seed (positive:
online has the lower error; the comparison study's table says the same in %). Its 95 % interval
over test members is a percentile bootstrap: the test members are resampled (the same resample for
both arms and every seed of a (problem, model), since they are the same members), and the mean
improvement over seeds recomputed on each resample.

Layout under ``<results_dir>/<study>/models/``: ``runs/<problem>.<model>.seed<k>/`` each run's
comparison study (``online/``, ``offline/``; its figures and ``results.md`` with
``model_study.run_figures``), ``runs/<problem>.<model>.seed<k>.yaml`` its config, and ``models.csv`` (a row per run and arm), ``models.md`` and ``models.png``.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from datamove.config import StudyConfig, merge_config as merge, validate_config

#: Columns of models.csv, one row per (problem, model, seed, arm). The rollout columns are empty for
#: direct models.
COLUMNS = (
    "problem", "model", "seed", "arm", "sample", "test_members", "test_samples",
    "test_mse", "test_rel_l2", "rollout_mse", "rollout_rel_l2",
    "batches", "train_s", "batches_per_s", "samples_per_s", "members", "val_loss_final",
)
#: The errors compared, as models.csv names them, with how they read.
STATS = {
    "test_mse": "test MSE",
    "test_rel_l2": "relative L2",
    "rollout_mse": "rollout MSE",
    "rollout_rel_l2": "rollout relative L2",
}
ARMS = ("online", "offline")
#: Per test member sums from which every statistic is pooled (:func:`member_sums`).
SUMS = ("n", "mse_sum", "sq_err", "sq_truth", "rollout_mse_sum", "rollout_sq_err")


# --------------------------------------------------------------------------- runs and their configs


def problems_of(cfg: Mapping[str, Any]) -> dict[str, dict]:
    """model_study.problems, or the config's own problem (named after solver.name) when empty."""
    return dict(cfg["model_study"]["problems"]) or {cfg["solver"]["name"]: {}}


def models_of(cfg: Mapping[str, Any], *, section: str = "model_study") -> dict[str, dict]:
    """model_study.models (or ``section``'s: the diversity study's), or the config's own model
    (named after trainer.model) when empty."""
    return dict(cfg[section]["models"]) or {cfg["trainer"]["model"]: {}}


def run_name(problem: str, model: str, seed: int) -> str:
    """Unambiguous: problem and model names have no dot (the schema's propertyNames)."""
    return f"{problem}.{model}.seed{seed}"


def selected(names: Iterable[Any], chosen: Sequence[Any] | None) -> list[Any]:
    """``names`` that a study's ``only.<key>`` list ``chosen`` names, in their order; all where it
    names none. Compared as text: snakemake --config hands nested values over as strings."""
    wanted = {str(c) for c in chosen or []}
    return [n for n in names if not wanted or str(n) in wanted]


def check_selected(section: str, only: Mapping[str, Sequence[Any]], choices: Mapping[str, Iterable[Any]]) -> None:
    """ValueError naming the key where ``only.<key>`` (a study's part) names what is not one of
    ``choices[key]`` (compared as text, as :func:`selected`)."""
    for key, names in choices.items():
        names = list(names)
        unknown = [name for name in only.get(key, []) if str(name) not in {str(n) for n in names}]
        if unknown:
            raise ValueError(f"key '{section}.only.{key}': {unknown[0]!r} is not one of the study's {key} "
                             f"({', '.join(map(str, names))}: {section}.{key})")


def runs_of(cfg: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(problem, model, seed) of every run that model_study.only selects (all where it selects none),
    seed by seed (the order of models.csv)."""
    only = cfg["model_study"].get("only") or {}
    problems = selected(problems_of(cfg), only.get("problems"))
    models = selected(models_of(cfg), only.get("models"))
    return [(p, m, int(seed)) for seed in cfg["model_study"]["seeds"] for p in problems for m in models]


def run_config(base: Mapping[str, Any], *, root: str | Path, data_root: str | Path, problem: str, model: str,
               seed: int) -> dict[str, Any]:
    """The validated config of one run: ``base`` (the study's, validated) with the problem's and the
    model's overrides, the seed, folders under ``root``/``data_root``, and both comparison arms.
    Its own model_study is reset (a run is one comparison; its nested workflow need not plan the
    whole study again)."""
    name = run_name(problem, model, seed)
    cfg = merge(merge(base, problems_of(base)[problem]), models_of(base)[model])
    cfg.update(study=name, arm=None, results_dir=str(root), data_dir=str(data_root), model_study={})
    cfg["ensemble"]["seed"] = seed
    cfg["trainer"]["seed"] = seed
    cfg["comparison"]["enabled"] = True
    cfg["evaluation"]["enabled"] = True
    return validate_config(cfg, source=f"models study run {name}")


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out or {prefix: {}}
    return {prefix: value}


def identity_of_test_members(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What decides a run's test members, flattened to keys: the solver, the parameter ranges,
    the test sampler (parameters.sampler, or adaptive's base) and the test section."""
    test = StudyConfig.from_dict(cfg).test
    return {**_flat(cfg["solver"], "solver"), **_flat(cfg["parameters"]["ranges"], "parameters.ranges"),
            "parameters.sampler (of the test members)": test.sampler, **_flat(cfg["test"], "test")}


def _check_model_args(cfg: Mapping[str, Any], where: str) -> None:
    """trainer.model_args must be arguments of trainer.model (their values are checked when a run
    builds the model): a typo would otherwise fail only when its run starts, hours into a study."""
    import inspect

    from datamove.models import MODELS

    name, args = cfg["trainer"]["model"], cfg["trainer"]["model_args"]
    takes = set(inspect.signature(MODELS[name].__init__).parameters) - {"self", "in_dim", "out_shape"}
    unknown = sorted(set(args) - takes)
    if unknown:
        raise ValueError(f"key '{where}': trainer.model_args {unknown} are not arguments of model {name!r} "
                         f"(it takes {', '.join(sorted(takes))})")


def seed_clash(run: Mapping[str, Any], seeds: Sequence[int]) -> tuple[int, str] | None:
    """(seed, "heldout" or "test") where one of a study's ``seeds`` equals that section's seed in
    ``run`` (its members would then repeat training members), else None."""
    for other in ("heldout", "test"):
        clash = [k for k in seeds if k == run[other]["seed"]]
        if clash:
            return clash[0], other
    return None


def differing_key(ident: Mapping[str, Any], reference: Mapping[str, Any]) -> str | None:
    """The first key (sorted) where two :func:`identity_of_test_members` differ, else None."""
    return next((k for k in sorted(set(ident) | set(reference)) if ident.get(k) != reference.get(k)), None)


def check_models(cfg: Mapping[str, Any]) -> None:
    """Every run config must be valid, the models of a problem must be tested on the same test
    members (seeds change only ensemble.seed and trainer.seed, which do not decide them), and
    model_study.only must name problems and models of the study.

    Raises ValueError (or ConfigError, from validating a run's config) naming the key at fault.
    Nothing to check where model_study names no problem and no model (the default, and every run's
    own config): the one run is the config itself, validated when its config is written."""
    st = cfg["model_study"]
    check_selected("model_study", st.get("only") or {}, {"problems": problems_of(cfg), "models": models_of(cfg)})
    for key, names in (("problems", problems_of(cfg)), ("models", models_of(cfg))):
        for name, over in names.items():
            if "model_study" in over:
                raise ValueError(f"key 'model_study.{key}.{name}.model_study': a run cannot hold another models study")
    if not st["problems"] and not st["models"]:
        return
    seed = int(st["seeds"][0])
    for problem in problems_of(cfg):
        first, reference = None, None
        for model in models_of(cfg):
            run = run_config(cfg, root="results", data_root="data", problem=problem, model=model, seed=seed)
            clash = seed_clash(run, st["seeds"])
            if clash:
                raise ValueError(f"key 'model_study.seeds': seed {clash[0]} equals {clash[1]}.seed of problem "
                                 f"{problem!r}, so {clash[1]} members would repeat training members")
            _check_model_args(run, f"model_study.models.{model}")
            ident = identity_of_test_members(run)
            if reference is None:
                first, reference = model, ident
                continue
            key = differing_key(ident, reference)
            if key is not None:
                raise ValueError(
                    f"key 'model_study.models.{model}': sets {key} to {ident.get(key)!r} where model "
                    f"{first!r} has {reference.get(key)!r}, so problem {problem!r}'s models would be tested on "
                    f"different test members; set it for every model (model_study.problems.{problem}) or not at all"
                )


# --------------------------------------------------------------------------- errors and models.csv


def member_sums(evaluation: pd.DataFrame) -> pd.DataFrame:
    """Per test member, the sums every statistic pools (:data:`SUMS`): samples ``n``, ``mse_sum``,
    ``sq_err``, ``sq_truth`` and, for an autoregressive model (columns rollout_mse and
    rollout_sq_err), ``rollout_mse_sum`` and ``rollout_sq_err`` (NaN for a direct model)."""
    g = evaluation.groupby("member", sort=True)
    out = pd.DataFrame({"n": g.size(), "mse_sum": g["mse"].sum(), "sq_err": g["sq_err"].sum(),
                        "sq_truth": g["sq_truth"].sum()})
    rollout = {"rollout_mse_sum": "rollout_mse", "rollout_sq_err": "rollout_sq_err"}
    for name, col in rollout.items():
        out[name] = g[col].sum() if col in evaluation else np.nan
    return out.reset_index()


def pooled_stats(sums: Mapping[str, np.ndarray], weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The statistics of :data:`STATS` pooled over members: ``sums`` maps each of :data:`SUMS` to
    an array [..., members]; ``weights`` [resamples, members] (bootstrap counts) or None (each
    member once). Returns arrays [..., resamples] (or [...])."""

    def total(name):
        x = np.asarray(sums[name], dtype=float)
        return x.sum(-1) if weights is None else np.einsum("...m,bm->...b", x, weights)

    n, sq_truth = total("n"), total("sq_truth")
    return {"test_mse": total("mse_sum") / n, "test_rel_l2": np.sqrt(total("sq_err") / sq_truth),
            "rollout_mse": total("rollout_mse_sum") / n, "rollout_rel_l2": np.sqrt(total("rollout_sq_err") / sq_truth)}


def _arm_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def arm_row(folder: str | Path, *, problem: str, model: str, seed: int, arm: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """One row of models.csv from an arm's evaluation.csv, metrics.csv (and config.yaml, ledger.csv
    where present), and the arm's per-member sums (:func:`member_sums`)."""
    folder = Path(folder)
    sums = member_sums(pd.read_csv(folder / "evaluation.csv"))
    metrics = pd.read_csv(folder / "metrics.csv")
    cfg = _arm_config(folder)
    trainer = cfg.get("trainer", {})
    last = metrics.iloc[-1]
    batches, train_s = int(last["batch"]), float(last["wall_s"])
    per_batch = trainer.get("batch_size", np.nan) * trainer.get("world_size", 1)
    ledger = folder / "ledger.csv"
    members = int((pd.read_csv(ledger)["status"] == "complete").sum()) if ledger.exists() else np.nan
    stats = pooled_stats({k: sums[k].to_numpy() for k in SUMS})
    row = {"problem": problem, "model": model, "seed": seed, "arm": arm,
           "sample": trainer.get("sample", "direct"), "test_members": len(sums), "test_samples": int(sums["n"].sum()),
           **{k: float(v) for k, v in stats.items()},
           "batches": batches, "train_s": train_s, "batches_per_s": batches / max(train_s, 1e-9),
           "samples_per_s": batches * per_batch / max(train_s, 1e-9), "members": members,
           "val_loss_final": float(last["val_loss"])}
    return row, sums.assign(problem=problem, model=model, seed=seed, arm=arm)


def collect(runs: Mapping[tuple[str, str, int], str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """models.csv, and the per-member sums of every arm of every run: ``runs`` maps (problem, model,
    seed) to the run's comparison-study folder (with online/ and offline/)."""
    rows, sums = [], []
    for (problem, model, seed), folder in runs.items():
        for arm in ARMS:
            row, s = arm_row(Path(folder) / arm, problem=problem, model=model, seed=seed, arm=arm)
            rows.append(row)
            sums.append(s)
    return pd.DataFrame(rows, columns=list(COLUMNS)), pd.concat(sums, ignore_index=True)


def _arrays(members: pd.DataFrame, seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """The sums of one (problem, model) as arrays [seeds, arms, members]; the same members in every
    seed and arm, or ValueError."""
    ids = sorted(set(members["member"]))
    out = {k: np.empty((len(seeds), len(ARMS), len(ids))) for k in SUMS}
    for i, seed in enumerate(seeds):
        for j, arm in enumerate(ARMS):
            part = members[(members["seed"] == seed) & (members["arm"] == arm)].sort_values("member")
            if part["member"].tolist() != ids:
                raise ValueError(f"seed {seed}, arm {arm}: test members {part['member'].tolist()} differ from {ids}")
            for k in SUMS:
                out[k][i, j] = part[k].to_numpy()
    return out


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def improvements(members: pd.DataFrame, *, resamples: int = 2000, rng_seed: int = 0) -> pd.DataFrame:
    """Per (problem, model) and statistic of :data:`STATS` the model has (rollouts only for an
    autoregressive one): online and offline mean and standard deviation over seeds; the improvement
    1 - online / offline per seed, its mean and standard deviation over seeds and the seeds it won;
    and the 2.5 and 97.5 percentiles of the mean improvement over ``resamples`` bootstrap resamples
    of the test members (``ci_low``, ``ci_high``)."""
    rows = []
    rng = np.random.default_rng(rng_seed)
    for (problem, model), part in members.groupby(["problem", "model"], sort=False):
        seeds = sorted(set(part["seed"]))
        arrays = _arrays(part, seeds)
        n_members = arrays["n"].shape[-1]
        weights = rng.multinomial(n_members, np.full(n_members, 1.0 / n_members), size=resamples).astype(float)
        full = pooled_stats(arrays)  # [seeds, arms]
        boot = pooled_stats(arrays, weights)  # [seeds, arms, resamples]
        for stat, what in STATS.items():
            values = full[stat]
            if np.isnan(values).all():
                continue  # a direct model: no rollout
            gain = 1.0 - values[:, 0] / values[:, 1]  # per seed
            boot_gain = (1.0 - boot[stat][:, 0] / boot[stat][:, 1]).mean(0)
            lo, hi = np.percentile(boot_gain, [2.5, 97.5])
            rows.append({
                "problem": problem, "model": model, "stat": stat, "seeds": len(seeds), "test_members": n_members,
                "online_mean": float(values[:, 0].mean()), "online_std": _std(values[:, 0]),
                "offline_mean": float(values[:, 1].mean()), "offline_std": _std(values[:, 1]),
                "gain_mean": float(gain.mean()), "gain_std": _std(gain), "wins": int((gain > 0).sum()),
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
    from datamove.evaluation.plots import save_figure

    return save_figure(fig, path)


def run_targets(cfg_path, outputs, online_ledger, *, figures: bool) -> str:
    """A run's targets in the nested workflow: all of a comparison study with run_figures (""),
    else the arms' outputs the rule declares and the online arm's member markers (the trainer does
    not depend on its solvers: without them as targets no member would run); no figures, no table."""
    if figures:
        return ""
    ensemble = yaml.safe_load(Path(cfg_path).read_text())["ensemble"]
    n, k = ensemble["n_members"], ensemble["members_per_job"]
    members = Path(online_ledger).parent / "members"
    names = [f"job-{j:06d}" for j in range(-(-n // k))] if k > 1 else [f"member-{m:06d}" for m in range(n)]
    return " ".join(shlex.quote(str(path)) for path in [*outputs, *(members / f"{name}.json" for name in names)])
