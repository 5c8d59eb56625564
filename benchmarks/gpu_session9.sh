#!/usr/bin/env bash
# Session 9's second lease call (what was left of the 15 minutes after gpu_session8.sh): the
# top of session 9's zeta grid.  gpu_session8.sh picked zeta 5 from {3, 5} at 1000 steps, the
# grid's edge; this runs zeta 7 on the same validation slices and draw (z 66 / 73, seed 0) at
# 4x and 8x, so the pick can be read against a larger value.
# Run through the device tool from the repo root, carrying .whl, .gpu/wheels and .gpu/mr:
#   bash benchmarks/gpu_session9.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_session9.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }
GPU_PLUGINS="mri"; source benchmarks/gpu_env.sh
for a in 4 8; do
  echo "== validation ${a}x, DPS 1000 steps, zeta 7, one draw, z 66 / 73 $(el)"
  timeout 100 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --validation --accels $a \
    --methods dps --dps-steps 1000 --dps-zeta 7 --dps-slices 2 --output "$OUT/val_dps1000_${a}x_zeta7.json" 2>&1 \
    | grep -v -i warn
done
echo "== done $(el)"
