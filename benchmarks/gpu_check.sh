#!/usr/bin/env bash
# One prepared GPU session: the default CLI job, a 1024-path float64 diagonal-net run at the paper's size,
# and the engine benchmark in float64 and float32. Writes logs and summaries under $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
python3 -c "import jax, jaxlib, optax, diffrax; print('jax', jax.__version__, 'optax', optax.__version__, 'diffrax', diffrax.__version__, jax.devices())"
tmp=$(mktemp -d)
echo "== default job: slowsde run"
/usr/bin/time -f "wall %e s" slowsde run --out "$tmp/default" --quiet
cp "$tmp"/default/*/summary.json "$OUT/default_summary.json"; cp "$tmp"/default/*/observables.png "$OUT/default_observables.png"
echo "== 1024-path diagonal net, d=1000, n=400, k=3, float64, 100000 steps per method"
/usr/bin/time -f "wall %e s" slowsde run --out "$tmp/big" --quiet --set n_paths=1024 --set problem.d=1000 \
  --set problem.n=400 --set problem.k=3 --set steps=100000 --set record_state=false --set n_record=20
cp "$tmp"/big/*/summary.json "$OUT/big_summary.json"; cp "$tmp"/big/*/observables.png "$OUT/big_observables.png"
echo "== engine benchmark"
python3 benchmarks/bench_discrete.py --d 1000 --n 400 --paths 1024 --steps 2000 --dtype float64
python3 benchmarks/bench_discrete.py --d 1000 --n 400 --paths 1024 --steps 2000 --dtype float32
python3 benchmarks/bench_discrete.py --d 100 --n 40 --paths 1024 --steps 2000 --dtype float64
