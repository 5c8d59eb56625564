#!/usr/bin/env bash
# The timing half of gpu_check.sh alone (for a second lease, when the priors are trained).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
GPU_PLUGINS="ct template mri ultrasound"; source benchmarks/gpu_env.sh
timeout 100 python3 benchmarks/priors.py --device cuda --reps 10 --output "$OUT/bench_priors.json" || echo "priors bench exit $?"
timeout 130 python3 benchmarks/operators.py --device cuda --peers none --json "$OUT/bench_operators.json" \
  || echo "operators bench exit $?"
