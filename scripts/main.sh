#!/usr/bin/env bash
# The main job on the embedded defaults (CPU, simulated GPU, built-in corpus): sets up the environment, pretrains
# the default model once (cached), evaluates the committed trained policy against the heuristic, kcm_greedy and no control on
# held-out seeds, trains PPO for a few minutes as a labelled short run, and writes the report under results/main.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python evaluate.py --suite main --out results/main --overwrite "$@"
