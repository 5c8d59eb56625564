"""MR reconstruction quality on held-out slices (issue 6, item 6): zero-filled vs SENSE vs SENSE+TV vs DDS.

Protocol
--------
* Data: the T1 MPRAGE head (``/work/shared/data/mr-t1-mprage-niivue``) resampled exactly as
  for prior training (:func:`medrecon.priors.data.stack_from_volume`, 256 x 256, whole field
  of view, 0.82 mm pixels, scanner units).  ``mr-default`` never saw z-order slices 64..95;
  the evaluation slices are spread through that block.  The TV weight is picked on one
  TRAINING slice (z = 40) from a small grid, never on held-out ones.
* Measurement (simulation from magnitude images, ``real_image=True``, docs/mri.md):
  ``mri.sense`` with 8 synthetic birdcage coils (``sum_c |S_c|^2 = 1``), random 1D masks
  (fastMRI RandomMaskFunc semantics, centre fraction 8 %, seed 0) at 4x and 8x, complex
  Gaussian noise of 0.5 % of the RMS of the noiseless k-space samples (``--noise``).
* Methods: zero-filled RSS (``classical``), SENSE-CG (``sense``, 10 iterations), SENSE+TV
  (``tv`` on the SENSE operator), DDS with ``mr-default`` (50 steps; gamma 100, eta 0.85
  unless ``--tune-dds`` picks (gamma, eta) from :data:`DDS_GRID` per acceleration on the
  validation slice z = 66 (held out from training, not evaluated); intensity percentiles
  bound by the engine from the zero-filled reconstruction), DPS (``--methods ... dps``).
  ``--samples N``: DDS and DPS rows (and their tuning) are the mean of N posterior draws
  per slice (``reconstruct(..., samples=N)``, docs/samplers.md).
* Metrics: PSNR and SSIM (:mod:`medrecon.metrics`) on the reference's [min, max] window;
  seconds per slice.

Usage::

    .venv/bin/python benchmarks/quality_mr.py                  # 4 held-out slices, 4x and 8x
    .venv/bin/python benchmarks/quality_mr.py --quick          # smoke run: 1 slice, 5 DDS steps
    .venv/bin/python benchmarks/quality_mr.py --validation --accels 8 --methods dds --samples 2 --antithetic
                                                               # choosing settings on the validation slices
    .venv/bin/python benchmarks/quality_mr.py --slices 8 --methods zf sense tv dds --device cuda

Writes ``benchmarks/results/quality_mr.json``.  Skips (exit 0, a message) without the data.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.quality import git_commit  # noqa: E402

DATA_ROOT = Path(os.environ.get("MEDRECON_DATA", "/work/shared/data"))
MR_SOURCE = DATA_ROOT / "mr-t1-mprage-niivue"
RESULTS = ROOT / "benchmarks" / "results"
HOLDOUT = (64, 96)
TUNE_SLICE = 40
TV_GRID = (0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01)
#: DDS (gamma, eta) grid searched with ``--tune-dds`` on a VALIDATION slice: held out from the
#: prior's training but not among the evaluated slices.  (A training slice flatters settings that
#: trust the prior, which has seen it: on CT, eta 1.0 won on training slices and lost 0.9 dB on
#: held-out ones; see docs/quality.md.)
DDS_GRID = ((100.0, 0.85), (100.0, 0.7), (100.0, 0.5))
DDS_TUNE_SLICE = 66
#: ``--validation``: held-out slices (not seen by ``mr-default``) that the 4-slice evaluation does not
#: use, for choosing settings (steps, draws, CG iterations) before the evaluated slices are run
VALIDATION_SLICES = (66, 73, 86, 93)
DDS_DEFAULT = {"gamma": 100.0, "eta": 0.85}
#: DPS step ``zeta`` grid searched with ``--tune-dps`` on the same validation slice (H100, session 3:
#: 3 / 10 / 30 gave 28.42 / 30.86 / 29.86 dB at 4x, 25.50 / 26.61 / 25.76 at 8x with mr-default).
DPS_GRID = (3.0, 10.0, 30.0)
DPS_DEFAULT = {"zeta": 1.0}



def _measure(data, pixel_mm, accel, noise, seed=0):
    import numpy as np

    import medrecon

    vol = medrecon.Volume(np.ascontiguousarray(data, np.float32), np.diag([pixel_mm, pixel_mm, 1.0, 1.0]),
                          {"modality": "MR", "units": "arbitrary"})
    params = {"coil_maps": {"synthetic": "birdcage", "n_coils": 8}, "real_image": True,
              "mask": {"kind": "random", "acceleration": accel, "center_fraction": 0.08, "seed": seed}}
    m = medrecon.simulate(vol, "mri.sense", params, noise_std=0.0)
    if noise > 0:  # relative to the RMS of the measured (non-zero) samples, per measurement
        y = m.y
        sampled = np.abs(y) > 0
        sigma = noise * float(np.sqrt(np.mean(np.abs(y[sampled]) ** 2)))
        rng = np.random.default_rng(seed + 1)
        n = (rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape)) * sigma / np.sqrt(2)
        m.y = (y + n * sampled).astype(np.complex64)
        m.noise_std = sigma
    return m


def _bound_prior(args, m, truth):
    """The prior for measurement ``m``: its name (the engine binds the MR percentiles to the
    zero-filled reconstruction) for ``--bind zf``; else the prior bound here to a SENSE-CG
    reconstruction (``sense``, 10 iterations) or to the ground truth (``truth``: an oracle, to
    size what the binding costs; never a reported method)."""
    if args.bind == "zf":
        return args.prior
    import torch

    import medrecon

    if args.bind == "truth":
        src = truth
    else:
        with torch.no_grad():
            src = m.operator().sense(torch.from_numpy(m.y), iters=10).abs().numpy()
    return medrecon.load_prior(args.prior).for_volume(src)


def run(args) -> dict:
    import numpy as np

    import medrecon
    from medrecon.metrics import psnr, psnr_slices, ssim
    from medrecon.priors.data import stack_from_volume

    if args.stack:  # preprocessed float16 stacks (a GPU machine without the data; benchmarks/stacks.py)
        from benchmarks.stacks import load_stack_folder

        stack = load_stack_folder(args.stack)
    else:
        stack = stack_from_volume(MR_SOURCE, 256, "mr")
    a, b = HOLDOUT
    idx = np.linspace(a, b - 1, args.slices + 2)[1:-1].round().astype(int) if args.slices > 1 else np.array([80])
    if args.validation:  # choosing settings: held-out slices that the evaluation does not use
        idx = np.array(VALIDATION_SLICES)
        assert not set(idx) & set(np.linspace(a, b - 1, 6)[1:-1].round().astype(int))
    ref = stack.data[idx].astype(np.float32)
    if args.quick:
        ref = ref[:, ::4, ::4]
    px = stack.pixel_size_mm * (4 if args.quick else 1)
    out = {"command": " ".join(sys.argv), "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
           "git": git_commit(), "slices": idx.tolist(), "pixel_size_mm": px, "noise_rel": args.noise,
           "device": args.device, "dds_steps": args.dds_steps, "prior": args.prior, "samples": args.samples,
           "antithetic": args.antithetic, "bind": args.bind,
           "results": {}}
    figure = {}  # acceleration -> {method: first evaluated slice}
    for accel in args.accels:
        tv_lam = args.tv_lam
        if "tv" in args.methods and tv_lam is None:  # pick on a training slice
            tr = stack.data[[TUNE_SLICE]].astype(np.float32)
            tr = tr[:, ::4, ::4] if args.quick else tr
            mt = _measure(tr, px, accel, args.noise)
            scores = {}
            for lr in TV_GRID:
                x = medrecon.reconstruct(mt, "tv", params={"lam_rel": lr}, progress=False, device=args.device).data
                scores[lr] = psnr(x, tr)
            tv_lam = max(scores, key=scores.get)
            out.setdefault("tv_tuning", {})[str(accel)] = {str(k): round(v, 2) for k, v in scores.items()}
        dds_params = {**DDS_DEFAULT, **(json.loads(args.dds_params) if args.dds_params else {})}
        if "dds" in args.methods and args.tune_dds:  # pick (gamma, eta) on the validation slice
            assert DDS_TUNE_SLICE not in idx
            tr = stack.data[[DDS_TUNE_SLICE]].astype(np.float32)
            tr = tr[:, ::4, ::4] if args.quick else tr
            mt = _measure(tr, px, accel, args.noise)
            scores = {}
            tune_prior = _bound_prior(args, mt, tr)
            for g, e in DDS_GRID:
                x = medrecon.reconstruct(mt, "dds", tune_prior, params={**dds_params, "gamma": g, "eta": e},
                                         samples=args.samples, antithetic=args.antithetic, draw_batch=args.draw_batch,
                                         steps=args.dds_steps, progress=False, device=args.device, seed=0).data
                scores[(g, e)] = psnr(x, tr)
                print(f"{accel}x tune dds gamma {g:g} eta {e:g}: PSNR {scores[(g, e)]:.2f} dB (validation z {DDS_TUNE_SLICE})",
                      flush=True)
            g, e = max(scores, key=scores.get)
            dds_params = {**dds_params, "gamma": g, "eta": e}
            out.setdefault("dds_tuning", {})[str(accel)] = {f"gamma={g:g},eta={e:g}": round(v, 2)
                                                           for (g, e), v in scores.items()}
        dps_params = {**({"zeta": args.dps_zeta} if args.dps_zeta is not None else DPS_DEFAULT),
                      **(json.loads(args.dps_params) if args.dps_params else {})}
        if "dps" in args.methods and args.tune_dps:  # pick zeta on the validation slice
            assert DDS_TUNE_SLICE not in idx
            tr = stack.data[[DDS_TUNE_SLICE]].astype(np.float32)
            tr = tr[:, ::4, ::4] if args.quick else tr
            mt = _measure(tr, px, accel, args.noise)
            scores = {}
            tune_prior = _bound_prior(args, mt, tr)
            for zeta in args.dps_grid or DPS_GRID:
                x = medrecon.reconstruct(mt, "dps", tune_prior, params={**dps_params, "zeta": zeta},
                                         steps=args.dps_steps, samples=args.samples, antithetic=args.antithetic,
                                         draw_batch=args.draw_batch, progress=False, device=args.device, seed=0).data
                scores[zeta] = psnr(x, tr)
                print(f"{accel}x tune dps zeta {zeta:g}: PSNR {scores[zeta]:.2f} dB (validation z {DDS_TUNE_SLICE})",
                      flush=True)
            dps_params = {**dps_params, "zeta": max(scores, key=scores.get)}
            out.setdefault("dps_tuning", {})[str(accel)] = {f"zeta={k:g}": round(v, 2) for k, v in scores.items()}
        m = _measure(ref, px, accel, args.noise)
        A = m.operator()
        row = {"acceleration_achieved": round(A.acceleration, 3)}
        for meth in args.methods:
            # DPS costs ~4x DDS per step and runs 200 steps: --dps-slices evaluates it (and
            # the comparison rows it is reported with) on the first K evaluated slices only
            sub = slice(None) if meth != "dps" or not args.dps_slices else slice(0, args.dps_slices)
            ms = m if sub == slice(None) else dataclasses.replace(m, y=m.y[sub],
                                                                  volume_shape=(len(idx[sub]), *m.volume_shape[1:]))
            # bound to the slices reconstructed, as the engine binds --bind zf to ms
            bound = _bound_prior(args, ms, ref[sub]) if meth in ("dds", "dps") else None
            name, params, prior, steps = {
                "zf": ("classical", {}, None, None),
                "sense": ("sense", {"iters": 10, "lam": 0.0}, None, None),  # early-stopped CG, as recorded
                "tv": ("tv", {"lam_rel": tv_lam}, None, None),
                "dds": ("dds", dds_params, bound, args.dds_steps),
                "dps": ("dps", dps_params, bound, args.dps_steps),
            }[meth]
            n_draws = args.samples if prior is not None else 1
            keep = {}
            if args.keep and prior is not None:  # one slice per batch, checkpointed: a killed run resumes
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                keep = {"output": Path(args.keep) / f"{accel}x_{meth}.nii.gz", "resume": True, "overwrite": True,
                        "batch_size": 1}
            t0 = time.perf_counter()
            vol = medrecon.reconstruct(ms, name, prior, params=params, steps=steps, progress=False,
                                       device=args.device, seed=0, samples=n_draws,
                                       antithetic=args.antithetic and n_draws > 1, draw_batch=args.draw_batch,
                                       recommended=False,  # exactly the params recorded in the row
                                       **{"batch_size": len(idx), **keep})
            x = vol.data
            # slices reloaded from --keep's checkpoints took no time in this run: per computed slice
            resumed = int(vol.meta.get("reconstruction", {}).get("resumed_slices", 0))
            sec = (time.perf_counter() - t0) / max(1, x.shape[0] - resumed)
            row[meth] = {"psnr": round(psnr(x, ref[sub]), 2), "ssim": round(ssim(x, ref[sub]), 4),
                         "seconds_per_slice": round(sec, 2), "params": params, "samples": n_draws,
                         # on the whole reference's [min, max], so subsets compare with the full rows
                         "psnr_per_slice": [round(float(v), 2) for v in psnr_slices(
                             x, ref[sub], window=(float(ref.min()), float(ref.max())))]}
            if sub != slice(None):
                row[meth]["slices"] = idx[sub].tolist()
            if resumed:
                row[meth]["resumed_slices"] = resumed
            shown = figure.setdefault(f"{accel}x", {"reference": ref[0]})
            shown[meth] = x[0]
            if n_draws > 1:
                shown[f"{meth} std"] = vol.components["std"].data[0]
            print(f"{accel}x {meth:6s} PSNR {row[meth]['psnr']:6.2f} dB  SSIM {row[meth]['ssim']:.4f}  "
                  f"{sec:.1f} s/slice", flush=True)
        out["results"][f"{accel}x"] = row
    if args.png and not args.quick:
        write_png(args.png, figure, out, int(idx[0]))
        out["png"] = args.png
    return out


NAMES = {"zf": "zero-filled", "sense": "SENSE", "tv": "SENSE + TV", "dds": "DDS", "dps": "DPS"}


def write_png(path, figure, out, z):
    """Per acceleration two rows: the images (reference window [min, max]) with their PSNR on
    this slice, and |error| (0..20 % of the window); posterior std maps (``--samples``) in the
    error row's scale."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medrecon.metrics import psnr

    cols = max(len(v) for v in figure.values())
    fig, axes = plt.subplots(2 * len(figure), cols, figsize=(2.2 * cols, 4.6 * len(figure)), dpi=90, squeeze=False)
    for r, (acc, shown) in enumerate(figure.items()):
        ref = shown["reference"]
        lo, hi = float(ref.min()), float(ref.max())
        emax = 0.2 * (hi - lo)
        for j in range(cols):
            top, bottom = axes[2 * r, j], axes[2 * r + 1, j]
            top.axis("off")
            bottom.axis("off")
            if j >= len(shown):
                continue
            name = list(shown)[j]
            img = shown[name]
            if name.endswith(" std"):
                top.imshow(img, cmap="magma", vmin=0, vmax=emax)
                meth = name[:-4]
                top.set_title(f"{NAMES.get(meth, meth)} std\n{out['samples']} draws", fontsize=8)
                continue
            top.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            if name == "reference":
                top.set_title(f"reference z={z}\n{acc}, 8 coils", fontsize=8)
                bottom.text(0.5, 0.5, f"|error|\n0..{emax:.0f}", ha="center", va="center", fontsize=8,
                            transform=bottom.transAxes)
                continue
            draws = (f", mean of {out['samples']}" + (" (antithetic)" if out.get("antithetic") else "")
                     if out["samples"] > 1 and name in ("dds", "dps") else "")
            top.set_title(f"{NAMES.get(name, name)}{draws}\n{psnr(img, ref, (lo, hi)):.2f} dB", fontsize=8)
            bottom.imshow(np.abs(img - ref), cmap="magma", vmin=0, vmax=emax)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--accels", type=float, nargs="+", default=[4, 8])
    ap.add_argument("--methods", nargs="+", default=["zf", "sense", "tv", "dds"],
                    choices=["zf", "sense", "tv", "dds", "dps"])
    ap.add_argument("--dds-steps", type=int, default=50)
    ap.add_argument("--dds-params", default=None, help='JSON of DDS parameters over the defaults, e.g. '
                    '\'{"cg_iters": 10}\' (--tune-dds still picks gamma and eta)')
    ap.add_argument("--tv-lam", type=float, default=None, help="TV lam_rel (default: picked on a training slice)")
    ap.add_argument("--noise", type=float, default=0.005)
    ap.add_argument("--tune-dds", action="store_true", help="pick DDS (gamma, eta) on the validation slice")
    ap.add_argument("--dps-steps", type=int, default=200)
    ap.add_argument("--dps-zeta", type=float, default=None, help="DPS zeta (default 1.0 or --tune-dps)")
    ap.add_argument("--dps-params", default=None, help='JSON of DPS parameters over zeta, e.g. \'{"clip": null}\'')
    ap.add_argument("--tune-dps", action="store_true", help="pick DPS zeta on the validation slice")
    ap.add_argument("--dps-grid", type=float, nargs="+", default=None, help="zeta values for --tune-dps")
    ap.add_argument("--dps-slices", type=int, default=None, help="evaluate DPS on the first K slices only")
    ap.add_argument("--samples", type=int, default=1,
                    help="posterior draws per slice for dds / dps: their mean is evaluated (reconstruct samples=N)")
    ap.add_argument("--antithetic", action="store_true",
                    help="with an even --samples: the draws in antithetic pairs (reconstruct antithetic=True)")
    ap.add_argument("--draw-batch", type=int, default=1,
                    help="draws run side by side in one batch (reconstruct draw_batch; same result, faster on a GPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="1 slice, 64 x 64, 5 DDS steps (smoke run)")
    ap.add_argument("--validation", action="store_true",
                    help="run on the validation slices 66, 73, 86, 93 (choosing settings), not the evaluated ones")
    ap.add_argument("--prior", default="mr-default", help="prior name or folder (default mr-default)")
    ap.add_argument("--bind", default="zf", choices=["zf", "sense", "truth"],
                    help="what the MR prior's percentiles are bound to: the zero-filled reconstruction (zf, "
                         "what the engine does), SENSE-CG, or the truth (an oracle, to size the binding's cost)")
    ap.add_argument("--stack", default=None, help="folder of preprocessed float16 stacks (e.g. .gpu/mr) instead "
                    "of the series")
    ap.add_argument("--keep", default=None, help="folder: DDS / DPS rows are written there slice by slice "
                    "(ACCELx_METHOD.nii.gz, checkpointed in .partial folders) and a killed run rerun with the same "
                    "arguments resumes from the slices finished")
    ap.add_argument("--output", default=None, help="JSON (default benchmarks/results/quality_mr.json; --quick "
                    "writes only when given)")
    ap.add_argument("--png", default=None, help="figure (default: the --output path with .png)")
    args = ap.parse_args(argv)
    if args.validation and (args.tune_dds or args.tune_dps):
        ap.error("--tune-dds / --tune-dps pick on validation slice 66, which --validation evaluates")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not MR_SOURCE.is_dir() and not args.stack:
        print(f"skipped: {MR_SOURCE} is not present")
        return 0
    if args.quick:
        args.slices, args.dds_steps, args.dps_steps = 1, 5, 5
    args.accels = [int(a) if float(a).is_integer() else a for a in args.accels]
    write = args.output is not None or not args.quick
    args.output = args.output or str(RESULTS / "quality_mr.json")
    args.png = args.png or str(Path(args.output).with_suffix(".png"))
    res = run(args)
    if write:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
