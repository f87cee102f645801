"""The policy study: every buffer policy under a fast- and a slow-producer setting, compared.

A *setting* is a complete study configuration (``config/policies-<setting>.yaml``); the study runs
it once per policy, each run a complete online study of the main workflow with only
``reservoir.policy`` changed (``workflow/rules/policies.smk``). This module holds what the rules
need and is tested without running them: the sub-study configurations, the summary table and the
figure.

Layout: ``<root>/<setting>/<policy>/`` is the sub-study's folder (``metrics.csv``, ``ledger.csv``,
``members/``, ...), ``<root>/<setting>/<policy>.yaml`` its configuration, and ``<root>/summary.csv``
and ``<root>/policies.png`` the comparison.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from datamove.config import load_config, load_schema, validate_config

#: Columns of summary.csv, one row per (setting, policy).
SUMMARY_COLUMNS = (
    "setting",
    "policy",
    "val_loss_final",
    "val_loss_best",
    "batches",
    "train_wall_s",
    "batches_per_s",
    "trained_samples_per_s",
    "samples_received",
    "steps_expected",
    "members_complete",
    "solver_steps_per_s",
    "solver_wait_s",
    "n_evicted",
    "evicted_unseen",
    "n_dropped",
    "seen_mean_final",
)


def policy_names() -> list[str]:
    """Every policy the configuration accepts (the schema's enum, in its order)."""
    return list(load_schema()["properties"]["reservoir"]["properties"]["policy"]["enum"])


def sub_study_config(base: Mapping[str, Any], *, root: str | Path, setting: str, policy: str,
                     data_root: str | Path) -> dict[str, Any]:
    """The configuration of one run of the study: the setting's, with only the policy, the study
    name and the folders changed. Validated, every default filled in.

    The held-out members go to ``<data_root>/<setting>/<policy>/heldout``: every policy of a setting
    has the same held-out seed and solver, hence the same validation set.
    """
    cfg = copy.deepcopy(dict(base))
    cfg["study"] = policy
    cfg["results_dir"] = str(Path(root) / setting)
    cfg["data_dir"] = str(Path(data_root) / setting)
    cfg.setdefault("reservoir", {})["policy"] = policy
    return validate_config(cfg, source=f"policy study setting '{setting}'")


def require_complete(ledger_path: str | Path) -> None:
    """Exit with an error naming the lost members unless every member of a run arrived whole: a run
    that lost members (a crashed stream) is not comparable with the others, so it is retried."""
    ledger = pd.read_csv(ledger_path)
    lost = ledger[(ledger["status"] != "complete") | (ledger["steps_received"] < ledger["steps_expected"])]
    if len(lost):
        rows = "; ".join(f"member {r.member}: {r.status}, {r.steps_received}/{r.steps_expected} steps, {r.reason}"
                         for r in lost.itertuples())
        raise SystemExit(f"{ledger_path}: {len(lost)} member(s) incomplete, the run is not comparable: {rows}")


def load_setting(path: str | Path) -> dict[str, Any]:
    """A setting file, validated (a typo fails here, before any sub-study starts)."""
    return load_config(path)


def summarize_run(study_dir: str | Path, *, setting: str, policy: str) -> dict[str, Any]:
    """One row of summary.csv from a finished sub-study's metrics.csv, ledger.csv and members/."""
    study_dir = Path(study_dir)
    metrics = pd.read_csv(study_dir / "metrics.csv")
    ledger = pd.read_csv(study_dir / "ledger.csv")
    members = [json.loads(p.read_text()) for p in sorted((study_dir / "members").glob("member-*.json"))]
    cfg = load_config(study_dir / "config.yaml") if (study_dir / "config.yaml").exists() else None
    last = metrics.iloc[-1]
    batch_size = cfg["trainer"]["batch_size"] if cfg else float("nan")
    steps = sum(m["steps"] for m in members)
    stream_s = sum(m["total_s"] - m.get("open_s", 0.0) for m in members)
    solve_s = sum(m["solve_s"] for m in members)

    def col(name: str) -> float:
        value = last.get(name, float("nan"))
        return float(value) if pd.notna(value) else float("nan")

    wall = float(last["wall_s"])
    return {
        "setting": setting,
        "policy": policy,
        "val_loss_final": float(last["val_loss"]),
        "val_loss_best": float(metrics["val_loss"].min()),
        "batches": int(last["batch"]),
        "train_wall_s": wall,
        "batches_per_s": int(last["batch"]) / wall if wall > 0 else float("nan"),
        "trained_samples_per_s": int(last["batch"]) * batch_size / wall if wall > 0 else float("nan"),
        "samples_received": int(ledger["steps_received"].sum()),
        "steps_expected": int(ledger["steps_expected"].sum()),
        "members_complete": int((ledger["status"] == "complete").sum()),
        # A member's streaming time (open to last step) against its steps: how fast the ensemble
        # could produce; solver_wait_s is the part of it not spent solving (sending, and waiting
        # for the trainer when it pushes back).
        "solver_steps_per_s": steps / stream_s if stream_s > 0 else float("nan"),
        "solver_wait_s": stream_s - solve_s,
        "n_evicted": col("n_evicted"),
        "evicted_unseen": col("evicted_unseen"),
        "n_dropped": col("n_dropped"),
        "seen_mean_final": col("seen_mean"),
    }


def summarize(runs: Mapping[tuple[str, str], str | Path]) -> pd.DataFrame:
    """summary.csv: ``runs`` maps (setting, policy) to the sub-study's folder."""
    rows = [summarize_run(path, setting=s, policy=p) for (s, p), path in runs.items()]
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def plot_policy_study(runs: Mapping[tuple[str, str], str | Path], summary: pd.DataFrame,
                      path: str | Path) -> Path:
    """One row of panels per setting: validation loss against wall time for every policy (left),
    throughput per policy (right: samples trained per second, and steps the solvers sent per
    second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(s for s, _ in runs))
    policies = list(dict.fromkeys(p for _, p in runs))
    colors = {p: f"C{i}" for i, p in enumerate(policies)}
    fig, axes = plt.subplots(len(settings), 2, figsize=(11, 3.6 * len(settings)), squeeze=False)
    for row, setting in zip(axes, settings):
        ax_loss, ax_rate = row
        for policy in policies:
            if (setting, policy) not in runs:
                continue
            m = pd.read_csv(Path(runs[(setting, policy)]) / "metrics.csv")
            ax_loss.plot(m["wall_s"], m["val_loss"], marker=".", color=colors[policy], label=policy)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("trainer wall time [s]")
        ax_loss.set_ylabel("validation MSE (normalised)")
        ax_loss.set_title(f"{setting} producer: validation loss")
        ax_loss.legend()
        sub = summary[summary["setting"] == setting].set_index("policy").reindex(policies)
        xs = range(len(policies))
        width = 0.38
        ax_rate.bar([x - width / 2 for x in xs], sub["trained_samples_per_s"], width,
                    color=[colors[p] for p in policies], label="samples trained / s")
        ax_rate.bar([x + width / 2 for x in xs], sub["solver_steps_per_s"], width,
                    color=[colors[p] for p in policies], alpha=0.4, hatch="//", label="steps sent / s (per solver)")
        ax_rate.set_xticks(list(xs), policies)
        ax_rate.set_ylabel("samples / s")
        ax_rate.set_title(f"{setting} producer: throughput")
        ax_rate.legend()
    from datamove.evaluation.plots import save_figure

    return save_figure(fig, path)
