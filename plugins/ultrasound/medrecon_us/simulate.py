"""Training data for the ultrasound priors: simulated speckle (tissue) and haze, as slice stacks.

Real beamformed RF with a known tissue / haze split does not exist, so both priors of the
``dehaze`` sampler (``us-tissue``, ``us-haze``) are trained on simulations.  Everything lives on
the *beamformed RF image grid* (depth x lateral, ``(nz, nx)``) of a linear array like the one
of the real data (ATL L7-4 on a Verasonics: 128 elements, pitch 0.298 mm, f0 = 5 MHz, fs =
20 MHz, c = 1540 m/s).

Grid.  Axial pixel ``dz = c / (2 fs) = 0.0385 mm`` (lambda / 8): an RF image oscillates
along depth with period lambda / 2, so lambda / 4 pixels would sample it at the Nyquist
rate of the centre frequency and alias the upper half of the band (its envelope would be
wrong).  Lateral pixel ``dx = pitch / 2 = 0.149 mm``.  An S = 128 image covers 4.9 mm x 19 mm.

Tissue (:func:`simulate_tissue`).  A reflectivity map on the grid: every pixel holds a
scatterer with probability ``density`` (0.5: about 12 scatterers per resolution cell, fully
developed speckle) with a standard normal amplitude, times an echogenicity map of 0 .. 3
random elliptical inclusions (factor log-uniform in [0.05, 4]: anechoic, hypo- and
hyperechoic) and 0 .. 3 bright point targets (amplitude 8 .. 30 times the speckle's, the
wires of a phantom).  It is pushed through ``us.planewave`` (3 plane waves at -1.5, 0, 1.5
degrees, Gaussian pulse with 60 % bandwidth, receive f-number 1.5) plus white channel noise
at -40 dB, and beamformed with its delay-and-sum ``classical()``.  Each image sits at a
random depth (5 .. 35 mm) and lateral offset under the array.

Haze (:func:`haze_image`).  Reverberation clutter as the paper describes it: spatially
correlated, diffuse, strongest near the probe.  White noise is smoothed laterally by a
Gaussian of standard deviation 1 .. 4 mm (broad), filtered axially by the two-way pulse
(so it lives in the same RF band as tissue echoes: the two cannot be told apart by their
axial spectrum alone), and weighted by ``exp(-(z - z_top) / L)``, L 2 .. 10 mm.

Scale.  Each tissue image is paired with one haze image; the haze level (ratio of RMS
values) is log-uniform in [0.2, 2].  Both images of a pair are stored in the pair's
physical units with the scale s of their *sum*, ``s = p99.9(|x + h|)``, as the intensity
bounds ``lo = -s, hi = s`` (the ``mulaw`` intensity kind, :mod:`medrecon_us.intensity`):
at reconstruction the scale comes from the hazy measurement ``y = x + h``, so the priors see
tissue and haze at the amplitudes they will meet.

Stacks (:func:`write_training_stacks`) are ``medrecon-slices`` .npy + .json files that
``medrecon train-prior`` reads unchanged::

    python -m medrecon_us.simulate --output .us_train/data --n 1200 --n-val 48 --size 128 --seed 0
    medrecon train-prior --data .us_train/data/tissue.npy --val-data .us_train/data/tissue_val.npy \\
        --channels xs --patch 64 --batch-size 16 --max-minutes 30 --output .us_train/us-tissue

To retrain on your own scanner: write your beamformed RF images (without haze, or haze
estimates) as a stack with :func:`rf_stack` and train on it the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError

__all__ = ["PROBE", "haze_image", "image_grid", "planewave_params", "rf_stack", "simulate_pairs",
           "simulate_tissue", "tissue_reflectivity", "write_training_stacks"]

#: The linear array and sequence of the real data (Verasonics, ATL L7-4).
PROBE: dict[str, Any] = {"n_elements": 128, "pitch_mm": 0.298, "c": 1540.0, "fs_hz": 20e6, "f0_hz": 5e6,
                         "bandwidth": 0.6, "f_number": 1.5, "angles_deg": [-1.5, 0.0, 1.5]}


def image_grid(probe: dict[str, Any] | None = None) -> tuple[float, float]:
    """Pixel sizes ``(dz, dx)`` in mm: ``dz = c / (2 fs)`` (lambda / 8 at fs = 4 f0), ``dx = pitch / 2``."""
    p = dict(PROBE, **(probe or {}))
    return 1e3 * p["c"] / (2 * p["fs_hz"]), p["pitch_mm"] / 2


def planewave_params(shape, z_mm, x_mm, probe: dict[str, Any] | None = None) -> dict[str, Any]:
    """``us.planewave`` parameters for an image grid: sample window ``t0_s``/``n_samples`` cut to
    the round-trip times that pixels inside the receive aperture produce (plus 2 pulse lengths)."""
    p = dict(PROBE, **(probe or {}))
    c, fs = p["c"], p["fs_hz"]
    z0, z1 = z_mm[0] * 1e-3, z_mm[1] * 1e-3
    xa = max(abs(x_mm[0]), abs(x_mm[1])) * 1e-3
    smax = math.sin(math.radians(max(abs(a) for a in p["angles_deg"])))
    margin = 2 * 4 * math.sqrt(2 * math.log(2)) / (math.pi * p["f0_hz"] * p["bandwidth"])
    t_min = (z0 * math.cos(math.asin(smax)) - xa * smax + z0) / c - margin
    t_max = (z1 + xa * smax + z1 * math.sqrt(1 + 1 / (4 * p["f_number"] ** 2))) / c + margin
    t0 = max(0.0, t_min)
    return {"shape": [int(shape[0]), int(shape[1])], "z_mm": [float(z_mm[0]), float(z_mm[1])],
            "x_mm": [float(x_mm[0]), float(x_mm[1])], "n_elements": p["n_elements"], "pitch_mm": p["pitch_mm"],
            "angles_deg": list(p["angles_deg"]), "fs_hz": fs, "n_samples": int(math.ceil((t_max - t0) * fs)) + 1,
            "c": c, "t0_s": t0, "f0_hz": p["f0_hz"], "bandwidth": p["bandwidth"], "f_number": p["f_number"]}


def _ellipse(shape, dz, dx, rng) -> np.ndarray:
    nz, nx = shape
    cz, cx = rng.uniform(0, nz * dz), rng.uniform(0, nx * dx)
    a, b = rng.uniform(0.3, 2.5), rng.uniform(0.5, 4.0)  # mm semi-axes (depth, lateral)
    zz = (np.arange(nz)[:, None] * dz - cz) / a
    xx = (np.arange(nx)[None, :] * dx - cx) / b
    return zz**2 + xx**2 <= 1


def tissue_reflectivity(shape, rng: np.random.Generator, *, density: float = 0.5, dz_mm: float | None = None,
                        dx_mm: float | None = None, max_inclusions: int = 3, max_points: int = 3) -> np.ndarray:
    """Random reflectivity ``(nz, nx)`` float64: speckle scatterers, inclusions, point targets.

    Scatterer amplitude N(0, 1) with probability ``density`` per pixel; inclusions multiply
    it by a factor log-uniform in [0.05, 4]; point targets are single pixels of amplitude
    +-(8 .. 30) (module docstring).
    """
    if not 0 < density <= 1:
        raise InputError(f"scatterer density must be in (0, 1], got {density}")
    dz0, dx0 = image_grid()
    dz, dx = dz_mm or dz0, dx_mm or dx0
    nz, nx = shape
    r = rng.standard_normal((nz, nx)) * (rng.random((nz, nx)) < density)
    echo = np.ones((nz, nx))
    for _ in range(rng.integers(0, max_inclusions + 1)):
        echo[_ellipse(shape, dz, dx, rng)] = math.exp(rng.uniform(math.log(0.05), math.log(4.0)))
    r *= echo
    for _ in range(rng.integers(0, max_points + 1)):
        r[rng.integers(0, nz), rng.integers(0, nx)] = rng.choice([-1, 1]) * rng.uniform(8, 30)
    return r


def _axial_pulse(dz_mm: float, probe: dict[str, Any]) -> np.ndarray:
    """The two-way pulse sampled along depth: time step ``2 dz / c`` (:func:`medrecon_us.pulse.gaussian_pulse`)."""
    from medrecon_us.pulse import gaussian_pulse

    fs_depth = probe["c"] / (2 * dz_mm * 1e-3)
    return gaussian_pulse(probe["f0_hz"], probe["bandwidth"], fs_depth)


def haze_image(shape, rng: np.random.Generator, *, z_top_mm: float = 0.0, dz_mm: float | None = None,
               dx_mm: float | None = None, lateral_mm: float | None = None, decay_mm: float | None = None,
               probe: dict[str, Any] | None = None) -> np.ndarray:
    """One haze image ``(nz, nx)`` float64 with unit RMS (module docstring).

    ``z_top_mm`` is the depth of row 0 (the haze decays as ``exp(-(z - z_top) / decay)``
    from the top of the image, so a deeper image is not dimmer: the level is set per image
    by the caller); ``lateral_mm`` (smoothing s.d., default random 1 .. 4 mm) and
    ``decay_mm`` (default random 2 .. 10 mm) fix the shape.
    """
    from scipy.ndimage import convolve1d, gaussian_filter1d

    p = dict(PROBE, **(probe or {}))
    dz0, dx0 = image_grid(p)
    dz, dx = dz_mm or dz0, dx_mm or dx0
    nz, nx = shape
    lat = lateral_mm if lateral_mm is not None else rng.uniform(1.0, 4.0)
    dec = decay_mm if decay_mm is not None else rng.uniform(2.0, 10.0)
    n = rng.standard_normal((nz, nx))
    n = gaussian_filter1d(n, lat / dx, axis=1, mode="wrap")
    n = convolve1d(n, _axial_pulse(dz, p), axis=0, mode="reflect")
    z = np.arange(nz) * dz
    n *= np.exp(-z / dec)[:, None]
    return n / max(float(np.sqrt(np.mean(n**2))), 1e-30)


def simulate_tissue(n: int, size: int, rng: np.random.Generator, *, probe: dict[str, Any] | None = None,
                    depth_mm=(5.0, 35.0), noise_db: float = -40.0, margin: int = 8,
                    progress=None) -> tuple[np.ndarray, list]:
    """``n`` delay-and-sum RF images ``(n, size, size)`` of random tissue through ``us.planewave``.

    The tissue extends ``margin`` pixels beyond the image on every side (the image is the
    centre crop), so speckle does not fade at its borders.

    Returns the images (float32) and, per image, its grid ``{"z_mm", "x_mm"}``.
    """
    import torch

    from medrecon_us.planewave import PlaneWaveRF

    p = dict(PROBE, **(probe or {}))
    dz, dx = image_grid(p)
    half_ap = (p["n_elements"] - 1) * p["pitch_mm"] / 2
    m = margin
    big = size + 2 * m
    out = np.empty((n, size, size), np.float32)
    grids = []
    for k in range(n):
        z0 = rng.uniform(*depth_mm)
        x0 = rng.uniform(-half_ap + 2, half_ap - 2 - (big - 1) * dx)
        zg, xg = [z0, z0 + (big - 1) * dz], [x0, x0 + (big - 1) * dx]
        op = PlaneWaveRF(**planewave_params((big, big), zg, xg, p))
        r = torch.from_numpy(tissue_reflectivity((big, big), rng, dz_mm=dz, dx_mm=dx))[None]
        with torch.no_grad():
            ch = op(r.float())
            rms = float(ch.pow(2).mean().sqrt())
            ch = ch + 10 ** (noise_db / 20) * rms * torch.from_numpy(rng.standard_normal(ch.shape).astype(np.float32))
            out[k] = op.classical(ch)[0, m:m + size, m:m + size].numpy()
        grids.append({"z_mm": [zg[0] + m * dz, zg[0] + (m + size - 1) * dz],
                      "x_mm": [xg[0] + m * dx, xg[0] + (m + size - 1) * dx]})
        if progress is not None:
            progress(k + 1, n)
    return out, grids


def robust_scale(x: np.ndarray, percentile: float | None = None) -> float:
    """``s = p(|x|)`` with p the US intensity percentile (99.9, :data:`medrecon_us.intensity.SCALE_PERCENTILE`)."""
    from medrecon_us.intensity import SCALE_PERCENTILE

    s = float(np.percentile(np.abs(x), SCALE_PERCENTILE if percentile is None else percentile))
    if not s > 0:
        raise InputError("the RF image is all zero; there is no scale to normalise by")
    return s


def simulate_pairs(n: int, size: int, seed: int = 0, *, level=(0.2, 2.0), progress=None) -> dict[str, Any]:
    """``n`` (tissue, haze) pairs with the scale of their sum (module docstring).

    Returns ``{"tissue", "haze"}`` float32 ``(n, size, size)``, ``"scale"`` (n,), ``"level"``
    (n,) haze / tissue RMS ratios and ``"grids"``.
    """
    rng = np.random.default_rng(seed)
    tissue, grids = simulate_tissue(n, size, rng, progress=progress)
    haze = np.empty_like(tissue)
    lev = np.exp(rng.uniform(math.log(level[0]), math.log(level[1]), n))
    scale = np.empty(n)
    for k in range(n):
        h = haze_image((size, size), rng, z_top_mm=grids[k]["z_mm"][0])
        haze[k] = lev[k] * float(np.sqrt(np.mean(tissue[k].astype(np.float64) ** 2))) * h
        scale[k] = robust_scale(tissue[k] + haze[k])
    return {"tissue": tissue, "haze": haze, "scale": scale, "level": lev, "grids": grids}


def rf_stack(images: np.ndarray, scale, pixel_size_mm: float, meta: dict[str, Any] | None = None):
    """A ``us`` :class:`~medrecon.priors.data.SliceStack` of RF images ``(N, S, S)`` with per-image
    scales ``s`` (intensity ``mulaw``, lo = -s, hi = s); ``scale=None`` uses each image's own
    :func:`robust_scale`.  Write it with :func:`medrecon.priors.data.write_stack`."""
    from medrecon.priors.data import SliceStack
    from medrecon_us.intensity import MU, SCALE_PERCENTILE

    images = np.asarray(images, np.float32)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"RF images must be shaped (N, S, S), got {images.shape}")
    s = np.array([robust_scale(im) for im in images]) if scale is None else np.asarray(scale, np.float64)
    m = dict(meta or {})
    m["intensity"] = {"kind": "mulaw", "mu": MU, "p_scale": SCALE_PERCENTILE}
    return SliceStack(images, "us", float(pixel_size_mm), -s, s, m)


def write_training_stacks(output, n: int, size: int = 128, seed: int = 0, n_val: int = 0,
                          progress=None) -> dict[str, Any]:
    """Simulate ``n`` (+ ``n_val`` held-out) pairs and write ``tissue``/``haze`` (and ``*_val``) stacks."""
    from medrecon.priors.data import write_stack

    out = Path(output)
    t0 = time.time()
    summary: dict[str, Any] = {"n": n, "n_val": n_val, "size": size, "seed": seed, "probe": PROBE, "files": {}}
    dz, dx = image_grid()
    for part, count, sd in (("", n, seed), ("_val", n_val, seed + 1_000_003)):
        if count <= 0:
            continue
        pairs = simulate_pairs(count, size, sd, progress=progress)
        for kind in ("tissue", "haze"):
            meta = {"source": "medrecon_us.simulate", "simulation": kind, "seed": sd, "pixel_mm": [dz, dx],
                    "probe": PROBE, "haze_level": [float(v) for v in pairs["level"]],
                    "scale": "p99.9 of |tissue + haze| of each pair"}
            st = rf_stack(pairs[kind], pairs["scale"], math.sqrt(dz * dx), meta)
            path = write_stack(st, out / f"{kind}{part}.npy")
            summary["files"][f"{kind}{part}"] = str(path)
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medrecon_us.simulate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", "-o", required=True, help="folder for tissue/haze .npy + .json stacks")
    ap.add_argument("--n", type=int, default=1200, help="training pairs")
    ap.add_argument("--n-val", type=int, default=48, help="held-out pairs (tissue_val, haze_val)")
    ap.add_argument("--size", type=int, default=128, help="image size S (S x S)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)

    def prog(k, total):
        if k % 50 == 0 or k == total:
            print(f"[simulate] {k}/{total}", file=sys.stderr, flush=True)

    print(json.dumps(write_training_stacks(args.output, args.n, args.size, args.seed, args.n_val, prog), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
