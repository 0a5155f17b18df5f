#!/usr/bin/env bash
# All the GPU work in one call (< 10 minutes on one H100 from bare): `python evaluate.py --suite gpu` (compiled
# kernel tests and a short benchmark, telemetry cost, KCM validation, brief pretraining of the gpu preset, a short
# measured comparison), written to results/gpu/<date>__<gpu>/ (or $1; in a device call, also packed into
# $OUT/<that folder's name>.tar, to unpack into results/gpu/). Environment: scripts/device_env.sh (.venv if
# there is one; the wheels in .whl/ installed to /tmp/site first).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/device_env.sh
if ! $PY -c "import gymnasium, stable_baselines3; from rliable import library" 2>/dev/null; then  # fail in seconds
    echo "gpu_session.sh: gymnasium, stable-baselines3 or rliable is missing and .whl/ does not supply them: fetch" \
        "the wheels (scripts/device_env.sh says how) and name .whl in the device call's carry" >&2
    exit 2
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_')
out=${1:-results/gpu/$(date +%F)__${gpu:-unknown}}
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm,temperature.gpu --format=csv 2>/dev/null
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
limit=()
# In a device call (10 minutes at most, then everything is killed), stop the suite in time to pack what it wrote.
[ -n "${OUT:-}" ] && limit=(timeout -k 10 "${GPU_SESSION_LIMIT_S:-560}")
"${limit[@]}" $PY evaluate.py --suite gpu --out "$out" --overwrite "${@:2}"
rc=$?
# The device tool brings back at most 8 files from $OUT, 16 MiB each (the suite writes ~20, in folders): one archive,
# without cache/ (the gpu preset's pretrained checkpoint, ~1.8 GB).
if [ -n "${OUT:-}" ] && [ -d "$out" ] && [ "$(cd "$out" && pwd)" != "$(cd "$OUT" && pwd)" ]; then
    tar="$OUT/$(basename "$out").tar"
    tar --exclude="$(basename "$out")/cache" -C "$(dirname "$out")" -cf "$tar" "$(basename "$out")" \
        && echo "packed $out into $tar ($(du -h "$tar" | cut -f1); the device tool returns files up to 16 MiB)"
fi
exit $rc
