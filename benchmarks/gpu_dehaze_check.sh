#!/usr/bin/env bash
# Short GPU call: the dehaze GPU-vs-CPU checks of gpu_correctness.py only (fp32 and bf16).
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .gpu/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . -e plugins/ct -e plugins/ultrasound
timeout 100 python3 benchmarks/gpu_correctness.py --only-dehaze
