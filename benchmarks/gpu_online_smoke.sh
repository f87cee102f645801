#!/usr/bin/env bash
# A small online study through the CLI (no Snakemake), on whatever device `trainer.device` picks.
# Used to check a GPU machine: prints where the model trained and its batch throughput.
#   DEVICE=auto|cpu|cuda  MEMBERS=8  PARALLEL=4  bash benchmarks/gpu_online_smoke.sh [workdir]
set -euo pipefail
WORK=${1:-/tmp/datamove-smoke}
DEVICE=${DEVICE:-auto}
MEMBERS=${MEMBERS:-8}
PARALLEL=${PARALLEL:-4}
PY=${PYTHON:-python3}
EXTRA=${EXTRA:-3000}
rm -rf "$WORK" && mkdir -p "$WORK"
cat > "$WORK/cfg.yaml" <<CFG
study: smoke
results_dir: $WORK/results
data_dir: $WORK/data
solver: {nx: 64, ny: 64, n_steps: 100}
ensemble: {n_members: $MEMBERS}
heldout: {n_members: 2}
reservoir: {capacity: 800, watermark: 100}
trainer: {batch_size: 64, extra_batches: $EXTRA, log_every: 500, device: $DEVICE}
CFG
$PY -m datamove make-heldout --config "$WORK/cfg.yaml"
$PY -m datamove train --config "$WORK/cfg.yaml" > "$WORK/train.log" 2>&1 &
trainer=$!
$PY -m datamove wait-trainer --config "$WORK/cfg.yaml" --timeout 120
status=0
seq 0 $((MEMBERS - 1)) | xargs -P "$PARALLEL" -I{} $PY -m datamove simulate --config "$WORK/cfg.yaml" --member {} || status=$?
wait $trainer || status=$?
cat "$WORK/train.log"
cat "$WORK/results/smoke/ledger.csv"
exit $status
