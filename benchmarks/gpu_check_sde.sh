#!/usr/bin/env bash
# One prepared GPU session for the slow-SDE issue: the step-cost ratio, the general SDE at D = 2e4, and W3.
# Writes its log under $OUT (or ./gpu_out). Budget: about 8 minutes on one H200; the sections are ordered by
# importance and each has its own timeout, so a cut-off run still leaves the first tables.
#
#     OUT=/tmp/gpu bash benchmarks/gpu_check_sde.sh            # on the device
#     QUICK=1 OUT=/tmp/gpu bash benchmarks/gpu_check_sde.sh    # a dry run of every command at toy sizes (CPU)
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
QUICK=${QUICK:-0}
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log_sde.txt") 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the project from this tree, no install
python3 -c "import jax, optax, diffrax; print('jax', jax.__version__, 'optax', optax.__version__, 'diffrax', diffrax.__version__, jax.devices())"
cd benchmarks
run() {  # run SECONDS ARGS...: one timed section; a timeout is reported, not fatal
    local limit=$1; shift
    local t0=$SECONDS
    timeout "$limit" python3 "$@"; local rc=$?
    echo "-- rc $rc, wall $((SECONDS - t0)) s (limit $limit s)"
}
if [ "$QUICK" = 1 ]; then
    STEP16="--d 8 --n 4 --paths 64 --steps 5 --repeats 1"
    STEP2K="--d 100 --n 10 --paths 8 --steps 2 --repeats 1"
    STEP2E4="--d 200 --n 20 --paths 2 --steps 1 --repeats 1"
    W3="--etas 0.08 0.04 --paths 200"
    W3SDE="--paths 400 --bias-paths 400 --timing-paths 100 --etas 0.08 0.04"
else
    STEP16="--d 8 --n 4 --paths 1024 --steps 50 --repeats 3 --breakdown"
    STEP2K="--d 1000 --n 40 --paths 1024 --steps 4 --repeats 1 --breakdown"  # (a looped batched eigh would cost ~1 s a step)
    STEP2E4="--d 10000 --n 200 --paths 64 --steps 5 --repeats 2"
    W3="--etas 0.04 0.02 0.01 --paths 2000"
    W3SDE=""
fi
echo "== 1. one general slow-SDE step against one discrete step, D = 16, 1024 paths (target: ratio <= 5)"
run 90 bench_sde_step.py $STEP16
echo "== 2. the same at D = 2000, n = 40, 1024 paths"
run 120 bench_sde_step.py $STEP2K
echo "== 3. W3 of the label-noise ODEs (hyperbola, diagonal net) at the accuracy of eta = 1e-3, and of the plain SDE"
run 120 bench_w3.py $W3
echo "== 4. W3 of the general SDE (Gaussian noise, Richardson) at the accuracy of eta = 1e-3"
run 120 bench_w3_sde.py $W3SDE
echo "== 5. the general SDE on the diagonal net at D = 2e4, n = 200 (64 paths)"
run 60 bench_sde_step.py $STEP2E4
