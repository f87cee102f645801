"""Training recipes for rollouts, a small ablation (issue 31): one-step training against delta
targets, input noise, temporal bundling, history and unrolled training with and without the
pushforward trick, each trained offline from the same stored members for the same number of
batches, and tested on the same test members, rolled out from their first true steps.

Prints a table, one row per (recipe, seed): the one-step relative L2 (pooled over test members
and steps), the rollout relative L2 at the horizon (the last step, pooled over test members) and
over the whole trajectory, the training time and samples/s; then per recipe the mean over seeds and
its ratio to the one-step recipe's horizon error (below 1: better).

    PYTHONPATH=. python benchmarks/bench_rollout_recipes.py OUT_DIR [--problem heat|navier-stokes]
        [--model fno|unet|mppde] [--nx 32] [--steps 100] [--members 16] [--batches 1000]
        [--seeds 0] [--recipes one-step delta ...]

The problems as in config/models.yaml (heat 32x32, 100 steps; Navier-Stokes 32x32, 40 steps),
models at its widths. Offline from files only: the recipes' train step is the online trainer's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

from datamove.config import StudyConfig
from datamove.ensemble.members import make_heldout, make_testset, run_member
from datamove.evaluation.errors import evaluate_members
from datamove.studies.stats import HORIZON_SUMS, SUMS, member_sums, pooled_stats
from datamove.training.offline import train_offline
from datamove.training.step import load_surrogate

MODELS = {  # config/models.yaml's widths
    "fno": {"modes": 8, "width": 16, "layers": 4},
    "unet": {"width": 8, "levels": 3},
    "mppde": {"hidden": 16, "layers": 3},
}
PROBLEMS = {
    "heat": {"solver": {"name": "heat"}},
    "navier-stokes": {
        "solver": {"name": "navier-stokes", "dt": 0.05, "substeps": 10, "outputs": ["w"]},
        "parameters": {"ranges": {"viscosity": [0.001, 0.01], "forcing_amplitude": [0.0, 0.2],
                                  "ic_amplitude": [0.5, 2.0]}},
    },
}
RECIPES = {
    "one-step": {},
    "delta": {"target": "delta"},
    "delta+noise": {"target": "delta", "input_noise": 0.01},
    "delta+unroll2": {"target": "delta", "unroll": 2},
    "delta+unroll2-bptt": {"target": "delta", "unroll": 2, "pushforward": False},
    "delta+unroll4": {"target": "delta", "unroll": 4, "unroll_warmup": 0},
    "delta+bundle2": {"target": "delta", "bundle": 2},
    "delta+h2+bundle2": {"target": "delta", "history": 2, "bundle": 2},
    "delta+noise+unroll2": {"target": "delta", "input_noise": 0.01, "unroll": 2},
    "delta+noise+unroll4": {"target": "delta", "input_noise": 0.01, "unroll": 4},
    "delta+noise0.03": {"target": "delta", "input_noise": 0.03},
    "delta+noise+bundle2": {"target": "delta", "input_noise": 0.01, "bundle": 2},
    "delta+noise+bundle2+unroll2": {"target": "delta", "input_noise": 0.01, "bundle": 2, "unroll": 2},
}


def base(root: Path, problem: str, model: str, nx: int, steps: int, members: int) -> dict:
    raw = {
        "study": "recipes", "results_dir": f"{root}/results", "data_dir": f"{root}/data",
        "solver": {**PROBLEMS[problem]["solver"]},
        "ensemble": {"n_members": members}, "heldout": {"n_members": 2, "seed": 1000},
        "test": {"n_members": 8, "seed": 2000},
        "stream": {"engine": "BP5"},
        "offline": {"loader_workers": 0, "reader": "memory"},
        "trainer": {"device": "cpu", "batch_size": 32, "log_every": 250, "sample": "autoregressive",
                    "sample_stride": 1, "model": model, "model_args": MODELS[model], "weight_decay": 0.0,
                    "slots": 64},
    }
    if problem == "heat":
        raw["solver"].update({"nx": nx, "ny": nx, "n_steps": steps})
    else:
        raw["solver"].update({"n": nx, "n_steps": steps})
    if "parameters" in PROBLEMS[problem]:
        raw["parameters"] = PROBLEMS[problem]["parameters"]
    return raw


def horizon_rel_l2(e) -> tuple[float, float, float]:
    """(one-step rel L2, rollout rel L2 at the last step, rollout rel L2 over every step), pooled
    over the test members as the rollout study pools them (datamove.studies.stats)."""
    sums = member_sums(e, horizon=True)
    pooled = pooled_stats({k: sums[k].to_numpy() for k in (*SUMS, *HORIZON_SUMS)})
    return float(pooled["test_rel_l2"]), float(pooled["horizon_rel_l2"]), float(pooled["rollout_rel_l2"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--problem", choices=sorted(PROBLEMS), default="heat")
    ap.add_argument("--model", choices=sorted(MODELS), default="fno")
    ap.add_argument("--nx", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="solver.n_steps (heat 100, navier-stokes 40)")
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=sorted(RECIPES))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps = args.steps or (100 if args.problem == "heat" else 40)
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    raw0 = base(root, args.problem, args.model, args.nx, steps, args.members)

    def cfg_of(name: str, **trainer) -> StudyConfig:
        """One study name, so that the held-out and test members (data_dir/<study>/) are shared;
        each recipe's results in a folder of its own, its training members linked to the data's."""
        raw = yaml.safe_load(yaml.safe_dump(raw0, sort_keys=False))
        raw["results_dir"] = f"{root}/results/{name}"
        raw["trainer"].update(trainer)
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return StudyConfig.load(path)

    cfg = cfg_of("data")
    t0 = time.perf_counter()
    for m in range(cfg.ensemble.n_members):
        run_member(cfg, m, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir)
    make_heldout(cfg)
    make_testset(cfg)
    print(f"# {args.problem} {args.nx}x{args.nx}, {steps} steps, {args.members} members, {args.model} "
          f"{MODELS[args.model]}, {args.batches} batches of 32, CPU 1 thread; data in {time.perf_counter() - t0:.0f} s",
          flush=True)
    print("| recipe | seed | one-step rel L2 | rollout rel L2, horizon | rollout rel L2, all steps | train s | samples/s |")
    print("|---|---|---|---|---|---|---|", flush=True)
    results: dict[str, list[tuple[float, float, float]]] = {}
    for recipe in args.recipes:
        for seed in args.seeds:
            c = cfg_of(f"{recipe}.seed{seed}", seed=seed, **RECIPES[recipe])
            c.study_dir.mkdir(parents=True, exist_ok=True)
            if not c.stream_dir.exists():  # every recipe trains on the same stored members
                c.stream_dir.symlink_to(cfg.stream_dir, target_is_directory=True)
            t = time.perf_counter()
            train_offline(c, budget_batches=args.batches)
            train_s = time.perf_counter() - t
            model, _ = load_surrogate(c.study_dir / "model.pt")
            e, _ = evaluate_members(model, c, arm="offline")
            one, hor, whole = horizon_rel_l2(e)
            results.setdefault(recipe, []).append((one, hor, whole))
            print(f"| {recipe} | {seed} | {one:.2e} | {hor:.3e} | {whole:.3e} | {train_s:.0f} | "
                  f"{args.batches * 32 / train_s:,.0f} |", flush=True)
    print()
    ref = results.get("one-step")
    ref_h = sum(r[1] for r in ref) / len(ref) if ref else None
    print("| recipe | mean one-step rel L2 | mean horizon rel L2 | horizon / one-step recipe's |")
    print("|---|---|---|---|")
    for recipe, rows in results.items():
        one = sum(r[0] for r in rows) / len(rows)
        hor = sum(r[1] for r in rows) / len(rows)
        print(f"| {recipe} | {one:.2e} | {hor:.3e} | {hor / ref_h:.2f} |" if ref_h else f"| {recipe} | {one:.2e} | {hor:.3e} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
