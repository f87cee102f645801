#!/usr/bin/env bash
# The checks that only a GPU shows, as one short script for a lent GPU machine (a few minutes, not
# timed yet; give it a run limit of 10 min):
#   1. the tests marked gpu (a CUDA buffer, train step, checkpoint GPU -> CPU),
#   2. bench_reservoir (a): the draw of every policy against a train step on the GPU (docs/reservoir.md),
#   3. bench_isolation with model and buffer on the GPU: the intake cost per sample (the batched
#      put_many's copy to the device) and the batch rate while streams arrive, against the same
#      loop fed from memory (docs/scaling.md).
#   4. bench_models: the train step of every model (fc, fno, mppde, unet) at the workstation size
#      on the GPU, against the reservoir's draw (docs/models.md), in fp32, bf16 and fp16
#      (trainer.precision), and with autoregressive samples. mppde needs torch_geometric and
#      its dependencies among the wheels in .whl/ (below) where the machine lacks them.
#
#   bash benchmarks/gpu_checks.sh
#
# Where the machine lacks the project's packages, put their wheels for its Python in .whl/ (git
# ignores it; see /work/.library/device/README.md for `pip download`) and carry .whl: they are
# installed into /tmp/site first. Output also goes to $OUT/gpu_checks.log when $OUT is set.
# A benchmark that does not pass (exit 1 FAIL, 2 DISTURBED) does not stop the checks after it; the
# script exits with the first such code.
set -euo pipefail
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
LOG=${OUT:-/tmp}/gpu_checks.log
# Runs a benchmark; a non-zero exit is kept in rc (the first one), not fatal.
bench() { "$@" || { local code=$?; (( rc )) || rc=$code; }; }
{
    rc=0
    nvidia-smi -L
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    $PY -m pytest -q -p no:cacheprovider -m gpu tests
    bench $PY benchmarks/bench_reservoir.py --part draw --device cuda --repeats 200
    bench $PY benchmarks/bench_isolation.py --device cuda
    bench $PY benchmarks/bench_models.py --device cuda --repeats 20 --warmup 5 --draw-repeats 200 --precision fp32 bf16 fp16
    bench $PY benchmarks/bench_models.py --device cuda --repeats 20 --warmup 5 --draw-repeats 200 --sample autoregressive
    exit "$rc"
} 2>&1 | tee "$LOG"
