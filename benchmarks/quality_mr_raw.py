"""MR quality on realistic raw multi-coil k-space (issue 20): medrecon's classical chain against SigPy.

The synthetic MR protocol (``benchmarks/quality_mr.py``) gives the reconstruction the true
coil maps of a real magnitude image.  This one does what a user with raw data meets:

* **Data**: axial slices of real MR series (``../shared/data``; the series and slices are in
  :data:`SERIES`) resampled to a 256 x 256 whole-field-of-view grid and cropped to the head
  (even sizes), made into fully sampled raw 8-coil k-space by
  :func:`medrecon_mri.rawsim.realistic_raw_kspace` (loop-coil sensitivities from Biot-Savart,
  not normalised; smooth random image phase; noise correlated across coils, 1 % of the
  k-space RMS), written as fastMRI HDF5.  Plus the real two-coil GRE phantom (Siemens twix
  k-space, ``mri-kspace-gre-phantom``) at 2x.
* **Undersampling**: random 1D masks along phase encode (fastMRI RandomMaskFunc semantics,
  8 % centre, seed 0), applied by the importer (``--import-option undersample=...``); coil maps
  are estimated from the *undersampled* data (the importer's default ``coil_method=auto``).
* **Reference**: the root-sum-of-squares of the fully sampled noisy coil images.  PSNR after
  least-squares scaling of the magnitude onto the reference, peak = the reference's 99.5th
  percentile (what the issue measured).
* **medrecon rows**: ``medrecon.reconstruct`` on the imported measurement with default
  settings, as a user runs it: zero-filled RSS (``classical``), ``sense``, ``tv``,
  ``l1wavelet`` (their weights chosen per slice by cross-validation on held-out lines,
  :mod:`medrecon.samplers.autotune`), and ``dds`` (or ``dps``) with ``mr-default`` on the
  magnitude with the phase of a ``tv`` reconstruction (``phase=data``), the mean of an
  antithetic pair (``--samples 2``).
* **SigPy rows** (0.1.27): ESPIRiT maps from the same undersampled k-space
  (``EspiritCalib(calib_width=ACS lines)``), then ``SenseRecon``, ``TotalVariationRecon`` and
  ``L1WaveletRecon`` with their default iterations, each at the weight of a grid
  (:data:`SIGPY_GRID`) that scores best **against the reference**: an oracle choice no user
  has, so SigPy's rows are an upper bound of what it offers.

Usage::

    .venv/bin/python benchmarks/quality_mr_raw.py                       # every series, 4x and 8x, + GRE 2x
    .venv/bin/python benchmarks/quality_mr_raw.py --quick               # one slice, 4x (smoke)
    .venv/bin/python benchmarks/quality_mr_raw.py --methods zf sense tv l1wavelet dds --workers 2
                                                                        # the table in docs/mri.md

Writes ``benchmarks/results/quality_mr_raw.json``.  Skips (exit 0, a message) without the data.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.quality import git_commit  # noqa: E402

DATA_ROOT = Path(os.environ.get("MEDRECON_DATA", "/work/shared/data"))
RESULTS = ROOT / "benchmarks" / "results"
#: series -> (file or folder under DATA_ROOT, axial slice indices evaluated).  mr-t1-mprage is the
#: development series: the automatic weights' CV_SCALE was measured on its slices 40 and 80, and
#: mr-default trained on it (slice 80 lies in the block the prior never saw); the others are
#: evaluation series nothing here was tuned on (mr-brain-t2-niivue: local evaluation only)
SERIES = {
    "mr-t1-mprage-niivue": ("mr-t1-mprage-niivue", (80,)),
    "mr-brain-t2-niivue": ("mr-brain-t2-niivue/T2w.nii.gz", (30, 40)),
    "mr-brain-tumor-pyradiomics": ("mr-brain-tumor-pyradiomics/brain1_image.nii.gz", (10, 14)),
    "mr-head-volrenderdata-stroke-T2": ("mr-head-volrenderdata/stroke_T2.nii.gz", (60, 80)),
}
GRE = "mri-kspace-gre-phantom/gre_kspace_lin_cha_col.npy"
#: SigPy weights tried (oracle pick): SENSE's lamda is scale-free (both terms scale with the data
#: squared); TV's and L1's are multiplied by the reference's 99.5th percentile of the zero-filled image
SIGPY_GRID = {"sense": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0),
              "tv": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0),
              "l1wavelet": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)}
CLASSICAL = ("zf", "sense", "tv", "l1wavelet")


def psnr_ls(x, ref) -> float:
    """PSNR of ``|x|`` least-squares scaled onto ``ref``, peak = ``ref``'s 99.5th percentile (dB)."""
    import numpy as np

    x = np.abs(np.asarray(x)).astype(np.float64)
    r = np.asarray(ref, np.float64)
    a = float((x * r).sum() / max((x * x).sum(), 1e-300))
    mse = float(np.mean((a * x - r) ** 2))
    return 10 * float(np.log10(float(np.percentile(r, 99.5)) ** 2 / max(mse, 1e-300)))


