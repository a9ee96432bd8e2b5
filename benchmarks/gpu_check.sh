#!/usr/bin/env bash
# One prepared GPU session for the discrete engine (issue 10). Writes logs under $OUT (or ./gpu_out).
# Budget: about 8 minutes on one H200 (each step below prints its own wall time); the sections are ordered
# by importance, so a cut-off run still leaves the engine table.
#     QUICK=1 OUT=/tmp/gpu bash benchmarks/gpu_check.sh    # a dry run of every command at toy sizes (CPU)
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
QUICK=${QUICK:-0}
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log.txt") 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the project from this tree, no install
python3 -c "import jax, jaxlib, optax, diffrax; print('jax', jax.__version__, 'optax', optax.__version__, 'diffrax', diffrax.__version__, jax.devices())"
B=benchmarks/bench_discrete.py
if [ "$QUICK" = 1 ]; then
    W1="--d 50 --n 20 --paths 16 --steps 20 --repeats 1"; W2="--d 10 --n 4 --paths 16 --steps 20 --repeats 1"
    SWEEP="--paths 8 --steps 20"; STREAM="--paths 8 --d 20 --n 8 --records 2 4 --steps-per-record 5"
else
    W1="--d 1000 --n 400 --paths 1024 --steps 2000 --repeats 3"; W2="--d 100 --n 40 --paths 1024 --steps 2000 --repeats 3"
    SWEEP="--paths 1024 --steps 2000"; STREAM="--paths 1024 --d 1000 --n 400 --records 10 100 --steps-per-record 100"
fi
echo "== W1 (d=1000, n=400, 1024 paths, 2000 steps): engine against the hand loop; f64 with the ablation"
timeout 240 python3 $B $W1 --dtype float64 --ablate
timeout 120 python3 $B $W1 --dtype float32
echo "== W2 (d=100, n=40, 1024 paths, 2000 steps)"
timeout 120 python3 $B $W2 --dtype float64 --ablate
timeout 120 python3 $B $W2 --dtype float32
echo "== sweep over eta, lam, c, delta, n_train (32 configurations): traces of the step kernel"
timeout 120 python3 benchmarks/bench_sweep_compile.py $SWEEP
echo "== streamed records: peak host and device memory against the number of records (1024 paths, D=2000)"
timeout 240 python3 benchmarks/bench_stream_memory.py $STREAM
echo "== default job: slowsde run (first result after install)"
tmp=$(mktemp -d)
t0=$SECONDS
if [ "$QUICK" = 1 ]; then DEFAULT="--set T=0.05 --set n_paths=2 --set n_record=2"; else DEFAULT=""; fi
timeout 120 python3 -m slowsde_jax run $DEFAULT --out "$tmp/default" --quiet; echo "-- rc $?, wall $((SECONDS - t0)) s"
cp "$tmp"/default/*/summary.json "$OUT/default_summary.json"
