#!/usr/bin/env bash
# One GPU lease (prepared in session 4, which had none): the open items of issue 6 that need a
# GPU.  1. mri.sense slices per second on CUDA (GPU otherwise idle); 2. a new MR prior trained
# from scratch with rotation/zoom augmentation (`train-prior --rotate 10 --zoom 0.1`, the
# 88-slice MR set overfits: fine-tuning mr-default longer made held-out slices worse) in the
# background; 3. MR quality with DDS (200 steps, 10 CG iterations) and DPS (200 steps, zeta 10)
# as the mean of 4 posterior draws in antithetic pairs (`--samples 4 --antithetic`) for
# mr-default, then for the new prior.
#
# Run through the device tool from the repo root, carrying .whl (monai wheel), .gpu/wheels
# (einops) and .gpu/mr (float16 stacks from `python -m medrecon.priors.prepare`):
#   bash benchmarks/gpu_session4.sh        # everything worth keeping goes under $OUT
# Environment: TRAIN_MINUTES (default 5.0).  The cone-beam run is benchmarks/gpu_3d.sh.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT" .gpu/out
exec > >(tee "$OUT/gpu_session4.log") 2>&1
T0=$(date +%s)
TRAIN_MINUTES=${TRAIN_MINUTES:-5.0}

GPU_PLUGINS="ct mri"; source benchmarks/gpu_env.sh

echo "== mri.sense 15 coils 320x320: CPU and CUDA rows, ratio to a bare fft2 round trip (GPU idle)"
timeout 90 python3 benchmarks/operators.py --modality mri --device cuda --threads 4 \
  --json "$OUT/operators_mri_cuda.json" || echo "mri operators exit $?"

echo "== MR prior from scratch with augmentation (${TRAIN_MINUTES} min cap, background)"
python3 -m medrecon.priors.train --data .gpu/mr/train.npy --val-data .gpu/mr/holdout.npy --modality mr \
  --size 256 --channels small --batch-size 32 --lr 3e-4 --ema-decay 0.995 --warmup 100 --steps 100000 \
  --max-minutes "$TRAIN_MINUTES" --val-every 500 --ckpt-every 100000 --log-every 100 --seed 0 --device cuda \
  --rotate 10 --zoom 0.1 --samples 8 --output .gpu/out/mr-aug > "$OUT/train-mr-aug.log" 2>&1 &
P=$!

# (session 5) draws in antithetic pairs: on the CPU validation slices one pair beat 8 independent draws
MRQ="--stack .gpu/mr --device cuda --methods zf sense tv dds dps --dds-steps 200 --dps-steps 200 --dps-zeta 10 --samples 4 --antithetic --dds-params {\"cg_iters\":10}"
echo "== MR quality, mr-default (GPU shared with the training: seconds per slice are not clean)"
timeout 200 python3 benchmarks/quality_mr.py $MRQ --prior mr-default --output "$OUT/quality_mr_samples4_mr-default.json" \
  || echo "MR quality mr-default exit $?"
echo "after $(( $(date +%s) - T0 )) s"

wait $P; echo "MR training exit $?"; tail -n 5 "$OUT/train-mr-aug.log"
mkdir -p "$OUT/mr-aug"
cp .gpu/out/mr-aug/config.json .gpu/out/mr-aug/weights.safetensors .gpu/out/mr-aug/train_report.json \
   .gpu/out/mr-aug/*.png "$OUT/mr-aug/" 2>/dev/null || echo "no new MR prior"

echo "== MR quality, the augmented prior"
timeout 200 python3 benchmarks/quality_mr.py $MRQ --prior .gpu/out/mr-aug --output "$OUT/quality_mr_samples4_mr-aug.json" \
  || echo "MR quality mr-aug exit $?"
echo "== done after $(( $(date +%s) - T0 )) s"; ls -la "$OUT" "$OUT"/*/
