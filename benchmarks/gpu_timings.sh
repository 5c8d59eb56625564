#!/usr/bin/env bash
# The timing half of gpu_check.sh alone (for a second lease, when the priors are trained).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . -e plugins/ct -e plugins/template -e plugins/mri -e plugins/ultrasound
timeout 100 python3 benchmarks/priors.py --device cuda --reps 10 --output "$OUT/bench_priors.json" || echo "priors bench exit $?"
timeout 130 python3 benchmarks/operators.py --device cuda --peers none --json "$OUT/bench_operators.json" \
  || echo "operators bench exit $?"
