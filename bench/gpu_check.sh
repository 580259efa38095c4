#!/usr/bin/env bash
# The GPU check, ready before a GPU is: on a machine with an NVIDIA GPU, installs a CUDA build of the pinned torch
# and this package into $VENV (default .venv-gpu), then runs bench/gpu_check.py (bench.embed with the bf16 GPU
# actor on >= 20k synthetic documents, a short GPU training run) and writes gpu_check.json + gpu_check.md.
# Sized for a short GPU lease: within 8 minutes end to end, installs included (the steps have their own timeouts).
#
#   bash bench/gpu_check.sh [--dry-run] [--n 20000] [--epochs 3] [--out bench/gpu_check_out]
#
# --dry-run: no install, no GPU: runs the same plan on the CPU with tiny sizes in the current Python (CI uses it).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; ARGS+=("$1"); shift ;;
    --n|--epochs|--out) ARGS+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TORCH_VERSION=$(sed -n 's/.*"torch==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)

if [[ $DRY_RUN == 1 ]]; then
  PY=${PYTHON:-python3}
  echo "[gpu_check.sh] dry run: would check nvidia-smi, then install torch==$TORCH_VERSION (CUDA build) + this package"
else
  command -v nvidia-smi >/dev/null || { echo "gpu_check.sh: no nvidia-smi: this needs an NVIDIA GPU" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  VENV=${VENV:-.venv-gpu}
  test -x "$VENV/bin/python" || python3 -m venv "$VENV"
  PY="$VENV/bin/python"
  # PyPI's Linux torch wheel of the pinned version is the CUDA build; no other index is needed.
  timeout 240 "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
  timeout 120 "$PY" -m pip install --quiet -e ".[dev]" sentence-transformers
  "$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
fi

exec "$PY" -m bench.gpu_check "${ARGS[@]}"
