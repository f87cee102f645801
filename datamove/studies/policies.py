"""The policy study: every reservoir policy under a fast- and a slow-producer setting, compared.

A *setting* is a complete study configuration (``policy_study.settings``: name -> its file,
``config/policies-fast.yaml`` and ``config/policies-slow.yaml`` by default); a run is a setting with
one ``reservoir.policy`` (``policy_study.policies``; empty: every policy of the registry), a complete
online study of the main workflow, so only the policy differs within a setting.

Layout under ``<results_dir>/<study>/policies/``: ``runs/<setting>.<policy>/`` each run's study
folder (``metrics.csv``, ``ledger.csv``, ``members/``, ...), ``runs/<setting>.<policy>.yaml`` its
configuration, and ``policies.csv`` (a row per run), ``policies_curves.csv`` (every run's
validation loss against wall time) and ``policies.png``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from datamove.config import load_config
from datamove.studies.sweep import Axis, StudyKind, listed

SECTION = "policy_study"
#: Columns of policies.csv, one row per (setting, policy).
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
#: Columns of policies_curves.csv: a run's validation loss over its trainer's wall time.
CURVE_COLUMNS = ("setting", "policy", "batch", "wall_s", "val_loss")


def policy_names() -> list[str]:
    """Every policy of the registry, in its order: the study's policies where it names none."""
    from datamove.reservoir import POLICIES  # torch: only when the study's runs are listed

    return list(POLICIES)


def setting_config(cfg: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The setting's file (policy_study.settings), validated: a run's base in place of the study's
    config. ValueError naming the key where the setting is not in the study or its file is missing."""
    settings = cfg[SECTION]["settings"]
    name = values["setting"]
    if name not in settings:
        raise ValueError(f"key '{SECTION}.settings': no setting {name!r} (the study has {', '.join(settings)})")
    path = Path(settings[name])
    if not path.is_file():
        raise ValueError(f"key '{SECTION}.settings.{name}': {path}: no such file")
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


def collect(runs: Mapping[tuple[str, str], str | Path]) -> dict[str, pd.DataFrame]:
    """policies.csv (``summary``) and every run's validation loss over wall time (``curves``):
    ``runs`` maps (setting, policy) to the run's folder."""
    rows = [summarize_run(path, setting=s, policy=p) for (s, p), path in runs.items()]
    curves = [pd.read_csv(Path(path) / "metrics.csv")[["batch", "wall_s", "val_loss"]].assign(setting=s, policy=p)
              for (s, p), path in runs.items()]
    return {"summary": pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)),
            "curves": pd.concat(curves, ignore_index=True)[list(CURVE_COLUMNS)]}


def report(frames: Mapping[str, pd.DataFrame], paths: Mapping[str, Path], **options: Any) -> str:
    """policies.png from policies.csv and policies_curves.csv; returns the summary as text."""
    plot_policy_study(frames["curves"], frames["summary"], paths["figure"])
    return frames["summary"].to_string(index=False)


def plot_policy_study(curves: pd.DataFrame, summary: pd.DataFrame, path: str | Path) -> Path:
    """One row of panels per setting: validation loss against wall time for every policy (left),
    throughput per policy (right: samples trained per second, and steps the solvers sent per
    second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(summary["setting"]))
    policies = list(dict.fromkeys(summary["policy"]))
    colors = {p: f"C{i}" for i, p in enumerate(policies)}
    fig, axes = plt.subplots(len(settings), 2, figsize=(11, 3.6 * len(settings)), squeeze=False)
    for row, setting in zip(axes, settings):
        ax_loss, ax_rate = row
        for policy in policies:
            m = curves[(curves["setting"] == setting) & (curves["policy"] == policy)]
            if m.empty:
                continue
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
    from datamove.evaluation.plots import save_figure  # matplotlib only where a figure is drawn

    return save_figure(fig, path)


KIND = StudyKind(
    name="policies", section=SECTION, rule="policy", target="compare_policies",
    axes=(Axis(key="settings", fields=("setting",), values=lambda cfg: [{"setting": s} for s in cfg[SECTION]["settings"]],
               override=lambda cfg, values: {}),
          listed(SECTION, "policies", "policy", "reservoir.policy", every=policy_names)),
    loop=("settings", "policies"), run_name="{setting}.{policy}", key=("setting", "policy"),
    resets={SECTION: {"settings": {}}}, settle=lambda cfg, values: None, base_of=setting_config,
    run_outputs={"metrics": "metrics.csv", "ledger": "ledger.csv"},
    # An incomplete ledger here was an ingest worker killed by a crash of the ADIOS2 SST reader
    # (SIGSEGV, seen under load): the run is retried.
    ledger="ledger.csv", run_figures=lambda st: True,
    # The settings are complete configs of their own: nothing to check across them before the runs.
    declared=lambda st: False,
    tables={"summary": "policies.csv", "curves": "policies_curves.csv", "figure": "policies.png"},
    collect=collect, report=report, caption="policies.rst",
)
