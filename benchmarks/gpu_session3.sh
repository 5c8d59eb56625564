#!/usr/bin/env bash
# One GPU lease (session 3): CUDA checks of the plugins (issue 8), the ultrasound operator's GPU
# frame rate, CT quality at protocol scale on the GPU (DPS with the validated zeta), and a
# fine-tuning of the MR prior from mr-default with MR quality for the new and the old prior.
#
# Run through the device tool from the repo root, carrying .whl (monai wheel), .gpu/wheels
# (einops) and .gpu/ct, .gpu/mr (float16 stacks from `python -m medrecon.priors.prepare`):
#   bash benchmarks/gpu_session3.sh        # everything worth keeping goes under $OUT
# Environment: FT_MINUTES (MR fine-tuning cap, default 4.0).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT" .gpu/out
exec > >(tee "$OUT/gpu_session3.log") 2>&1
FT_MINUTES=${FT_MINUTES:-4.0}

GPU_PLUGINS="ct template mri ultrasound"; source benchmarks/gpu_env.sh

echo "== MR prior: fine-tuning from mr-default (${FT_MINUTES} min cap, background)"
python3 -m medrecon.priors.train --data .gpu/mr/train.npy --val-data .gpu/mr/holdout.npy --modality mr \
  --size 256 --channels small --batch-size 32 --lr 1e-4 --ema-decay 0.995 --warmup 50 --steps 100000 \
  --max-minutes "$FT_MINUTES" --val-every 500 --ckpt-every 100000 --log-every 100 --seed 1 --device cuda \
  --samples 8 --init-from mr-default --output .gpu/out/mr-ft > "$OUT/train-mr-ft.log" 2>&1 &
P=$!

echo "== correctness on the GPU (conformance incl. ct.cone, mri.sense, us.planewave, us.haze; dehaze GPU vs CPU)"
timeout 150 python3 benchmarks/gpu_correctness.py || echo "correctness exit $?"

echo "== us.planewave frames per second on the GPU (128 el x 75 plane waves x 1536 samples -> 256 x 128)"
timeout 120 python3 benchmarks/operators.py --modality us --device cuda --us-threads 4 \
  --json "$OUT/operators_us_cuda.json" || echo "us operators exit $?"

echo "== CT quality on the GPU: 8 held-out slices, FBP / TV / DDS / DPS (zeta 5) / RED-Diff"
echo '{"reddiff": {"8": {"lam": 0.25, "lr": 0.5}, "16": {"lam": 0.25, "lr": 0.1}}}' > .gpu/out/ct_params.json
timeout 200 python3 benchmarks/quality.py --stack .gpu/ct --device cuda --views 8 16 --slices 8 --batch 8 \
  --methods fbp tv dds dps reddiff --params .gpu/out/ct_params.json --threads 4 \
  --json "$OUT/quality_ct_gpu.json" --png "$OUT/quality_ct_gpu.png" || echo "CT quality exit $?"

wait $P; echo "MR fine-tuning exit $?"; tail -n 5 "$OUT/train-mr-ft.log"
mkdir -p "$OUT/mr-ft"
cp .gpu/out/mr-ft/config.json .gpu/out/mr-ft/weights.safetensors .gpu/out/mr-ft/train_report.json \
   .gpu/out/mr-ft/*.png "$OUT/mr-ft/" 2>/dev/null || echo "no fine-tuned MR prior"

echo "== MR quality (4 held-out slices, 8 coils, 4x and 8x): fine-tuned prior, then mr-default"
for P in .gpu/out/mr-ft mr-default; do
  tag=$(basename "$P")
  timeout 160 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --prior "$P" \
    --methods zf sense tv dds dps --tune-dds --tune-dps --dps-grid 3 10 30 --output "$OUT/quality_mr_$tag.json" || echo "MR quality $tag exit $?"
done
ls -la "$OUT" "$OUT"/*/
date
