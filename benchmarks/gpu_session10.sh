#!/usr/bin/env bash
# Prepared in session 9 for the next GPU lease.  Session 9 evaluated DPS at 1000 steps with
# zeta 5 (the pick of {3, 5}); zeta 7, tried afterwards on the same validation draw, scored
# +0.14 dB (4x) / +0.11 dB (8x) more, and mr-default now recommends 7 at 1000 steps
# (docs/samplers.md).  This evaluates that recommendation on the evaluated slices, one antithetic
# pair as in session 9, against session 9's zeta-5 rows (4x 39.98, 8x 30.63 dB;
# benchmarks/results/quality_mr_h100_s9_*_dps1000_pair.json).  About 100 s per acceleration
# on an H100, so both fit one call:
#   bash benchmarks/gpu_session10.sh          (carry .whl, .gpu/wheels, .gpu/mr)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_session10.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }
GPU_PLUGINS="mri"; source benchmarks/gpu_env.sh
for a in 8 4; do
  echo "== ${a}x, DPS 1000 steps, zeta 7, one antithetic pair, evaluated slices $(el)"
  timeout 170 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --accels $a \
    --methods zf tv dps --dps-steps 1000 --dps-zeta 7 --samples 2 --antithetic --draw-batch 2 \
    --output "$OUT/quality_mr_dps1000_${a}x_zeta7_pair.json" 2>&1 | grep -v -i warn
done
echo "== done $(el)"
