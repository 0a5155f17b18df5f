#!/usr/bin/env bash
# The MoE kernels' GPU work (issue 6), one device call per step, each under 10 minutes on one H100. In this order
# (the tests first: they are the only check of the compiled bf16/fp16 paths, and tuning broken kernels wastes the
# call; they also test the default tiles, which installed tables would replace):
#   bash scripts/gpu_kernels.sh tests [OUT]  # the compiled-kernel and compile tests: OUT/tests.log
#   bash scripts/gpu_kernels.sh tune [OUT]   # block sizes for the benchmark grid's shapes (E 8/16/64, widths
#                                            # 256-2048, each entry picked over top-k 1/2/8 and d_model 1024/4096):
#                                            # the report OUT/tune.json, which lists every pick
#   bash scripts/gpu_kernels.sh install OUT/tune.json ...   # here, not on the GPU: the tables, rebuilt from the
#                                            # report(s), into kernels/configs/ (python -m kernels.configs.tuning);
#                                            # a later report's entries replace an earlier one's, and an installed
#                                            # table keeps the token counts no report tuned (--replace drops them)
#   bash scripts/gpu_kernels.sh grid [OUT]   # the benchmark grid with the tables in kernels/configs/: OUT/grid.json
# OUT defaults to $OUT (the device tool's folder) or results/gpu/kernels/<date>. Logs go to OUT/<step>.log. Arguments
# after OUT go to the step's command (later flags win), e.g. `bash scripts/gpu_kernels.sh tune "$OUT" --experts 64`
# to split the tuning over two calls. `KERNELS_FROM=DIR bash scripts/gpu_kernels.sh grid OUT2` times the kernels
# unpacked in DIR instead (scripts/device_env.sh): an A/B of two versions in one call. Run the two sides of any A/B in
# one call (`grid "$OUT/a" ...; grid "$OUT/b" ...`): between calls a case's dense rate moved a median 2.9%, more than
# the effects measured (e.g. --atomic-top2's 1.4%), and a later call may get another card. The device tool brings
# back at most 8 files a call, named in letters, digits, '.', '_' and '-' alone: a step leaves at most 3 in OUT
# (<step>.device.txt, <step>.log, its JSON); the tuner writes its tables (`E=8,N=2048,k=1,device_name=...json`) to
# the machine's /tmp instead, to be rebuilt here from the report by `install`. The report is rewritten after each
# token count, so a call stopped at its limit keeps what it tuned.
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-}
if [ "$step" = install ]; then
    PY=python3
    [ -x .venv/bin/python ] && PY=.venv/bin/python
    exec $PY -m kernels.configs.tuning "${@:2}"
fi
case "$step" in tune | grid | tests) ;; *) echo "usage: bash scripts/gpu_kernels.sh tests|tune|grid [OUT] | install REPORT..." >&2; exit 2 ;; esac
. scripts/device_env.sh  # $PY, PYTHONPATH, wheels from .whl/ where packages are missing
out=${2:-${OUT:-results/gpu/kernels/$(date +%F)}}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.sm,clocks.max.sm,temperature.gpu --format=csv 2>/dev/null \
    | tee "$out/$step.device.txt"
(cd / && $PY -c "import kernels, torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'kernels', \
    kernels.__file__)") | tee -a "$out/$step.device.txt"  # from /: the kernels PYTHONPATH gives, not the working dir's
run() {  # run a command, its output to the screen and OUT/<step>.log; its exit status
    "$@" 2>&1 | tee "$out/$step.log"
    return "${PIPESTATUS[0]}"
}
case "$step" in
tune)
    run $PY benchmarks/moe_kernels.py --tune --tune-space quick --experts 8 16 64 --top-k 1 2 8 --d-model 1024 4096 \
        --base-width 1024 --tune-tokens 1024 2048 8192 16384 32768 65536 --warmup-ms 5 --rep-ms 20 \
        --tune-out "${TMPDIR:-/tmp}/moe_tuned_configs" --out "$out/tune.json" "${@:3}"
    ;;
grid) run $PY benchmarks/moe_kernels.py --warmup-ms 10 --rep-ms 40 --out "$out/grid.json" "${@:3}" ;;
# The compile tests too: they check the pipelining and vector widths of what this machine's Triton emits (3.6 on the
# H100 of 2026-11-24 lost the gate/up pipelining that 3.9, here, kept).
tests) run $PY -m pytest -q -m "gpu or slow" tests/kernels "${@:3}" ;;
esac
