#!/usr/bin/env bash
# Short GPU call: the dehaze GPU-vs-CPU checks of gpu_correctness.py only (fp32 and bf16).
set -u
export PYTHONUNBUFFERED=1
GPU_PLUGINS="ct ultrasound"; source benchmarks/gpu_env.sh
timeout 100 python3 benchmarks/gpu_correctness.py --only-dehaze
