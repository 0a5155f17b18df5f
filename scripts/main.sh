#!/usr/bin/env bash
# The main job on the embedded defaults (CPU, built-in corpus): sets up the environment, pretrains the default
# model once (cached), then serves it across a domain shift.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m moe_runtime.demo "$@"
