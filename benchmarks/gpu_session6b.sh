#!/usr/bin/env bash
# Second call of the session-6 lease (after gpu_session6.sh, whose side-by-side processes
# slowed each other ~9x, so its 1000-step runs did not finish): DPS at 8x with 1000 steps,
# one process at a time. zeta in {1, 3, 10} on the validation slices (one draw), the best on
# the evaluated slices as the mean of one antithetic pair.  Same carry as gpu_session6.sh.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT/val" "$OUT/eval"
exec > >(tee "$OUT/gpu_session6b.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }
GPU_PLUGINS="ct mri"; source benchmarks/gpu_env.sh
Q="python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --accels 8"
best=""; bp=0
for z in 3 10 1; do
  echo "== validation 8x, 1000 steps, zeta $z $(el)"
  timeout 100 $Q --validation --methods dps --dps-steps 1000 --dps-zeta $z \
    --output "$OUT/val/dps_8x_1000steps_zeta$z.json" 2>&1 | grep -v -i warn
  p=$(python3 -c "import json;print(json.load(open('$OUT/val/dps_8x_1000steps_zeta$z.json'))['results']['8x']['dps']['psnr'])" 2>/dev/null || echo 0)
  echo "zeta $z: $p dB"
  if python3 -c "import sys; sys.exit(0 if $p > $bp else 1)"; then best=$z; bp=$p; fi
done
echo "== pick zeta $best ($bp dB on validation; 200 steps zeta 10 gave 26.63 there) $(el)"
timeout 130 $Q --methods zf tv dps --dps-steps 1000 --dps-zeta $best --samples 2 --antithetic \
  --output "$OUT/eval/quality_mr_dps_8x_1000steps_zeta${best}_samples2.json" 2>&1 | grep -v -i warn
echo "== done $(el)"
