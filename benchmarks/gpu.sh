#!/usr/bin/env bash
# The one script for a GPU lease (device tool, 15 minutes per task in all): set up from carried
# wheels, check correctness on the GPU, then run the named tasks and print one table.
#
# Prepare the carry on the development machine (all under ignored paths, < 64 MiB per call):
#   .venv/bin/pip download --no-deps -d .whl monai==$(.venv/bin/python -c "import monai; print(monai.__version__)")
#   .venv/bin/python benchmarks/generalization.py --modality ct --write-stacks .gpu/gen-ct   # ~48 MiB
#   .venv/bin/python benchmarks/generalization.py --modality mr --write-stacks .gpu/gen-mr --stack-slices 48
# then run, e.g. (carry .whl and the stack folder the tasks read):
#   bash benchmarks/gpu.sh check train-ct eval-ct        TRAIN_MINUTES=6
#   bash benchmarks/gpu.sh train-mr eval-mr
#   bash benchmarks/gpu.sh loso-ct                       (leave-one-series-out: one prior per series)
#
# Tasks
#   check      CUDA conformance of the operators, prior eps and DDS CPU == GPU (gpu_correctness.py)
#   train-ct   ct-default v2: every CT series that may train a shipped prior (.gpu/gen-ct, role
#   train-mr   "train" in benchmarks/generalization.py), zoom augmentation, TRAIN_MINUTES cap;
#              the prior lands in $OUT/ct-v2 (or mr-v2) with its train_report.json
#   eval-ct    benchmarks/generalization.py on the stacks with the v2 prior if trained in this
#   eval-mr    call, else the shipped one; SLICES per series, on cuda
#   loso-ct    the leave-one-series-out protocol (trains one prior per left-out series,
#   loso-mr    LOSO_STEPS steps each)
# Environment: OUT (default out/gpu), TRAIN_MINUTES (5), BATCH (32), SLICES (4), LOSO_STEPS (3000).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }
TRAIN_MINUTES=${TRAIN_MINUTES:-5}
BATCH=${BATCH:-32}
SLICES=${SLICES:-4}
LOSO_STEPS=${LOSO_STEPS:-3000}
GPU_PLUGINS="ct mri"; source benchmarks/gpu_env.sh
TABLE=()

train() {  # $1 = ct | mr
  local mod=$1 data=() n
  for n in $(python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import generalization as G
print(' '.join(k for k, v in G.SERIES.items() if v[0] == '$mod' and v[2] == 'train'))"); do
    [ -f ".gpu/gen-$mod/$n.npy" ] && data+=(--data ".gpu/gen-$mod/$n.npy")
  done
  echo "== train $mod-v2 on ${#data[@]} stack args, ${TRAIN_MINUTES} min $(el)"
  python3 -m medrecon.priors.train "${data[@]}" --modality "$mod" --size 256 --channels small \
    --batch-size "$BATCH" --lr 3e-4 --ema-decay 0.999 --warmup 200 --zoom 0.3 --steps 200000 \
    --max-minutes "$TRAIN_MINUTES" --val-every 500 --ckpt-every 2000 --log-every 200 --seed 0 \
    --device cuda --output "$OUT/$mod-v2" 2>&1 | grep -v -i warn | tail -n 8
  TABLE+=("train-$mod: $(python3 -c "import json; c = json.load(open('$OUT/$mod-v2/config.json'))['training']
print(c['steps'], 'steps,', c['train_seconds'], 's, val loss', round(c['final_val_loss'], 5))" 2>&1)")
}

evaluate() {  # $1 = ct | mr
  local mod=$1 prior="$1-default"
  [ -f "$OUT/$1-v2/config.json" ] && prior="$OUT/$1-v2"
  echo "== generalization $mod with $prior $(el)"
  python3 benchmarks/generalization.py --modality "$mod" --stacks ".gpu/gen-$mod" --prior "$prior" \
    --device cuda --slices "$SLICES" --methods classical tv-train tv dds dds-tv dps \
    --output "$OUT/generalization_$mod.json" 2>&1 | grep -v -i warn
  TABLE+=("eval-$mod: $(python3 -c "import json; print(json.dumps(json.load(open('$OUT/generalization_$mod.json'))['summary']))")")
}

for task in "$@"; do
  case "$task" in
    check) echo "== correctness $(el)"; python3 benchmarks/gpu_correctness.py 2>&1 | tail -n 20
           TABLE+=("check: exit ${PIPESTATUS[0]}") ;;
    train-ct|train-mr) train "${task#train-}" ;;
    eval-ct|eval-mr) evaluate "${task#eval-}" ;;
    loso-ct|loso-mr)
      echo "== leave-one-series-out ${task#loso-} $(el)"
      python3 benchmarks/generalization.py --modality "${task#loso-}" --loso --stacks ".gpu/gen-${task#loso-}" \
        --device cuda --slices "$SLICES" --train-steps "$LOSO_STEPS" --work "$OUT/loso" \
        --output "$OUT/generalization_${task#loso-}_loso.json" 2>&1 | grep -v -i warn
      TABLE+=("$task: see $OUT/generalization_${task#loso-}_loso.json") ;;
    *) echo "unknown task $task"; exit 2 ;;
  esac
done
echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader)) $(el)"
printf '%s\n' "${TABLE[@]}"
