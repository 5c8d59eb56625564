#!/usr/bin/env bash
# Build medrecon and each plugin as a wheel (and sdist), check them with twine, install the wheels
# (not editable) into a fresh venv, and smoke-test the installed package from outside the checkout:
# `medrecon plugins check --all`, the shipped priors and sample inside the wheel, and a small
# simulate + reconstruct of the shipped sample checked against the API's geometry.
#
#   .ci/wheels.sh              # needs .venv (make venv: the dev extra has build and twine)
#   KEEP=1 .ci/wheels.sh       # keep the work folder (wheels in WORK/dist) and print its path
#
# Environment: PY (python for the fresh venv, default python3.11), TORCH_PIN (default torch==2.13.0:
# pinned first, since a plain torch requirement can pull a multi-GB CUDA build), BUILD_PY (the python
# with build and twine, default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-python3.11}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
BUILD_PY=${BUILD_PY:-$ROOT/.venv/bin/python}
PACKAGES=(. plugins/ct plugins/mri plugins/ultrasound plugins/template)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/medrecon-wheels.XXXXXX")
if [[ -n "${KEEP:-}" ]]; then echo "wheels.sh: work folder $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
t0=$SECONDS

# 1. build from a copy of the checkout's files (tracked + new, not ignored): no stale build/ or
#    *.egg-info of the editable install reaches a wheel, and the checkout is not written to
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/run"
git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$WORK/src"
for p in "${PACKAGES[@]}"; do
    # sdist, then the wheel built from that sdist: what the sdist leaves out, the wheel misses too
    "$BUILD_PY" -m build --no-isolation --outdir "$WORK/dist" "$WORK/src/$p" >"$WORK/build.log" 2>&1 \
        || { tail -30 "$WORK/build.log"; echo "wheels.sh: building $p failed"; exit 1; }
done
"$BUILD_PY" -m twine check --strict "$WORK"/dist/*
n_wheels=$(ls "$WORK"/dist/*.whl | wc -l)
[[ $n_wheels -eq ${#PACKAGES[@]} ]] || { echo "wheels.sh: expected ${#PACKAGES[@]} wheels, got $n_wheels"; exit 1; }
echo "wheels.sh: built and checked $n_wheels wheels in $((SECONDS - t0)) s"

# 2. a fresh venv with the wheels, not editable
"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin"
# --no-compile: byte-compiling on install took about half the install time here; imports compile what they use
"$V/pip" install -q --no-compile --disable-pip-version-check "$TORCH_PIN"
"$V/pip" install -q --no-compile --disable-pip-version-check "$WORK"/dist/*.whl
echo "wheels.sh: installed in a fresh venv in $((SECONDS - t0)) s"

# 3. smoke test from a folder outside the checkout (nothing of the checkout on sys.path)
cd "$WORK/run"
unset PYTHONPATH
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$V/medrecon" --version
"$V/medrecon" plugins check --all
SAMPLE=$("$V/python" -c "import medrecon.data; print(medrecon.data.ct_sample_path())")
"$V/medrecon" simulate ct.parallel -i "$SAMPLE" -o m.h5 -p n_views=64 --slices 3:5 --noise 0.005
"$V/medrecon" reconstruct m.h5 --sampler classical -o rec.nii.gz --quiet
"$V/python" - "$ROOT" <<'EOF'
import sys
from pathlib import Path

import numpy as np

import medrecon
import medrecon_ct
import medrecon_us
from medrecon.engine.settings import prior_fingerprint

root = Path(sys.argv[1]).resolve()
for mod in (medrecon, medrecon_ct, medrecon_us):
    where = Path(mod.__file__).resolve()
    assert root not in where.parents and "site-packages" in where.parts, f"{mod.__name__} imported from {where}"
# the shipped priors and sample data are inside the wheels
for name in ("ct-default", "mr-default", "us-tissue", "us-haze"):
    assert prior_fingerprint(medrecon.load_prior(name)), name
sample = medrecon.data.load_ct_sample()
assert sample.shape == (8, 256, 256) and sample.units == "HU"
# the reconstruction written by the installed CLI: the slab's geometry, close to the truth
rec = medrecon.load_volume("rec.nii.gz")
truth = sample.slab(3, 5)
assert rec.shape == truth.shape, rec.shape
assert np.allclose(rec.affine, truth.affine, atol=1e-4), rec.affine
api = medrecon.reconstruct(medrecon.load_measurement("m.h5"), "classical", progress=False)
assert np.allclose(rec.data, api.data, rtol=0, atol=1e-3 * float(np.abs(api.data).max())), "CLI != API"
err = float(np.sqrt(np.mean((rec.data - truth.data) ** 2)))
rng = float(np.ptp(truth.data))
assert err < 0.1 * rng, (err, rng)
print(f"wheels.sh: installed medrecon {medrecon.__version__} from {Path(medrecon.__file__).parent}; "
      f"classical reconstruction of 2 slices, 64 views: RMSE {err:.1f} HU ({100 * err / rng:.1f} % of the range)")
EOF
echo "wheels.sh: passed in $((SECONDS - t0)) s"
