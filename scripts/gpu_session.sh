#!/usr/bin/env bash
# All the GPU work in one call (< 10 minutes on one H100 from bare): `python evaluate.py --suite gpu` (compiled
# kernel tests and a short benchmark, telemetry cost, KCM validation, brief pretraining of the gpu preset, a short
# measured comparison), written to results/gpu/<date>__<gpu>/ (or $1). Uses .venv if there is one; wheels in .whl/
# (the device tool's machines have no package index: gymnasium, farama-notifications, stable-baselines3, arch,
# pandas<3 with pytz and tzdata, and rliable) are installed to /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -d .whl ] && ! $PY -c "import gymnasium, stable_baselines3; from rliable import library" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    [ -d .whl/pysrc ] && cp -r .whl/pysrc/* /tmp/site/
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_')
out=${1:-results/gpu/$(date +%F)__${gpu:-unknown}}
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm,temperature.gpu --format=csv 2>/dev/null
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
$PY evaluate.py --suite gpu --out "$out" --overwrite "${@:2}"
