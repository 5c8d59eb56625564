#!/usr/bin/env bash
# The next GPU lease (prepared in session 6, whose lease ran gpu_session6.sh and gpu_session6b.sh).
#   1. mri.sense on the GPU host again: CUDA slices/s and the host CPU's ratio to a bare FFT round
#      trip after the in-place change (session 6, before it: 5.40x at batch 1, 4 threads).
#   2. Posterior draws side by side (reconstruct draw_batch) against one after another on CUDA:
#      benchmarks/draws.py, dds and dps, 4 slices of 256 x 256, 4 draws, 50 steps.
#   3. DPS with the session-6 default clip="auto" (no clamp for MR priors): zeta in {7, 10, 14} at
#      200 steps chosen per acceleration on the validation slices (one antithetic pair side by
#      side), the pick on the evaluated slices as the mean of two pairs (--draw-batch 4).
#      (Session 7 on the CPU, one draw, validation z 66 / 73: zeta 10 beat 7 and 20 at 4x, beat 7
#      and tied 14 at 8x, benchmarks/results/quality_mr_validation_session7.json; the grid brackets 10.)
# The binding check planned in session 6 (DDS bound to SENSE-CG or the truth) is dropped: session 4
# measured the truth binding for DDS (-0.04 dB) and session 7 SENSE-CG for DPS (4x -0.21, 8x -0.06 dB).
# Run through the device tool from the repo root, carrying .whl (monai wheel), .gpu/wheels
# (einops) and .gpu/mr (float16 stacks from `python -m medrecon.priors.prepare`):
#   bash benchmarks/gpu_session7.sh        # everything worth keeping goes under $OUT
# Whole run: about 6-7 minutes on an H100.  One process at a time: side-by-side processes
# time-slice the card (~9x slower each in session 6).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_session7.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }

GPU_PLUGINS="ct mri"; source benchmarks/gpu_env.sh

gpu_mri_extras

# DPS with clip="auto" (no clamp for the MR prior since session 6): zeta chosen again on the
# validation slices (one antithetic pair, the two draws side by side), then the pick per
# acceleration on the evaluated slices as the mean of two pairs (four draws side by side).
for a in 4 8; do
  best=""; bp=0
  for z in 7 10 14; do
    echo "== validation ${a}x, DPS 200 steps, zeta $z, one pair $(el)"
    f="$OUT/val_dps_${a}x_zeta$z.json"
    timeout 45 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --validation --accels $a \
      --methods dps --dps-steps 200 --dps-zeta $z --samples 2 --antithetic --draw-batch 2 --output "$f" 2>&1 \
      | grep -v -i warn
    p=$(python3 -c "import json;print(json.load(open('$f'))['results']['${a}x']['dps']['psnr'])" 2>/dev/null || echo 0)
    if python3 -c "import sys; sys.exit(0 if $p > $bp else 1)"; then best=$z; bp=$p; fi
  done
  echo "== ${a}x: zeta $best ($bp dB on validation); evaluated slices, two pairs $(el)"
  timeout 75 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --accels $a \
    --methods zf sense tv dps --dps-steps 200 --dps-zeta $best --samples 4 --antithetic --draw-batch 4 \
    --output "$OUT/quality_mr_dps_${a}x_zeta${best}_samples4.json" 2>&1 | grep -v -i warn
done
echo "== done $(el)"; ls -la "$OUT"
