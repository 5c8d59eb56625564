#!/usr/bin/env bash
# One GPU lease (session 6): the open GPU items of issue 6.
#   1. mri.sense forward + adjoint slices per second on CUDA (GPU otherwise idle).
#   2. DPS, chosen on the validation slices (66, 73, 86, 93): 1000 steps (the official count)
#      with zeta in {1, 3, 10, 30}, and 200 steps with zeta 10 (the session-3 pick), one draw,
#      4x and 8x; the runs go side by side as separate processes (DPS at a batch of 4 slices is
#      launch-bound on an H100: ~48 ms per step, the GPU mostly idle).
#   3. The best (steps, zeta) per acceleration on the evaluated slices (70, 76, 83, 89) with the
#      zero-filled / SENSE / SENSE + TV rows, as the mean of one antithetic pair of draws (two pairs
#      if the sweep was fast).
# Run through the device tool from the repo root, carrying .whl (monai wheel), .gpu/wheels
# (einops) and .gpu/mr (float16 stacks from `python -m medrecon.priors.prepare`):
#   bash benchmarks/gpu_session6.sh        # everything worth keeping goes under $OUT
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT/val" "$OUT/eval"
exec > >(tee "$OUT/gpu_session6.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }

GPU_PLUGINS="ct mri"; source benchmarks/gpu_env.sh

echo "== mri.sense 15 coils 320x320: CPU and CUDA rows, ratio to a bare fft2 round trip (GPU idle) $(el)"
timeout 75 python3 benchmarks/operators.py --modality mri --device cuda --threads 4 \
  --json "$OUT/operators_mri_cuda.json" || echo "mri operators exit $?"

echo "== DPS sweep on the validation slices, one draw each, side by side $(el)"
TS=$(date +%s)
PIDS=()
for a in 4 8; do
  for cfg in "1000 1" "1000 3" "1000 10" "1000 30" "200 10"; do
    set -- $cfg
    tag="dps_${a}x_${1}steps_zeta$2"
    timeout 230 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --validation --accels $a \
      --methods dps --dps-steps $1 --dps-zeta $2 --output "$OUT/val/$tag.json" > "$OUT/val/$tag.log" 2>&1 &
    PIDS+=($!)
  done
done
for p in "${PIDS[@]}"; do wait $p; done
SWEEP=$(( $(date +%s) - TS ))
echo "sweep took $SWEEP s $(el)"
grep -h "dps " "$OUT"/val/*.log | sed 's/^/  /'
python3 - "$OUT/val" > "$OUT/best.txt" <<'PY'
import json, sys
from pathlib import Path
best = {}
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    d = json.loads(f.read_text())
    for acc, row in d["results"].items():
        r = (row["dps"]["psnr"], int(d["command"].split("--dps-steps ")[1].split()[0]), row["dps"]["params"]["zeta"])
        print(f"# {acc} steps {r[1]} zeta {r[2]:g}: {r[0]:.2f} dB", file=sys.stderr)
        best[acc] = max(best.get(acc, r), r)
for acc, (p, steps, zeta) in best.items():
    print(acc.rstrip("x"), steps, zeta, p)
PY
cat "$OUT/best.txt"

N=2; [ "$SWEEP" -lt 80 ] && N=4
echo "== DPS on the evaluated slices: the validation pick per acceleration, mean of $N draws (antithetic) $(el)"
PIDS=()
while read -r a steps zeta vpsnr; do
  tag="quality_mr_dps_${a}x_${steps}steps_zeta${zeta}_samples$N"
  timeout 210 python3 benchmarks/quality_mr.py --stack .gpu/mr --device cuda --accels $a \
    --methods zf sense tv dps --dps-steps $steps --dps-zeta $zeta --samples $N --antithetic \
    --output "$OUT/eval/$tag.json" > "$OUT/eval/$tag.log" 2>&1 &
  PIDS+=($!)
done < "$OUT/best.txt"
for p in "${PIDS[@]}"; do wait $p || echo "eval exit $?"; done
cat "$OUT"/eval/*.log | grep -v Warning
echo "== done $(el)"; ls -la "$OUT" "$OUT"/*/
