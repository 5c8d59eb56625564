#!/usr/bin/env bash
# One GPU lease, one script: set up from carried wheels, train the shipped priors,
# check correctness on the GPU, then time the operators and the prior network.
#
# Run through the device tool from the repo root, carrying .whl (monai wheel) and .gpu
# (float16 slice stacks made by `python -m medrecon.priors.prepare`, see docs/priors.md):
#   bash benchmarks/gpu_check.sh            # writes everything worth keeping under $OUT
# Environment: TRAIN_MINUTES (default 5.0), BATCH (default 32).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT" .gpu/out
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1
TRAIN_MINUTES=${TRAIN_MINUTES:-4.8}
BATCH=${BATCH:-32}

# medrecon and its plugins installed editable (metadata only, no dependencies) so entry points resolve
GPU_PLUGINS="ct template mri ultrasound"; source benchmarks/gpu_env.sh

echo "== training ct-default and mr-default concurrently (${TRAIN_MINUTES} min cap, batch ${BATCH})"
COMMON="--size 256 --channels small --batch-size $BATCH --lr 3e-4 --ema-decay 0.995 --warmup 100 \
 --steps 100000 --max-minutes $TRAIN_MINUTES --val-every 250 --ckpt-every 1000 --log-every 100 --seed 0 --device cuda"
python3 -m medrecon.priors.train --data .gpu/ct/train.npy --val-data .gpu/ct/holdout.npy --modality ct \
  $COMMON --output .gpu/out/ct-default > .gpu/out/train-ct.log 2>&1 &
P1=$!
python3 -m medrecon.priors.train --data .gpu/mr/train.npy --val-data .gpu/mr/holdout.npy --modality mr \
  $COMMON --output .gpu/out/mr-default > .gpu/out/train-mr.log 2>&1 &
P2=$!

echo "== correctness on the GPU (while training runs; correctness only, no timings)"
timeout 120 python3 benchmarks/gpu_correctness.py || echo "correctness script exit $?"

wait $P1; echo "ct training exit $?"; wait $P2; echo "mr training exit $?"
tail -n 4 .gpu/out/train-ct.log .gpu/out/train-mr.log

echo "== collect the priors first (so a timeout in the benchmarks loses nothing)"
for p in ct-default mr-default; do
  mkdir -p "$OUT/$p"
  cp .gpu/out/$p/config.json .gpu/out/$p/weights.safetensors "$OUT/$p/" 2>/dev/null || echo "no $p weights"
done
tar -cf "$OUT/evidence.tar" -C .gpu/out --exclude='checkpoint' --exclude='weights.safetensors' . 2>/dev/null

echo "== timings (GPU otherwise idle)"
timeout 100 python3 benchmarks/priors.py --device cuda --reps 10 --output "$OUT/bench_priors.json" || echo "priors bench exit $?"
timeout 130 python3 benchmarks/operators.py --device cuda --peers none --json "$OUT/bench_operators.json" \
  || echo "operators bench exit $?"

ls -la "$OUT" "$OUT"/*/
date