def head_crop(img):
    """``img`` cropped to the bounding box of ``img > 5 %`` of its 99th percentile, 8 pixels of
    margin, even sizes (so the centred FFT is shift-free)."""
    import numpy as np

    on = img > 0.05 * np.percentile(img, 99)
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    r0, r1 = max(rows[0] - 8, 0), min(rows[-1] + 9, img.shape[0])
    c0, c1 = max(cols[0] - 8, 0), min(cols[-1] + 9, img.shape[1])
    r1 -= (r1 - r0) % 2
    c1 -= (c1 - c0) % 2
    return img[r0:r1, c0:c1]


def slice_kspace(series: str, z: int, seed: int):
    """Fully sampled realistic raw k-space ``(8, ny, nx)`` of slice ``z`` of ``series``."""
    from medrecon_mri.rawsim import realistic_raw_kspace

    from medrecon.priors.data import stack_from_volume

    path, _ = SERIES[series]
    st = stack_from_volume(DATA_ROOT / path, 256, "mr", z=slice(z, z + 1))
    k, _ = realistic_raw_kspace(head_crop(st.data[0].astype("float64")), 8, seed=seed, noise=0.01)
    return k


def sigpy_rows(ku, mask_cols, ref, methods) -> dict:
    """SigPy's rows (module docstring) for undersampled k-space ``ku`` ``(C, ny, nx)``."""
    import numpy as np
    import sigpy.mri as mr
    from medrecon_mri.masks import calibration_region

    _, cs = calibration_region(np.broadcast_to(mask_cols[None, :], ku.shape[-2:]))
    calib = int(cs.stop - cs.start)
    mps = mr.app.EspiritCalib(ku, calib_width=calib, show_pbar=False).run()
    scale = float(np.percentile(np.sqrt((np.abs(np.fft.ifft2(ku)) ** 2).sum(0)), 99.5)) * np.sqrt(ku[0].size)
    rows = {}
    for meth in methods:
        if meth not in SIGPY_GRID:
            continue
        best = None
        t0 = time.perf_counter()
        for r in SIGPY_GRID[meth]:
            if meth == "sense":
                x = mr.app.SenseRecon(ku, mps, lamda=r, show_pbar=False).run()
            elif meth == "tv":
                x = mr.app.TotalVariationRecon(ku, mps, r * scale, show_pbar=False).run()
            else:
                x = mr.app.L1WaveletRecon(ku, mps, r * scale, show_pbar=False).run()
            p = psnr_ls(x, ref)
            if best is None or p > best[1]:
                best = (r, p)
        rows[meth] = {"psnr": round(best[1], 2), "weight": best[0],
                      "seconds_grid": round(time.perf_counter() - t0, 2),
                      "edge_of_grid": best[0] in (SIGPY_GRID[meth][0], SIGPY_GRID[meth][-1])}
    return rows


