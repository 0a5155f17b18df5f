#!/usr/bin/env bash
# The test command: sets up the environment, then runs the suite on the CPU in two runs:
# everything but the Triton kernels, then the kernels under the Triton interpreter (set before Triton is imported).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
python -m pytest -q -m "not triton" tests "$@"
TRITON_INTERPRET=1 python -m pytest -q -m triton tests/kernels
