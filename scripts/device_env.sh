# Sourced by the GPU scripts: the repository on PYTHONPATH, the compiled kernels (not the interpreter), $PY (.venv's
# Python if there is one), and the wheels in .whl/ installed to /tmp/site where the packages they hold are missing
# (the device tool's machines have no package index: gymnasium, farama-notifications, stable-baselines3, arch,
# pandas<3 with pytz and tzdata, and rliable travel as wheels; name .whl in the call's `carry`). The kernel steps
# (scripts/gpu_kernels.sh) need none of them; scripts/gpu_session.sh does. To fetch them here, as the device tool's
# README says: `echo /.whl/ >> .git/info/exclude`, then `python3 -m pip download --no-deps --only-binary=:all:
# --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
# --platform manylinux2014_x86_64 -d .whl gymnasium==1.4.0 farama-notifications stable-baselines3 rliable==1.2.0
# arch==7.2.0 pandas==2.3.3 pytz tzdata` (the versions .venv holds; a pure-Python one without a wheel goes, as
# source, into .whl/pysrc/).
# KERNELS_FROM=DIR (relative to the repository) imports `kernels` from DIR before the repository's: an earlier version
# unpacked there (`git archive COMMIT kernels | tar -x -C DIR`, untracked, so the device tool carries it) is timed
# beside this one in the same call, on the same card.
export PYTHONUNBUFFERED=1 PYTHONPATH="${KERNELS_FROM:+$PWD/$KERNELS_FROM:}$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
PY=python3
[ -x .venv/bin/python ] && PY=$PWD/.venv/bin/python
if [ -d .whl ] && ! $PY -c "import gymnasium, stable_baselines3; from rliable import library" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    [ -d .whl/pysrc ] && cp -r .whl/pysrc/* /tmp/site/
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
