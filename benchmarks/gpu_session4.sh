#!/usr/bin/env bash
# One GPU lease (prepared in session 4, which had none): the open items of issue 6 that need a
# GPU -- mri.sense slices per second on CUDA, and MR quality with DDS *and* DPS as the mean of
# 4 posterior draws (reconstruct samples=4) at 100 DDS / 200 DPS steps -- then the cone-beam
# quality3d run that no GPU session has done yet.
#
# Run through the device tool from the repo root, carrying .whl (monai wheel), .gpu/wheels
# (einops) and .gpu/ct, .gpu/mr (float16 stacks from `python -m medrecon.priors.prepare`):
#   bash benchmarks/gpu_session4.sh        # everything worth keeping goes under $OUT
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_session4.log") 2>&1
T0=$(date +%s)

echo "== machine"; date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .gpu/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . -e plugins/ct -e plugins/mri \
  || echo "WARNING: editable install failed; plugin look-ups will fail"
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name())"

echo "== mri.sense 15 coils 320x320: CPU and CUDA rows, ratio to a bare fft2 round trip"
timeout 90 python3 benchmarks/operators.py --modality mri --device cuda --threads 4 \
  --json "$OUT/operators_mri_cuda.json" || echo "mri operators exit $?"

echo "== MR quality, 4 held-out slices, 8 coils, 4x and 8x: DDS 100 steps and DPS 200 steps (zeta 10), mean of 4 draws"
timeout 240 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --methods zf sense tv dds dps \
  --dds-steps 100 --dps-steps 200 --dps-zeta 10 --samples 4 --output "$OUT/quality_mr_samples4.json" \
  || echo "MR quality exit $?"
echo "after $(( $(date +%s) - T0 )) s"

echo "== cone beam quality3d (benchmarks/gpu_3d.sh's last step)"
timeout 180 python3 benchmarks/quality3d.py --geometry cone --data .gpu/ct/holdout.npy --views 16 --device cuda \
  --net-batch 32 --methods fdk,dds3d,tv3d,mbir3d --slices 32 --steps 50 --mbir-steps 100 --tv-iters 200 \
  --tv-lams 2.5,5,10 --output "$OUT" || echo "quality3d cone exit $?"
echo "== done after $(( $(date +%s) - T0 )) s"; ls -la "$OUT"
