#!/usr/bin/env bash
# The one script for a GPU lease (device tool, 15 minutes per task in all): set up from carried
# wheels, then run the named tasks and print one table.  Every results file a task writes under
# $OUT has the name of the file it replaces in benchmarks/results/ (docs/benchmarks.md).
#
# Prepare the carry on the development machine (all under ignored paths, < 64 MiB per call):
#   .venv/bin/pip download --no-deps -d .whl monai==$(.venv/bin/python -c "import monai; print(monai.__version__)")
#   .venv/bin/python -m medrecon.priors.prepare ...      # .gpu/ct, .gpu/mr: float16 train / holdout stacks
#   .venv/bin/python benchmarks/generalization.py --modality ct --write-stacks .gpu/gen-ct   # ~48 MiB
#   .venv/bin/medrecon prepare-slices DATA/ct-pancreas-tcia --size 256 --holdout 0:32 --output .gpu/train-ct/ct-pancreas
#   .venv/bin/medrecon prepare-slices DATA/S --size 256 --pixel-size 2.1484375 --output .gpu/train-ct/NAME  # each
#     further CT series of role "train" in benchmarks/generalization.py (~49 MiB in all: carry it in
#     its own call, train-ct; a warm machine keeps $OUT for eval-ct in the next call)
#   .venv/bin/python benchmarks/generalization.py --modality mr --write-stacks .gpu/gen-mr --stack-slices 48
# (.gpu/wheels: further wheels the image lacks, e.g. einops).  Then run, e.g. (carry .whl and
# the stack folders the tasks read):
#   bash benchmarks/gpu.sh check train-ct eval-ct        TRAIN_MINUTES=6
#   bash benchmarks/gpu.sh train-mr eval-mr
#   bash benchmarks/gpu.sh loso-ct                       (leave-one-series-out: one prior per series)
#   bash benchmarks/gpu.sh timings mri-extras quality-ct quality-mr
#   bash benchmarks/gpu.sh quality3d sampling3d cone3d   (or: 3d)
# CPU rehearsal of the 3D tasks at tiny size (no setup, nothing installed):
#   SETUP=0 DEVICE=cpu TINY=1 PY=.venv/bin/python OUT=/tmp/gpu3d bash benchmarks/gpu.sh 3d
#
# Tasks
#   check          CUDA conformance of the operators, prior eps and DDS CPU == GPU (gpu_correctness.py)
#   check-dehaze   only the dehaze GPU-vs-CPU checks of gpu_correctness.py (fp32 and bf16)
#   train-shipped  ct-default and mr-default as shipped (.gpu/ct, .gpu/mr stacks, trained side by
#                  side, TRAIN_MINUTES cap, correctness check meanwhile); priors in $OUT/{ct,mr}-default
#   train-ct       ct-default v2: the shipped prior fine-tuned (zoom augmentation, FT_LR, TRAIN_MINUTES
#   train-mr       cap) on every series that may train a shipped prior (.gpu/train-ct/SERIES/train.npy),
#                  then blended with it (BLEND, default 0.5: medrecon blend-priors); the fine-tune lands
#                  in $OUT/ct-ft, the blend in $OUT/ct-v2 (or mr-*)
#   eval-ct        benchmarks/generalization.py on the stacks with the v2 prior if trained in this
#   eval-mr        call, else the shipped one; SLICES per series, on cuda
#   loso-ct        the leave-one-series-out protocol (trains one prior per left-out series,
#   loso-mr        LOSO_STEPS steps each)
#   timings        priors.py, operators.py --modality ct and --modality us on cuda
#                  (priors_cuda.json, operators_ct_cuda.json, operators_us_cuda.json)
#   mri-extras     mri.sense on the host CPU and CUDA, posterior draws one after another vs side by
#                  side (operators_mri_cuda.json, draws_cuda.json)
#   quality-ct     CT quality, FBP / TV / DDS / DPS / RED-Diff on 8 held-out slices at 8 and 16 views
#                  (quality_ct.json / .png; .gpu/ct)
#   quality-mr     MR quality, DPS 1000 steps, zeta 5, one antithetic pair, 4x and 8x (.gpu/mr;
#                  quality_mr_dps_{4,8}x.json: the dps_*_cuda runs of results/quality_mr.json)
#   quality3d      3D quality on the 32 held-out slices, dds3d (rho, lam, lam_xy) picked on training
#                  slices 40..55 first (quality3d.json / .png; Q_TIMEOUT)
#   sampling3d     seconds per 256^3 volume, dds vs dds3d vs mbir3d (sampling_cuda.json; S_TIMEOUT)
#   cone3d         the same 32 slices measured by ct.cone, 16 views over 360 degrees (quality3d_cone.*;
#                  C_TIMEOUT)
#   3d             quality3d sampling3d cone3d
#   caching        feature caching (DeepCache) on CUDA: DDS-50 / DPS-200 on one held-out CT and MR slice,
#                  uncached vs cache_interval 2 / 3 / 5, wall-clock ratio and PSNR change (.gpu/ct,
#                  .gpu/mr; caching_cuda.json; K_TIMEOUT)
# Environment: OUT (default out/gpu), PY (python3), DEVICE (cuda; the 3D tasks), SETUP (1),
# GPU_PLUGINS ("ct mri ultrasound template"), TRAIN_MINUTES (5), BATCH (32), SLICES (4),
# LOSO_STEPS (3000), BLEND (0.5), FT_LR (5e-5), TINY (3D tasks at tiny size), MBIR_STEPS (250), C_MBIR_STEPS (100),
# Q_TIMEOUT (85), S_TIMEOUT (60), C_TIMEOUT (180), K_TIMEOUT (240).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }
TRAIN_MINUTES=${TRAIN_MINUTES:-5}
BATCH=${BATCH:-32}
SLICES=${SLICES:-4}
LOSO_STEPS=${LOSO_STEPS:-3000}
TABLE=()

