set -u
export PYTHONUNBUFFERED=1
GPU_PLUGINS="ct"; source benchmarks/gpu_env.sh
echo '{"reddiff": {"8": {"lam": 0.25, "lr": 0.5}, "16": {"lam": 0.25, "lr": 0.1}}}' > /tmp/ct_params.json
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 benchmarks/quality.py --stack .gpu/ct --device cuda --views 8 16 --slices 8 --batch 8 \
  --methods fbp tv dds dps reddiff --params /tmp/ct_params.json --threads 4 \
  --json "$OUT/quality_ct_gpu.json" --png "$OUT/quality_ct_gpu.png" 2>&1 | grep -v Warning
