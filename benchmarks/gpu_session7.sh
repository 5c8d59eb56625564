#!/usr/bin/env bash
# The next GPU lease (prepared in session 6, whose lease ran gpu_session6.sh and gpu_session6b.sh).
#   1. mri.sense on the GPU host again: CUDA slices/s and the host CPU's ratio to a bare FFT round
#      trip after the in-place change (session 6, before it: 5.40x at batch 1, 4 threads).
#   2. Posterior draws side by side (reconstruct draw_batch) against one after another on CUDA:
#      benchmarks/draws.py, dds and dps, 4 slices of 256 x 256, 4 draws, 50 steps.
#   3. DPS 8x on the evaluated slices with the validation pick of session 6 (1000 steps, zeta 3;
#      27.05 dB on the validation slices against 26.63 for 200 steps): one antithetic pair, the
#      two draws side by side (--draw-batch 2).  Session 6's run of it hit its time limit.
# Run through the device tool from the repo root, carrying .whl (monai wheel), .gpu/wheels
# (einops) and .gpu/mr (float16 stacks from `python -m medrecon.priors.prepare`):
#   bash benchmarks/gpu_session7.sh        # everything worth keeping goes under $OUT
# Whole run: about 5-7 minutes on an H100 (one process at a time: side-by-side processes
# time-slice the card and slowed each other ~9x in session 6).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_session7.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }

GPU_PLUGINS="ct mri"; source benchmarks/gpu_env.sh

echo "== mri.sense 15 coils 320x320, host CPU (4 threads) and CUDA $(el)"
timeout 75 python3 benchmarks/operators.py --modality mri --device cuda --threads 4 \
  --json "$OUT/operators_mri_cuda.json" || echo "mri operators exit $?"

echo "== draws one after another vs side by side on CUDA $(el)"
timeout 120 python3 benchmarks/draws.py --device cuda --size 256 --slices 4 --samples 4 --steps 50 \
  --output "$OUT/draws_cuda.json" || echo "draws exit $?"

echo "== DPS 8x, 1000 steps, zeta 3, one antithetic pair side by side, evaluated slices $(el)"
timeout 240 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --accels 8 \
  --methods zf sense tv dps --dps-steps 1000 --dps-zeta 3 --samples 2 --antithetic --draw-batch 2 \
  --output "$OUT/quality_mr_dps_8x_1000steps_zeta3_samples2.json" 2>&1 | grep -v -i warn \
  || echo "DPS 8x exit $?"
echo "== done $(el)"; ls -la "$OUT"