setup() {  # print the card, install the carried wheels once per machine, medrecon + plugins editable
  echo "== machine"; date
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  [ -d /tmp/site/monai ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/*.whl $(ls .gpu/wheels/*.whl 2>/dev/null) || echo "WARNING: wheel install failed"
  export PYTHONPATH=/tmp/site:$PWD
  local editable="" p
  for p in ${GPU_PLUGINS:-ct mri ultrasound template}; do editable="$editable -e plugins/$p"; done
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . $editable \
    || echo "WARNING: editable install failed; plugin look-ups will fail"
  $PY -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name())"
  echo "setup done $(el)"
}
if [ "${SETUP:-1}" = 1 ]; then setup; else export PYTHONPATH=$PWD; fi

train() {  # $1 = ct | mr: v2 = the shipped prior fine-tuned on every shippable series, blended with it
  # .gpu/train-$mod/SERIES/train.npy: prepare-slices stacks of the series with role "train" in
  # benchmarks/generalization.py (the shipped prior's held-out block left out: --holdout 0:32 for
  # ct-pancreas, --holdout 64:96 for mr-t1-mprage), CT at the prior's pixel size
  local mod=$1 data=() f series=() w=${BLEND:-0.5}
  for f in .gpu/train-$mod/*/train.npy; do
    [ -f "$f" ] && data+=(--data "$f") && series+=("$(basename "$(dirname "$f")")")
  done
  if [ ${#data[@]} = 0 ]; then echo "no .gpu/train-$mod/*/train.npy"; TABLE+=("train-$mod: no stacks"); return; fi
  echo "== fine-tune $mod-default on ${series[*]}, ${TRAIN_MINUTES} min, then blend $w $(el)"
  $PY -m medrecon.cli.main train-prior "${data[@]}" --modality "$mod" --init-from "$mod-default" \
    --batch-size "$BATCH" --lr "${FT_LR:-5e-5}" --zoom 0.3 --steps 200000 --max-minutes "$TRAIN_MINUTES" \
    --val-every 500 --ckpt-every 2000 --log-every 200 --seed 0 --samples 0 \
    --device cuda --overwrite --output "$OUT/$mod-ft" 2>&1 | grep -v -i warn | tail -n 4
  # WiSE-FT (medrecon blend-priors): the fine-tune alone loses on the shipped prior's own patient
  # (CPU, ct: -0.7 dB at 8 views), the 50/50 blend keeps it within 0.3 dB (docs/priors.md)
  $PY -m medrecon.cli.main blend-priors "$mod-default" "$OUT/$mod-ft" -w "$($PY -c "print(1 - $w)")" -w "$w" \
    $(ls .gpu/$mod/holdout.npy 2>/dev/null | sed 's/^/--val-data /') --overwrite --output "$OUT/$mod-v2"
  # what benchmarks/generalization.py reads: the series it trained on and the shipped prior's held-out block
  $PY - "$OUT/$mod-v2/config.json" "$mod-default" "${series[@]}" <<'PYEOF'
import json, sys
from medrecon.priors.model import load_prior
path, shipped, series = sys.argv[1], sys.argv[2], sys.argv[3:]
cfg = json.load(open(path))
hold = (load_prior(shipped).config.get("provenance") or {}).get("holdout_slices_z")
first = {"ct-default": "ct-pancreas", "mr-default": "mr-t1-mprage"}.get(shipped)
cfg["provenance"].update(series=series, holdout_slices_z={first: hold} if first and isinstance(hold, list) else hold)
json.dump(cfg, open(path, "w"), indent=2)
PYEOF
  TABLE+=("train-$mod: $($PY -c "import json; c = json.load(open('$OUT/$mod-ft/config.json'))['training']
print(c['steps'], 'steps,', c['train_seconds'], 's, val loss', round(c['final_val_loss'], 5), '; blend $w')" 2>&1)")
}

train_shipped() {  # the recipe of the shipped ct-default / mr-default, both priors side by side
  local common="--size 256 --channels small --batch-size $BATCH --lr 3e-4 --ema-decay 0.995 --warmup 100 \
 --steps 100000 --max-minutes $TRAIN_MINUTES --val-every 250 --ckpt-every 1000 --log-every 100 --seed 0 --device cuda"
  local p1 p2 p
  mkdir -p .gpu/out
  echo "== training ct-default and mr-default concurrently (${TRAIN_MINUTES} min cap, batch ${BATCH}) $(el)"
  $PY -m medrecon.cli.main train-prior --data .gpu/ct/train.npy --val-data .gpu/ct/holdout.npy --modality ct \
    $common --overwrite --output .gpu/out/ct-default > .gpu/out/train-ct.log 2>&1 &
  p1=$!
  $PY -m medrecon.cli.main train-prior --data .gpu/mr/train.npy --val-data .gpu/mr/holdout.npy --modality mr \
    $common --overwrite --output .gpu/out/mr-default > .gpu/out/train-mr.log 2>&1 &
  p2=$!
  echo "== correctness on the GPU (while training runs; correctness only, no timings)"
  timeout 120 $PY benchmarks/gpu_correctness.py || echo "correctness script exit $?"
  wait $p1; echo "ct training exit $?"; wait $p2; echo "mr training exit $?"
  tail -n 4 .gpu/out/train-ct.log .gpu/out/train-mr.log
  for p in ct-default mr-default; do
    mkdir -p "$OUT/$p"
    cp .gpu/out/$p/config.json .gpu/out/$p/weights.safetensors "$OUT/$p/" 2>/dev/null || echo "no $p weights"
  done
  tar -cf "$OUT/evidence.tar" -C .gpu/out --exclude='checkpoint' --exclude='weights.safetensors' . 2>/dev/null
  TABLE+=("train-shipped: priors in $OUT/ct-default, $OUT/mr-default")
}

evaluate() {  # $1 = ct | mr
  local mod=$1 prior="$1-default"
  [ -f "$OUT/$1-v2/config.json" ] && prior="$OUT/$1-v2"
  echo "== generalization $mod with $prior $(el)"
  $PY benchmarks/generalization.py --modality "$mod" --stacks ".gpu/gen-$mod" --prior "$prior" \
    --device cuda --slices "$SLICES" --methods classical tv-train tv dds dds-tv dps \
    --output "$OUT/generalization_$mod.json" 2>&1 | grep -v -i warn
  TABLE+=("eval-$mod: $($PY -c "import json; print(json.dumps(json.load(open('$OUT/generalization_$mod.json'))['summary']))")")
}

# 3D tasks: full size, or the same code paths at tiny size with TINY=1 (4 slices of 64^2, 3 steps)
if [ -n "${TINY:-}" ]; then
  QARGS="--slices 4 --crop 64 --steps 3 --mbir-steps 3 --tv-iters 20 --tv-lams 5,20 --tune-slices 3 \
         --tune-grid 0.03:0.003:0,0.03:0.003:0.002"
  SARGS="--size 32 --slices 4 --steps 3 --mbir-steps 2 --mbir-full-steps 1000 --net-batch 2"
  CARGS="--slices 4 --crop 64 --steps 3 --mbir-steps 3 --tv-iters 20 --tv-lams 5,20"
else
  QARGS="--slices 32 --steps 50 --mbir-steps ${MBIR_STEPS:-250} --tv-iters 300 --tv-lams 2.5,5,10,20 \
         --tune-slices 16 --tune-start 40"
  SARGS="--size 256 --slices 256 --steps 50 --mbir-steps 10 --mbir-full-steps 1000 --net-batch 64"
  # cone: every method applies the 3D normal operator (a forward and a back projection of the
  # whole 32 x 256^2 volume onto 16 x 50 x 388 pixels) many times: dds3d 6 per step (300),
  # TV-3D 1 per iteration and lam (600), mbir3d 2 per step (200), plus the ||A|| power iterations
  CARGS="--slices 32 --steps 50 --mbir-steps ${C_MBIR_STEPS:-100} --tv-iters 200 --tv-lams 2.5,5,10"
fi

tasks=()
for task in "$@"; do
  if [ "$task" = 3d ]; then tasks+=(quality3d sampling3d cone3d); else tasks+=("$task"); fi
done
for task in "${tasks[@]}"; do
  case "$task" in
    check) echo "== correctness $(el)"; $PY benchmarks/gpu_correctness.py 2>&1 | tail -n 20
           TABLE+=("check: exit ${PIPESTATUS[0]}") ;;
    check-dehaze) echo "== dehaze GPU vs CPU $(el)"; timeout 100 $PY benchmarks/gpu_correctness.py --only-dehaze
           TABLE+=("check-dehaze: exit $?") ;;
    train-shipped) train_shipped ;;
    train-ct|train-mr) train "${task#train-}" ;;
    eval-ct|eval-mr) evaluate "${task#eval-}" ;;
    loso-ct|loso-mr)
      echo "== leave-one-series-out ${task#loso-} $(el)"
      $PY benchmarks/generalization.py --modality "${task#loso-}" --loso --stacks ".gpu/gen-${task#loso-}" \
        --device cuda --slices "$SLICES" --train-steps "$LOSO_STEPS" --work "$OUT/loso" \
        --output "$OUT/generalization_${task#loso-}_loso.json" 2>&1 | grep -v -i warn
      TABLE+=("$task: see $OUT/generalization_${task#loso-}_loso.json") ;;
    timings)
      echo "== timings (GPU otherwise idle) $(el)"
      timeout 100 $PY benchmarks/priors.py --device cuda --reps 10 --output "$OUT/priors_cuda.json" \
        || echo "priors bench exit $?"
      timeout 130 $PY benchmarks/operators.py --modality ct --device cuda --peers none \
        --json "$OUT/operators_ct_cuda.json" || echo "operators bench exit $?"
      timeout 120 $PY benchmarks/operators.py --modality us --device cuda --us-threads 4 \
        --json "$OUT/operators_us_cuda.json" || echo "us operators bench exit $?"
      TABLE+=("timings: $OUT/priors_cuda.json, operators_ct_cuda.json, operators_us_cuda.json") ;;
    mri-extras)
      echo "== mri.sense 15 coils 320x320, host CPU (4 threads) and CUDA $(el)"
      timeout 60 $PY benchmarks/operators.py --modality mri --device cuda --threads 4 \
        --json "$OUT/operators_mri_cuda.json" || echo "mri operators exit $?"
      echo "== draws one after another vs side by side on CUDA $(el)"
      timeout 90 $PY benchmarks/draws.py --device cuda --size 256 --slices 4 --samples 4 --steps 50 \
        --output "$OUT/draws_cuda.json" || echo "draws exit $?"
      TABLE+=("mri-extras: $OUT/operators_mri_cuda.json, draws_cuda.json") ;;
    quality-ct)
      echo "== CT quality, 8 held-out slices, 8 and 16 views $(el)"
      echo '{"reddiff": {"8": {"lam": 0.25, "lr": 0.5}, "16": {"lam": 0.25, "lr": 0.1}}}' > "$OUT/ct_params.json"
      timeout 150 $PY benchmarks/quality.py --stack .gpu/ct --device cuda --views 8 16 --slices 8 --batch 8 \
        --methods fbp tv dds dps reddiff --params "$OUT/ct_params.json" --threads 4 \
        --json "$OUT/quality_ct.json" --png "$OUT/quality_ct.png" 2>&1 | grep -v Warning
      TABLE+=("quality-ct: $OUT/quality_ct.json") ;;
    quality-mr)
      for a in 4 8; do
        echo "== MR quality ${a}x, DPS 1000 steps, zeta 5, one antithetic pair $(el)"
        timeout 200 $PY benchmarks/quality_mr.py --stack .gpu/mr --device cuda --accels "$a" \
          --methods zf sense tv dps --dps-steps 1000 --dps-zeta 5 --samples 2 --antithetic --draw-batch 2 \
          --output "$OUT/quality_mr_dps_${a}x.json" 2>&1 | grep -v -i warn
      done
      TABLE+=("quality-mr: $OUT/quality_mr_dps_4x.json, quality_mr_dps_8x.json") ;;
    quality3d)
      echo "== quality3d: 32 held-out slices, 8 views, 0.5% noise (dds3d rho/lam/lam_xy picked on train.npy slices 40..55 first) $(el)"
      timeout "${Q_TIMEOUT:-85}" $PY benchmarks/quality3d.py --data .gpu/ct/holdout.npy --tune-data .gpu/ct/train.npy \
        --device "$DEVICE" --net-batch 32 $QARGS --output "$OUT" || echo "quality3d exit $?"
      TABLE+=("quality3d: $OUT/quality3d.json") ;;
    sampling3d)
      echo "== sampling: seconds per volume, dds vs dds3d vs mbir3d (held-out stack tiled along z) $(el)"
      timeout "${S_TIMEOUT:-60}" $PY benchmarks/sampling.py --device "$DEVICE" --data .gpu/ct/holdout.npy $SARGS \
        --output "$OUT/sampling_$DEVICE.json" || echo "sampling exit $?"
      TABLE+=("sampling3d: $OUT/sampling_$DEVICE.json") ;;
    cone3d)
      echo "== quality3d, cone beam: the same held-out slices, ct.cone 16 views over 360 degrees, dz 3 mm, 0.5% noise $(el)"
      timeout "${C_TIMEOUT:-180}" $PY benchmarks/quality3d.py --geometry cone --data .gpu/ct/holdout.npy --views 16 \
        --device "$DEVICE" --net-batch 32 --methods fdk,dds3d,tv3d,mbir3d $CARGS --output "$OUT" \
        || echo "quality3d cone exit $?"
      TABLE+=("cone3d: $OUT/quality3d_cone.json") ;;
    caching)
      echo "== feature caching: DDS-50 / DPS-200, uncached vs cache_interval 2 3 5, one CT + one MR slice $(el)"
      timeout "${K_TIMEOUT:-240}" $PY benchmarks/caching.py --device cuda --threads 4 --stack-ct .gpu/ct \
        --stack-mr .gpu/mr --output "$OUT/caching_cuda.json" 2>&1 | grep -v -i warn
      TABLE+=("caching: $OUT/caching_cuda.json") ;;
    *) echo "unknown task $task"; exit 2 ;;
  esac
done
echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "$DEVICE")) $(el)"
printf '%s\n' "${TABLE[@]}"