def evaluate_case(case: dict, methods, prior: str, device: str, samples: int = 1) -> dict:
    """One (series, slice, acceleration) case: medrecon and SigPy rows."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from medrecon_mri.importer import KSpaceImporter
    from medrecon_mri.rawsim import reference_rss, write_fastmri

    import medrecon

    with tempfile.TemporaryDirectory() as tmp:
        if case["series"] == "gre-phantom":
            raw = DATA_ROOT / GRE
            full = KSpaceImporter().read(raw)
            ref = full.operator().classical(torch.as_tensor(full.y))[0].numpy()
        else:
            k = slice_kspace(case["series"], case["z"], seed=case["z"])
            raw = Path(tmp) / "raw.h5"
            write_fastmri(raw, k)
            ref = reference_rss(k)
        m = KSpaceImporter().read(raw, undersample={"kind": "random", "acceleration": case["accel"],
                                                     "center_fraction": 0.08, "seed": 0})
    A = m.operator()
    y = np.asarray(m.y)
    out = {**case, "shape": list(ref.shape), "acceleration_achieved": round(A.acceleration, 3),
           "coil_method": m.provenance.get("coil_method"), "medrecon": {}, "sigpy": {}}
    for meth in methods:
        t0 = time.perf_counter()
        if meth == "zf":
            x = A.classical(torch.as_tensor(y))[0].numpy()
            info = {}
        else:
            needs = meth in ("dds", "dps", "reddiff")
            draws = {"samples": samples, "antithetic": samples % 2 == 0} if needs and samples > 1 else {}
            vol = medrecon.reconstruct(m, meth, prior if needs else None, progress=False, device=device, seed=0,
                                       **draws)
            x = vol.data[0]
            info = {"auto_tuned": vol.meta["reconstruction"].get("auto_tuned")}
        out["medrecon"][meth] = {"psnr": round(psnr_ls(x, ref), 2), "seconds": round(time.perf_counter() - t0, 2),
                                 **info}
    ku = y[0] if y.ndim == 4 else y
    out["sigpy"] = sigpy_rows(ku, np.asarray(A.mask.numpy()[0] > 0), ref, methods)
    return out


def merge_cases(old: list, new: list) -> list:
    """``old`` cases with the rows of the ``new`` cases (same series, slice and acceleration) put in:
    a row measured again replaces the old one, the rest stay; cases only in ``new`` are appended."""
    import copy

    key = lambda c: (c["series"], c["z"], c["accel"])  # noqa: E731
    out = [copy.deepcopy(c) for c in old]
    at = {key(c): c for c in out}
    for c in new:
        if key(c) not in at:
            out.append(c)
            continue
        for tool in ("medrecon", "sigpy"):
            at[key(c)][tool].update(c[tool])
    return out


def summarise(cases) -> dict:
    """Mean PSNR per (acceleration group, tool, method) over the cases, and the gaps the issue asks for."""
    import numpy as np

    groups: dict = {}
    for c in cases:
        g = "gre-phantom 2x" if c["series"] == "gre-phantom" else f"{c['accel']}x"
        for tool in ("medrecon", "sigpy"):
            for meth, r in c[tool].items():
                groups.setdefault(g, {}).setdefault(f"{tool} {meth}", []).append(r["psnr"])
    return {g: {k: round(float(np.mean(v)), 2) for k, v in sorted(rows.items())} for g, rows in groups.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accels", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--methods", nargs="+", default=list(CLASSICAL))
    ap.add_argument("--series", nargs="+", default=list(SERIES), choices=list(SERIES))
    ap.add_argument("--no-gre", action="store_true", help="leave the two-coil GRE phantom out")
    ap.add_argument("--quick", action="store_true", help="one slice of one series at 4x")
    ap.add_argument("--prior", default="mr-default")
    ap.add_argument("--samples", type=int, default=2, help="diffusion rows: mean of this many draws "
                    "(antithetic pairs when even)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1, help="cases run side by side (1 thread each)")
    ap.add_argument("--output", default=str(RESULTS / "quality_mr_raw.json"))
    ap.add_argument("--merge", action="store_true", help="keep the rows of --output that this run does not "
                    "re-measure (e.g. --methods dds after mr-default's recommended settings changed)")
    args = ap.parse_args(argv)
    if not DATA_ROOT.is_dir():
        print(f"no data at {DATA_ROOT}: skipping (set MEDRECON_DATA)")
        return 0
    cases = [{"series": s, "z": z, "accel": a} for a in args.accels for s in args.series for z in SERIES[s][1]]
    if not args.no_gre:
        cases.append({"series": "gre-phantom", "z": 0, "accel": 2})
    if args.quick:
        cases = [{"series": args.series[0], "z": SERIES[args.series[0]][1][0], "accel": args.accels[0]}]
    t0 = time.perf_counter()
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        job = partial(evaluate_case, methods=args.methods, prior=args.prior, device=args.device,
                      samples=args.samples)
        with ProcessPoolExecutor(args.workers) as ex:
            results = list(ex.map(job, cases))
    else:
        results = [evaluate_case(c, args.methods, args.prior, args.device, args.samples) for c in cases]
    for r in results:
        mine = " ".join(f"{k} {v['psnr']:.2f}" for k, v in r["medrecon"].items())
        theirs = " ".join(f"{k} {v['psnr']:.2f}" for k, v in r["sigpy"].items())
        print(f"{r['series']} z{r['z']} {r['accel']}x: medrecon {mine} | sigpy {theirs}", flush=True)
    command = "python benchmarks/quality_mr_raw.py " + " ".join(argv if argv is not None else sys.argv[1:])
    seconds = round(time.perf_counter() - t0, 1)
    if args.merge and Path(args.output).is_file():
        old = json.loads(Path(args.output).read_text())
        results = merge_cases(old["cases"], results)
        command, seconds = f"{old['command']} && {command}", round(old.get("seconds", 0) + seconds, 1)
    out = {"command": command, "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "git": git_commit(),
           "seconds": seconds, "summary": summarise(results), "cases": results}
    print(json.dumps(out["summary"], indent=1))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
