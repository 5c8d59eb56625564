#!/usr/bin/env bash
# One short GPU lease for the volume samplers (issue 5): 3D quality on the 32 held-out
# pancreas slices and the 256^3 dds3d timing (about 150 s of script time), then the same 32
# slices measured by ct.cone (16 views, full turn; at most C_TIMEOUT = 180 s).
#
# Run through the device tool from the repo root, carrying .whl (monai wheel) and .gpu
# (.gpu/ct/holdout.npy = z 0..31, .gpu/ct/train.npy = the other slices):
#   bash benchmarks/gpu_3d.sh                         # writes at most 6 files under $OUT
# CPU rehearsal of every code path at tiny size (nothing is installed into the venv):
#   DEVICE=cpu TINY=1 PY=.venv/bin/python OUT=/tmp/gpu3d bash benchmarks/gpu_3d.sh
# Environment: MBIR_STEPS (default 250), Q_TIMEOUT (85), S_TIMEOUT (60), C_TIMEOUT (180),
# C_MBIR_STEPS (100: mbir3d steps of the cone run).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu3d}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_3d.log") 2>&1
T0=$(date +%s)
echo "== machine"; date
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
if [ -z "${TINY:-}" ]; then
  # carried wheels into a private target (like gpu_timings.sh), then medrecon + the CT plugin
  # as editable installs without dependencies, so that entry points resolve
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    $(ls .gpu/wheels/*.whl 2>/dev/null) || echo "WARNING: wheel install failed"
  export PYTHONPATH=/tmp/site:$PWD
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . -e plugins/ct \
    || echo "WARNING: editable install failed; plugin look-ups will fail"
else
  export PYTHONPATH=$PWD
fi
echo "setup done after $(( $(date +%s) - T0 )) s"

if [ -n "${TINY:-}" ]; then
  # the same commands at tiny size: 4 slices of 64^2, 3 steps
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

echo "== quality3d: 32 held-out slices, 8 views, 0.5% noise (dds3d rho/lam/lam_xy picked on train.npy slices 40..55 first)"
timeout "${Q_TIMEOUT:-85}" $PY benchmarks/quality3d.py --data .gpu/ct/holdout.npy --tune-data .gpu/ct/train.npy \
  --device "$DEVICE" --net-batch 32 $QARGS --output "$OUT" || echo "quality3d exit $?"
echo "quality3d done after $(( $(date +%s) - T0 )) s"

echo "== sampling: seconds per volume, dds vs dds3d vs mbir3d (held-out stack tiled along z)"
timeout "${S_TIMEOUT:-60}" $PY benchmarks/sampling.py --device "$DEVICE" --data .gpu/ct/holdout.npy $SARGS \
  --output "$OUT/sampling.json" || echo "sampling exit $?"
echo "sampling done after $(( $(date +%s) - T0 )) s"

echo "== quality3d, cone beam: the same held-out slices, ct.cone 16 views over 360 degrees, dz 3 mm, 0.5% noise"
timeout "${C_TIMEOUT:-180}" $PY benchmarks/quality3d.py --geometry cone --data .gpu/ct/holdout.npy --views 16 \
  --device "$DEVICE" --net-batch 32 --methods fdk,dds3d,tv3d,mbir3d $CARGS --output "$OUT" || echo "quality3d cone exit $?"

echo "== done after $(( $(date +%s) - T0 )) s"; ls -la "$OUT"
