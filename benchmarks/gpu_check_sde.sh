#!/usr/bin/env bash
# Second prepared GPU session: geometry costs (D = 1e2, 1e3, 1e4), the slow-SDE engine against the discrete
# one, and `slowsde compare` on math §7. Writes logs and results under $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log_sde.txt") 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
echo "== geometry"
timeout 200 python3 benchmarks/bench_geometry.py --sizes 100 1000 10000
echo "== slow SDE vs discrete"
timeout 150 python3 benchmarks/bench_sde.py --paths 1024 --d 8 --d-ode 1000
echo "== slowsde compare configs/hyperbola_compare.yaml"
tmp=$(mktemp -d)
/usr/bin/time -f "wall %e s" timeout 200 slowsde compare configs/hyperbola_compare.yaml --out "$tmp"
cp "$tmp"/*/comparison.json "$OUT/hyperbola_comparison.json"
