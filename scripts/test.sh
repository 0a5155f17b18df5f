#!/usr/bin/env bash
# The test command: sets up the environment, then runs the suite on the CPU in three runs:
# everything but the Triton kernels; the kernels under the Triton interpreter (set before Triton is imported); and the
# ahead-of-time compile tests again under each Triton of COMPILE_CHECK_TRITONS (default 3.6.0, the one torch 2.11
# pins, and the H100 machine's): the same kernel can compile to slower code under one Triton than under another
# (3.6 dropped a divisibility hint that 3.9 keeps: no vector weight loads, no pipelined K loop, 2.1x slower on the
# H100, 2026-11-24), and the compile tests check what each emits. COMPILE_CHECK_TRITONS="" skips that run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
python -m pytest -q -m "not triton" tests "$@"
TRITON_INTERPRET=1 python -m pytest -q -m triton tests/kernels
for version in ${COMPILE_CHECK_TRITONS-3.6.0}; do
    dir=.venv/triton-$version  # installed beside the venv's own Triton, first on PYTHONPATH for this run only
    if [ ! -f "$dir/.installed" ]; then
        rm -rf "$dir"
        pip install -q --no-deps --target "$dir" "triton==$version" \
            || { echo "could not install triton==$version for the compile tests (COMPILE_CHECK_TRITONS=\"\" skips them)" >&2; exit 1; }
        touch "$dir/.installed"
    fi
    PYTHONPATH="$dir" python -c "import sys, triton; sys.exit(None if triton.__version__ == '$version' else \
        f'expected triton $version from $dir, imported {triton.__version__} from {triton.__file__}')"
    echo "compile tests under triton $version"
    PYTHONPATH="$dir" python -m pytest -q -p no:cacheprovider tests/kernels/test_kernel_compile.py
done
