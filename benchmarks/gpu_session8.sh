#!/usr/bin/env bash
# The next GPU lease (prepared in session 8).  Session 8 ran, on the CPU, what gpu_session7.sh
# planned for DPS: the mean of two antithetic pairs at 200 steps, zeta 10.  The second pair added
# only a few hundredths of a dB at 4x (docs/mri.md, "Session 8"), so more draws of 200 steps will
# not close DPS's gaps.  This lease tries the other lever, DPS's official step count:
#   1. DPS at 1000 steps, zeta in {3, 5} (zeta shrinks as the steps grow: 20 at 50 steps and 10 at
#      200 in session 7; session 6, clamped, 8x: 1000 steps zeta 1 / 3 / 10 = 26.56 / 27.05 /
#      25.50 dB), one draw on the validation slices z 66 / 73 (--dps-slices 2, seed 0): the same
#      slices and draw as session 7's 200-step zeta 10 rows (4x 35.52, 8x 27.80 dB), so the gain
#      of 1000 steps over 200 is read directly.
#   2. The pick per acceleration on the evaluated slices, one antithetic pair side by side
#      (--draw-batch 2), against session 7/6's 200-step pairs (4x 37.85, 8x 29.66 dB).
#   3. If time is left: gpu_session7.sh's items 1-2 (mri.sense on CUDA, draws side by side).
# Run through the device tool from the repo root, carrying .whl (monai wheel), .gpu/wheels
# (einops) and .gpu/mr (float16 stacks from `python -m medrecon.priors.prepare`):
#   bash benchmarks/gpu_session8.sh 8      # one acceleration per call (~5 minutes each): 8, then 4
#   bash benchmarks/gpu_session8.sh 4 extra   # "extra": items 3 after the DPS runs
# Everything worth keeping goes under $OUT.
# One process at a time: side-by-side processes time-slice the card (~9x slower each, session 6).
# Session 6 measured 61 ms per 1000-schedule DPS step for 4 slices on an H100: about 1 minute per
# validation run and 2-3 minutes per evaluated pair: ~5 minutes per acceleration.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
ACCELS=${1:-8}
EXTRA=${2:-}
exec > >(tee "$OUT/gpu_session8_${ACCELS}x.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }
psnr_of() { python3 -c "import json;print(json.load(open('$1'))['results']['$2']['dps']['psnr'])" 2>/dev/null || echo 0; }

GPU_PLUGINS="ct mri"; source benchmarks/gpu_env.sh

for a in $ACCELS; do
  best=""; bp=0
  for z in 3 5; do
    echo "== validation ${a}x, DPS 1000 steps, zeta $z, one draw, z 66 / 73 $(el)"
    f="$OUT/val_dps1000_${a}x_zeta$z.json"
    timeout 100 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --validation --accels $a \
      --methods dps --dps-steps 1000 --dps-zeta $z --dps-slices 2 --output "$f" 2>&1 | grep -v -i warn
    p=$(psnr_of "$f" "${a}x")
    if python3 -c "import sys; sys.exit(0 if $p > $bp else 1)"; then best=$z; bp=$p; fi
  done
  echo "== ${a}x: zeta $best ($bp dB on validation); evaluated slices, one pair $(el)"
  timeout 170 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --accels $a \
    --methods zf sense tv dps --dps-steps 1000 --dps-zeta $best --samples 2 --antithetic --draw-batch 2 \
    --output "$OUT/quality_mr_dps1000_${a}x_zeta${best}_pair.json" 2>&1 | grep -v -i warn
done

if [ "$EXTRA" = extra ] && [ $(( $(date +%s) - T0 )) -lt 400 ]; then
  gpu_mri_extras
fi
echo "== done $(el)"; ls -la "$OUT"
