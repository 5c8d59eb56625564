# Sourced (from the repo root) by the benchmarks/gpu_*.sh scripts on the device machine: prints
# the card, installs the carried wheels (.whl: monai; .gpu/wheels: einops) into /tmp/site once
# per machine (a warm machine keeps them), puts them on PYTHONPATH, installs medrecon and the
# plugins named in GPU_PLUGINS (default "ct mri") editable, and prints the torch / monai versions.
# Defines gpu_mri_extras (below).
echo "== machine"; date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ -d /tmp/site/monai ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --target /tmp/site .whl/*.whl $(ls .gpu/wheels/*.whl 2>/dev/null) || echo "WARNING: wheel install failed"
export PYTHONPATH=/tmp/site:$PWD
_gpu_editable=""
for _p in ${GPU_PLUGINS:-ct mri}; do _gpu_editable="$_gpu_editable -e plugins/$_p"; done
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . $_gpu_editable \
  || echo "WARNING: editable install failed; plugin look-ups will fail"
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name())"

# mri.sense on the host CPU and CUDA, then posterior draws one after another vs side by side on
# CUDA (benchmarks/operators.py, benchmarks/draws.py); needs $OUT and the caller's el().
gpu_mri_extras() {
  echo "== mri.sense 15 coils 320x320, host CPU (4 threads) and CUDA $(el)"
  timeout 60 python3 benchmarks/operators.py --modality mri --device cuda --threads 4 \
    --json "$OUT/operators_mri_cuda.json" || echo "mri operators exit $?"
  echo "== draws one after another vs side by side on CUDA $(el)"
  timeout 90 python3 benchmarks/draws.py --device cuda --size 256 --slices 4 --samples 4 --steps 50 \
    --output "$OUT/draws_cuda.json" || echo "draws exit $?"
}
