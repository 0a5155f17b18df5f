#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) and installs the project into it.
# Without an NVIDIA GPU the pinned CPU PyTorch goes in first, so that the project's torch range is already met and
# pip does not pull a multi-GB CUDA build. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        pip install -q "torch>=2.4,<2.15"
    else
        pip install -q torch==2.13.0
    fi
fi
if ! python -c "import moe_runtime, gymnasium, stable_baselines3, pytest, rliable" >/dev/null 2>&1 \
    || [ pyproject.toml -nt .venv/.installed ]; then
    pip install -q -e ".[dev]"
    touch .venv/.installed
fi
