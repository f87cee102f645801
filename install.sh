#!/usr/bin/env bash
# Set up DATAMOVE in a virtual environment at .venv (idempotent: a second run only checks).
#
#   TORCH_SPEC       the torch requirement to install first (default: torch==2.13.0). Installing
#                    torch before the package keeps pip from picking another build through the
#                    package's range; GPU users can name their CUDA build here.
#   TORCH_PIP_ARGS   extra pip options for that install (e.g. an --index-url of CPU-only wheels).
#   PYTHON           the interpreter for the venv (default: python3; 3.10 or newer).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    echo "[install] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "[install] installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    .venv/bin/pip install --quiet ${TORCH_PIP_ARGS:-} "$TORCH_SPEC"
fi
echo "[install] installing datamove and its dependencies"
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/python - <<'PY'
import adios2, snakemake, torch
import datamove
print(f"[install] ok: datamove {datamove.__version__}, torch {torch.__version__} "
      f"(cuda: {torch.cuda.is_available()}), adios2 {adios2.__version__}, snakemake {snakemake.__version__}")
PY
