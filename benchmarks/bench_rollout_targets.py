"""Rollout errors of state against delta targets (trainer.target), with and without input noise
(trainer.input_noise): offline heat, 16x16, 20 steps, 8 training / 2 held-out / 4 test members, fc
(hidden 64, 2 layers), autoregressive stride 1, batch 16, seeds 0 and 1. Prints, per run, the mean
one-step rel_l2 and the rollout rel_l2 (mean over steps, and at the last step) on the test members.

    PYTHONPATH=. python benchmarks/bench_rollout_targets.py OUT_DIR BATCHES
"""
import sys
from pathlib import Path

import torch
import yaml
from datamove.config import StudyConfig
from datamove.ensemble.members import make_heldout, make_testset, run_member
from datamove.training.offline import train_offline
from datamove.training.step import load_surrogate
from datamove.evaluation.errors import evaluate_members

torch.set_num_threads(1)
root = sys.argv[1]
Path(root).mkdir(parents=True, exist_ok=True)
batches = int(sys.argv[2])
base = {
    "study": "m", "results_dir": f"{root}/results", "data_dir": f"{root}/data",
    "solver": {"nx": 16, "ny": 16, "n_steps": 20},
    "ensemble": {"n_members": 8}, "heldout": {"n_members": 2}, "test": {"n_members": 4},
    "stream": {"engine": "BP5"},
    "offline": {"loader_workers": 0, "reader": "memory"},
    "trainer": {"device": "cpu", "batch_size": 16, "log_every": 100, "sample": "autoregressive",
                "sample_stride": 1, "model": "fc", "model_args": {"hidden": 64, "layers": 2}},
}
def cfg_of(**tr):
    raw = yaml.safe_load(yaml.safe_dump(base)); raw["trainer"].update(tr)
    p = f"{root}/c.yaml"; open(p, "w").write(yaml.safe_dump(raw)); return StudyConfig.load(p)
cfg = cfg_of()
for m in range(cfg.ensemble.n_members):
    run_member(cfg, m, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir)
make_heldout(cfg); make_testset(cfg)
for seed in (0, 1):
    for target, noise in (("state", 0.0), ("delta", 0.0), ("state", 0.002), ("delta", 0.002)):
        c = cfg_of(target=target, input_noise=noise, seed=seed)
        train_offline(c, budget_batches=batches)
        model, _ = load_surrogate(c.study_dir / "model.pt")
        e, _ = evaluate_members(model, c, arm="offline")
        last = e[e["step"] == e["step"].max()]
        print(f"RESULT seed={seed} target={target} noise={noise}: one-step rel_l2 {e['rel_l2'].mean():.2e} "
              f"rollout rel_l2 mean {e['rollout_rel_l2'].mean():.3e} last step {last['rollout_rel_l2'].mean():.3e}",
              flush=True)
