#!/usr/bin/env bash
# One prepared GPU session for the discrete engine (issue 10). Writes logs under $OUT (or ./gpu_out).
# Budget: about 8 minutes on one H200 (each step below prints its own wall time); the sections are ordered
# by importance, so a cut-off run still leaves the engine table.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
python3 -c "import jax, jaxlib, optax, diffrax; print('jax', jax.__version__, 'optax', optax.__version__, 'diffrax', diffrax.__version__, jax.devices())"
B=benchmarks/bench_discrete.py
echo "== W1 (d=1000, n=400, 1024 paths, 2000 steps): engine against the hand loop; f64 with the ablation"
timeout 240 python3 $B --d 1000 --n 400 --paths 1024 --steps 2000 --dtype float64 --repeats 3 --ablate
timeout 120 python3 $B --d 1000 --n 400 --paths 1024 --steps 2000 --dtype float32 --repeats 3
echo "== W2 (d=100, n=40, 1024 paths, 2000 steps)"
timeout 120 python3 $B --d 100 --n 40 --paths 1024 --steps 2000 --dtype float64 --repeats 3 --ablate
timeout 120 python3 $B --d 100 --n 40 --paths 1024 --steps 2000 --dtype float32 --repeats 3
echo "== sweep over eta, lam, c, delta, n_train (32 configurations): traces of the step kernel"
timeout 120 python3 benchmarks/bench_sweep_compile.py --paths 1024 --steps 2000
echo "== streamed records: peak host and device memory against the number of records (1024 paths, D=2000)"
timeout 240 python3 benchmarks/bench_stream_memory.py --paths 1024 --d 1000 --n 400 --records 10 100 --steps-per-record 100
echo "== default job: slowsde run (first result after install)"
tmp=$(mktemp -d)
/usr/bin/time -f "wall %e s" timeout 120 slowsde run --out "$tmp/default" --quiet
cp "$tmp"/default/*/summary.json "$OUT/default_summary.json"
