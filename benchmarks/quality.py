"""Reconstruction quality of the shipped priors on held-out slices (issue 4, "Quality").

CT part (``--modality ct``, the default)
----------------------------------------
* Data: the pancreas CT (``/work/shared/data/ct-pancreas-tcia``) read with
  :func:`medrecon.load_volume` and resampled exactly as for prior training
  (:func:`medrecon.priors.data.stack_from_volume`: 256 x 256, whole field of view, area
  averaging, 2.148 mm pixels, HU).  ``ct-default`` was trained on z-order slices 32.. and
  never saw slices 0..31: the evaluation slices are spread through that held-out block;
  parameters are tuned on VALIDATION slices (``--tune --tune-on validation``: held-out
  slices that the evaluation does not use, and not next to one), never on the evaluated
  ones.  ``--tune-on training`` (the default of ``--tune``) uses training slices instead,
  which flatters prior-trusting settings (the prior has seen those slices).
* Measurement: ``ct.parallel`` (Joseph projector), 256 x 256, pixel_size 2.148 mm,
  ``n_views`` in {8, 16} over [0, 180) degrees, ``y = A x + n`` with ``x`` in HU and
  Gaussian noise of standard deviation 0.5 % of the RMS of the slice's noiseless
  sinogram (per slice; the noise of slice ``k`` drawn from a generator seeded by
  ``(seed, k)``, so it does not depend on the batch).
* Methods: FBP (``classical``), TV (weight tuned on validation slices), DDS (gamma, eta
  tuned on validation slices), DPS and RED-Diff (library defaults) with the ``ct-default`` prior.
* Metrics: PSNR and SSIM (:mod:`medrecon.metrics`) on the window [-1000, 1000] HU (both
  images clipped to it, data range 2000) and on the full range [-1000, 2000] HU; seconds
  per slice (wall clock of the batch / slices, on the device used).

MR part (``--modality mr``, issue 6)
------------------------------------
``--modality mr`` hands every other option to ``benchmarks/quality_mr.py`` (its own
protocol and options: held-out T1 MPRAGE slices, ``mri.sense`` with 8 synthetic coils,
random 1D masks at 4x and 8x, zero-filled / SENSE / SENSE+TV / DDS / DPS; ``--modality mr
--help`` lists them).

Usage::

    .venv/bin/python benchmarks/quality.py                    # full CT protocol (8 slices; GPU-sized)
    .venv/bin/python benchmarks/quality.py --slices 4 --batch 4 --method-views reddiff=8 dps=8 \
        --dps-slices 1 --dps-steps 100                        # the reduced run of docs/quality.md (CPU)
    .venv/bin/python benchmarks/quality.py --tune             # parameter tuning on training slices
    .venv/bin/python benchmarks/quality.py --quick            # smoke run (seconds): 2 slices, 64 x 64, 5 steps
    .venv/bin/python benchmarks/quality.py --views 8 --methods fbp tv dds --slices 4

Writes ``benchmarks/results/quality_ct.json`` (command, date, git commit, parameters,
per-slice numbers) and ``quality_ct.png`` (reference, FBP, TV, DDS, DPS, RED-Diff for one
slice at the smallest view count, with error maps); ``--tune`` writes
``out/quality_ct_tune.json``.  Skips (exit 0, a message) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA_ROOT = Path(os.environ.get("MEDRECON_DATA", "/work/shared/data"))
CT_SOURCE = DATA_ROOT / "ct-pancreas-tcia"
RESULTS = ROOT / "benchmarks" / "results"

CT_SIZE = 256
CT_PIXEL_MM = 2.148
CT_HOLDOUT = (0, 32)  # z-order block the prior never saw
NOISE_REL = 0.005
DEVICE = "cpu"  # --device: where operators, measurements and the prior run
STACK_FOLDER = None  # --stack: read the slices from preprocessed .npy stacks instead of the series  # Gaussian noise std as a fraction of the sinogram RMS (per slice)
WINDOWS = {"w1000": (-1000.0, 1000.0), "full": (-1000.0, 2000.0)}
ALL_METHODS = ("fbp", "tv", "dds", "dps", "reddiff")

# Parameters chosen by ``--tune --tune-on validation`` (held-out slices z 2, 15, 29, which the
# evaluation at --slices 4 does not use; see docs/quality.md,
# "Settings chosen on validation slices").  Keyed by method, then by number of views (None:
# any).  Updated by hand from the tuning logs.  Tuning DDS on TRAINING slices (the prior has seen
# them) picked eta 1.0 / gamma 1000, which lost 0.9 dB (8 views) and 0.8 dB (16 views) against the
# defaults on the held-out slices: prior-trusting settings look best on slices the prior memorised.
# DPS: zeta on the validation slice z 15 at 200 steps: 2.5 / 5 / 10 gave 26.74 / 28.58 /
# 28.30 dB (8 views) and 27.52 / 30.44 / 30.00 dB (16 views): zeta 5 at both
# (docs/quality.md).  The library default (1.0, the official value)
# is for its default 1000 steps; 200 steps push the data 5x less often.  RED-Diff: tuned per view
# count in the same way (docs/quality.md).
TUNED = {
    "fbp": {None: {}},
    "tv": {8: {"lam": 5.0}, 16: {"lam": 1.25}},
    "dds": {None: {"gamma": 100.0, "eta": 0.5}},
    "dps": {None: {"zeta": 5.0}},
    "reddiff": {None: {"lam": 0.25, "lr": 0.1}, 8: {"lam": 0.25, "lr": 0.5}, 16: {"lam": 0.25, "lr": 0.1}},
}
STEPS = {"fbp": None, "tv": 300, "dds": 50, "dps": 200, "reddiff": 50}
SAMPLER = {"fbp": "classical", "tv": "tv", "dds": "dds", "dps": "dps", "reddiff": "reddiff"}

# Tuning grids (training slices only)
GRID = {
    "tv": [{"lam": v} for v in (2.5, 5.0, 10.0, 20.0, 40.0, 80.0)],
    "dds": [{"gamma": g, "eta": e} for g in (10.0, 100.0, 1000.0) for e in (0.5, 0.85)],
    "dps": [{"zeta": z} for z in (0.3, 1.0, 3.0)],
    "reddiff": [{"lam": lam, "lr": lr} for lam in (0.05, 0.25, 1.0) for lr in (0.1, 0.5)],
}


# ----------------------------------------------------------------------------- helpers
def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def spread(n: int, lo: int, hi: int) -> list[int]:
    """``n`` indices spread evenly through [lo, hi) (both ends included when n > 1)."""
    import numpy as np

    n = min(n, hi - lo)
    if n == 1:
        return [(lo + hi - 1) // 2]
    return sorted({int(round(v)) for v in np.linspace(lo, hi - 1, n)})


def params_for(method: str, views: int, override: dict | None = None) -> dict:
    table = (override or {}).get(method) or TUNED[method]
    p = table.get(views, table.get(str(views), table.get(None, table.get("null", {}))))
    return dict(p)


_STACKS: dict = {}


def load_ct_slices(z_indices: list[int], size: int = CT_SIZE):
    """HU slices (len(z), size, size) float32 and the pixel size, preprocessed as for training.

    ``size`` < 256 (``--quick``) block-averages the 256 x 256 slices (pixel size scaled).
    """
    import numpy as np
    import torch

    from medrecon.priors.data import stack_from_volume

    if "ct" not in _STACKS:  # reading the DICOM series is slow: once per process
        if STACK_FOLDER is not None:  # preprocessed float16 stacks (GPU machine without the data)
            from benchmarks.stacks import load_stack_folder

            _STACKS["ct"] = load_stack_folder(STACK_FOLDER)
        else:
            _STACKS["ct"] = stack_from_volume(CT_SOURCE, CT_SIZE, "ct")
    st = _STACKS["ct"]
    px = st.pixel_size_mm
    data = np.asarray(st.data[z_indices], dtype=np.float32)
    if size != CT_SIZE:
        x = torch.nn.functional.interpolate(torch.from_numpy(data)[:, None], size=(size, size), mode="area")
        data = x[:, 0].numpy()
        px = px * CT_SIZE / size
    return data, px, st.data.shape[0]


def simulate(x_hu, views: int, pixel_mm: float, z_indices: list[int], seed: int = 0):
    """(operator, y) for HU slices ``x_hu`` (B, N, N): parallel beam + 0.5 % relative noise per slice."""
    import torch

    import medrecon
    from medrecon.samplers import slice_generators

    n = x_hu.shape[-1]
    op = medrecon.get_operator("ct.parallel", shape=[n, n], n_views=views, pixel_size=pixel_mm)
    x = torch.as_tensor(x_hu, dtype=torch.float32)
    with torch.no_grad():
        y0 = op(x)
    gens = slice_generators(seed + 1000 * views, z_indices)
    y = torch.empty_like(y0)
    sig = []
    for i, g in enumerate(gens):
        s = NOISE_REL * float(y0[i].pow(2).mean().sqrt())
        y[i] = y0[i] + s * torch.randn(y0[i].shape, generator=g)
        sig.append(s)
    return op, y, sig


def run_method(method: str, params: dict, y, op, prior, z_indices, steps=None, seed=0, batch=8):
    """Reconstruct all slices in batches; returns (x (B, N, N) numpy, seconds per slice)."""
    import numpy as np
    import torch

    from medrecon.samplers import get_sampler, slice_generators

    s = get_sampler(SAMPLER[method], **params)
    st = STEPS[method] if steps is None else steps
    out = []
    op = op.to(DEVICE)  # the measurement and operator where the prior is (--device)
    t0 = time.perf_counter()
    for a in range(0, y.shape[0], batch):
        yb = y[a:a + batch].to(DEVICE)
        zi = z_indices[a:a + batch]
        kw = {}
        if method in ("dds", "dps", "reddiff"):
            kw = dict(steps=st, generators=slice_generators(seed, zi))
        elif method == "tv":
            kw = dict(steps=st)
        if method in ("dds", "reddiff", "fbp", "tv"):
            with torch.no_grad():
                x = s.sample(yb, op, prior if s.needs_prior else None, **kw)
        else:
            x = s.sample(yb, op, prior, **kw)
        out.append(x.detach().float().cpu().numpy())
    sec = (time.perf_counter() - t0) / y.shape[0]
    return np.concatenate(out), sec


def score(x, ref) -> dict:
    from medrecon.metrics import psnr_slices, ssim_slices

    r = {}
    for k, w in WINDOWS.items():
        r[f"psnr_{k}"] = [float(v) for v in psnr_slices(x, ref, w)]
        r[f"ssim_{k}"] = [float(v) for v in ssim_slices(x, ref, w)]
    return r


def mean(v):
    return float(sum(v) / len(v))


# ----------------------------------------------------------------------------- CT
def evaluate_methods(ref, views_list, methods, pixel_mm, z_indices, prior, steps_override, params_override,
                     seed, batch, log, subsets=None, method_views=None, on_result=None):
    """Per view count and method: parameters, per-slice metrics, seconds per slice, reconstructions.

    ``subsets``: {method: k} evaluates that method on ``k`` of the slices only (spread through them).
    """
    import numpy as np

    results, recons, sims = {}, {}, {}
    for views in views_list:
        sims[views] = simulate(ref, views, pixel_mm, z_indices, seed)
        results[views] = {"noise_std": sims[views][2], "methods": {}}
        recons[views] = {}
    # method outer, views inner: the cheap methods finish first (partial results are saved)
    for m in methods:
        for views in views_list:
            op, y, _ = sims[views]
            if method_views and m in method_views and views not in method_views[m]:
                continue
            p = params_for(m, views, params_override)
            st = steps_override.get(m) if steps_override else None
            pos = list(range(len(z_indices)))
            if subsets and subsets.get(m) is not None and subsets[m] < len(pos):
                pos = spread(subsets[m], 0, len(pos))
            x, sec = run_method(m, p, y[pos], op, prior, [z_indices[i] for i in pos], st, seed, batch)
            sc = score(x, ref[pos])
            results[views]["methods"][m] = {"params": p, "steps": st if st is not None else STEPS[m],
                                            "sec_per_slice": sec, "z_indices": [z_indices[i] for i in pos],
                                            "positions": pos, **sc}
            if len(pos) < len(z_indices):  # full-size stand-in for the figure
                full = np.full_like(ref, np.nan)
                full[pos] = x
                x = full
            recons[views][m] = x
            if on_result is not None:
                on_result(results, recons)
            log(f"  views {views:3d} {m:8s} PSNR {mean(sc['psnr_w1000']):6.2f} dB  SSIM "
                f"{mean(sc['ssim_w1000']):.3f}  (full range {mean(sc['psnr_full']):6.2f} dB)  "
                f"{sec:7.2f} s/slice  {p}")
    return results, recons


def add_subset_means(results):
    """For a method run on a subset of the slices: every method's means on that same subset."""
    for r in results.values():
        n_max = max((len(d["positions"]) for d in r["methods"].values()), default=0)
        for d in r["methods"].values():
            pos = d["positions"]
            if len(pos) == n_max:
                continue
            d["same_subset_means"] = {
                o: {k: mean([e[k][e["positions"].index(i)] for i in pos]) for k in ("psnr_w1000", "ssim_w1000")}
                for o, e in r["methods"].items() if all(i in e["positions"] for i in pos)}


def print_table(results, file=sys.stdout):
    hdr = (f"{'views':>5} {'method':<8} {'PSNR[-1k,1k]':>12} {'SSIM[-1k,1k]':>12} {'PSNR full':>10} "
           f"{'SSIM full':>9} {'s/slice':>8}  params")
    print(hdr, file=file)
    print("-" * len(hdr), file=file)
    for views, r in results.items():
        for m, v in r["methods"].items():
            print(f"{views:>5} {m:<8} {mean(v['psnr_w1000']):12.2f} {mean(v['ssim_w1000']):12.3f} "
                  f"{mean(v['psnr_full']):10.2f} {mean(v['ssim_full']):9.3f} {v['sec_per_slice']:8.2f}  "
                  f"{v['params']} steps={v['steps']} slices={len(v['positions'])}", file=file)


def markdown_table(out: dict) -> str:
    """The results of a quality JSON as a Markdown table (means over the slices each method ran on)."""
    names = {"fbp": "FBP", "tv": "TV", "dds": "DDS", "dps": "DPS", "reddiff": "RED-Diff"}
    rows = ["| views | method | PSNR [-1000,1000] | SSIM [-1000,1000] | PSNR [-1000,2000] | SSIM [-1000,2000] "
            "| s / slice | slices | steps | parameters |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v, r in out["results"].items():
        for m, d in r["methods"].items():
            mm = d["mean"]
            rows.append(f"| {v} | {names.get(m, m)} | {mm['psnr_w1000']:.2f} | {mm['ssim_w1000']:.3f} | "
                        f"{mm['psnr_full']:.2f} | {mm['ssim_full']:.3f} | {d['sec_per_slice']:.1f} | "
                        f"{len(d['positions'])} | {d['steps'] if d['steps'] is not None else '-'} | "
                        f"{', '.join(f'{k} {w:g}' for k, w in d['params'].items()) or '-'} |")
    return "\n".join(rows)


def write_png(path, ref, recons, views, slice_pos, z, window=(-1000.0, 1000.0), err_max=300.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["reference"] + list(recons)
    fig, axes = plt.subplots(2, len(names), figsize=(2.3 * len(names), 4.9), dpi=90)
    if len(names) == 1:
        axes = axes[:, None]
    r = ref[slice_pos]
    for j, n in enumerate(names):
        img = r if n == "reference" else recons[n][slice_pos]
        ax = axes[0, j]
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1])
        title = n if n == "reference" else n.upper() if n in ("fbp", "tv", "dds", "dps") else "RED-Diff"
        if n != "reference":
            from medrecon.metrics import psnr
            title += f"\n{psnr(img, r, window):.1f} dB"
        else:
            title += f"\nz={z}, {views} views"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
        ax = axes[1, j]
        if n == "reference":
            ax.axis("off")
            ax.text(0.5, 0.5, f"|error| HU\n0..{err_max:.0f}", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes)
            continue
        ax.imshow(abs(img - r), cmap="magma", vmin=0, vmax=err_max)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_ct(args, log) -> int:
    import numpy as np
    import torch

    if not CT_SOURCE.exists() and STACK_FOLDER is None:
        print(f"quality: {CT_SOURCE} is absent; skipping the CT benchmark")
        return 0
    import medrecon

    size = 64 if args.quick else CT_SIZE
    t_all = time.perf_counter()
    prior = None
    if any(m in ("dds", "dps", "reddiff") for m in args.methods):
        prior = medrecon.load_prior(args.prior).to(args.device)
    params_override = json.loads(Path(args.params).read_text()) if args.params else None
    if params_override:
        params_override = {m: {(None if k in ("null", "None") else int(k)): v for k, v in t.items()}
                           for m, t in params_override.items()}
    steps_override = {}
    if args.steps is not None:
        steps_override = {m: args.steps for m in ("dds", "dps", "reddiff")}
    if args.quick:
        steps_override = {"tv": 30, "dds": 5, "dps": 5, "reddiff": 5}
    if args.dps_steps is not None:
        steps_override["dps"] = args.dps_steps

    if args.tune:
        return tune_ct(args, log, prior, size, steps_override)

    n = 2 if args.quick else args.slices
    z = spread(n, *CT_HOLDOUT)
    ref, px, nz = load_ct_slices(z, size)
    log(f"CT held-out slices (z order) {z} of {nz}; {size}x{size} at {px:.3f} mm; noise {NOISE_REL:.1%} "
        f"of the sinogram RMS; device {args.device}; torch threads {torch.get_num_threads()}")
    subsets = {"dps": args.dps_slices} if args.dps_slices else None
    method_views = {}
    for spec in args.method_views or []:
        m, _, vs = spec.partition("=")
        method_views[m] = [int(v) for v in vs.split(",") if v]

    def build(results):
        return {
            "benchmark": "quality", "modality": "ct", "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "git_commit": git_commit(),
            "host": {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads()},
            "data": {"source": str(CT_SOURCE), "z_indices": z, "holdout_block": list(CT_HOLDOUT), "size": size,
                     "pixel_size_mm": px, "units": "HU"},
            "measurement": {"operator": "ct.parallel", "angles": "linspace(0, 180, n_views, endpoint=False)",
                            "noise": f"Gaussian, std = {NOISE_REL} x RMS of the slice's noiseless sinogram",
                            "seed": args.seed},
            "windows": {k: list(v) for k, v in WINDOWS.items()}, "prior": args.prior,
            "tuning": "TV and DDS tuned on validation slices (benchmarks/quality.py --tune --tune-on validation), "
                      "DPS and RED-Diff library defaults; see docs/quality.md",
            "results": {str(v): {"noise_std": r["noise_std"], "methods": {m: {
                **d, "mean": {k: mean(d[k]) for k in d if k.startswith(("psnr", "ssim"))}}
                for m, d in r["methods"].items()}} for v, r in results.items()},
            "total_seconds": time.perf_counter() - t_all,
        }

    def figure(recons):
        v = min(args.views)
        if not args.png or not recons.get(v):
            return
        # a slice every method at this view count reconstructed (DPS may run on a subset)
        common = [i for i in range(len(z)) if all(not np.isnan(x[i]).any() for x in recons[v].values())]
        k = min(common, key=lambda i: abs(i - len(z) // 2)) if common else len(z) // 2
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        write_png(args.png, ref, recons[v], v, k, z[k])

    def save(results, recons=None, final=False):
        add_subset_means(results)
        if args.json:
            out = build(results)
            out["complete"] = final
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        if recons is not None:
            figure(recons)

    results, recons = evaluate_methods(ref, args.views, args.methods, px, z, prior, steps_override,
                                       params_override, args.seed, args.batch, log, subsets, method_views,
                                       on_result=save)
    save(results, recons, final=True)
    print_table(results)
    if args.json:
        log(f"wrote {args.json}")
    if args.png:
        log(f"wrote {args.png}")
    return 0


def tune_ct(args, log, prior, size, steps_override) -> int:
    """Grid search on TRAINING slices (z >= 32); writes the table to --json (default *_tune.json)."""
    import torch

    n = 2 if args.quick else args.tune_slices
    grid = dict(GRID, **(json.loads(args.grid) if args.grid else {}))
    _, _, nz = load_ct_slices([0], size)
    if args.tune_on == "validation":
        # held-out slices the prior never saw that the evaluation (--slices) does not use: a
        # validation set.  Training slices flatter samplers that trust the prior (it has seen them).
        test = set(spread(args.slices, *CT_HOLDOUT))
        free = [k for k in range(*CT_HOLDOUT) if k not in test and k - 1 not in test and k + 1 not in test]
        z = [free[i] for i in spread(n, 0, len(free))]
    else:
        z = spread(n + 2, CT_HOLDOUT[1], nz)[1:-1]  # training slices, avoiding the very ends
    ref, px, _ = load_ct_slices(z, size)
    log(f"TUNING on {args.tune_on} slices {z}; {size}x{size}; views {args.views}; methods {args.methods}")
    table = {}
    for views in args.views:
        op, y, _ = simulate(ref, views, px, z, args.seed)
        table[views] = {}
        for m in args.methods:
            if m == "fbp":
                continue
            rows = []
            for p in grid[m]:
                st = steps_override.get(m)
                x, sec = run_method(m, p, y, op, prior, z, st, args.seed, args.batch)
                sc = score(x, ref)
                row = {"params": p, "steps": st if st is not None else STEPS[m], "sec_per_slice": sec,
                       **{k: mean(v) for k, v in sc.items()}, "psnr_w1000_slices": sc["psnr_w1000"]}
                rows.append(row)
                log(f"  views {views:3d} {m:8s} {p}  PSNR {row['psnr_w1000']:.2f} dB  SSIM "
                    f"{row['ssim_w1000']:.3f}  {sec:.1f} s/slice")
            best = max(rows, key=lambda r: r["psnr_w1000"])
            table[views][m] = {"grid": rows, "best": best["params"]}
            log(f"  -> views {views} {m}: best {best['params']} ({best['psnr_w1000']:.2f} dB)")
    out = {"benchmark": "quality-tune", "modality": "ct", "tune_on": args.tune_on, "tune_z": z,
           "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
           "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "git_commit": git_commit(),
           "threads": torch.get_num_threads(), "results": {str(k): v for k, v in table.items()}}
    path = args.json or str(ROOT / "out" / "quality_ct_tune.json")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if Path(path).exists() and not args.quick:  # merge with earlier tuning runs (other methods / views)
        old = json.loads(Path(path).read_text())
        for v, d in out["results"].items():
            old.setdefault("results", {}).setdefault(v, {}).update(d)
        old.setdefault("runs", []).append({"command": out["command"], "date": out["date"],
                                           "git_commit": out["git_commit"], "tune_z": z})
        out = old
    Path(path).write_text(json.dumps(out, indent=1) + "\n")
    log(f"wrote {path}")
    return 0


# The CT protocol; "mr" is handed to benchmarks/quality_mr.py by main().
MODALITIES = {"ct": run_ct}


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--modality", choices=("ct", "mr"), default="ct")
    known, rest = pre.parse_known_args(argv)
    if known.modality == "mr":  # the MR protocol has its own options (module docstring)
        from benchmarks.quality_mr import main as main_mr

        sys.argv[0] = str(Path(__file__).resolve().parent / "quality_mr.py")
        return main_mr(rest)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modality", choices=sorted(MODALITIES), default="ct")
    ap.add_argument("--views", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--slices", type=int, default=8, help="held-out slices evaluated (spread through z 0..31)")
    ap.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(ALL_METHODS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prior", default="ct-default")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="override the steps of DDS, DPS and RED-Diff")
    ap.add_argument("--dps-steps", type=int, default=None, help="override the steps of DPS only")
    ap.add_argument("--dps-slices", type=int, default=None,
                    help="evaluate DPS on this many of the slices only (it costs ~3x DDS per step)")
    ap.add_argument("--method-views", nargs="*", default=None, metavar="METHOD=V1,V2",
                    help="run METHOD only at these view counts (e.g. reddiff=8 dps=8)")
    ap.add_argument("--params", default=None, help="JSON file {method: {views|null: {param: value}}}")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 slices at 64x64, 5 steps")
    ap.add_argument("--tune", action="store_true", help="grid search on training slices instead")
    ap.add_argument("--tune-slices", type=int, default=2)
    ap.add_argument("--tune-on", choices=("training", "validation"), default="training",
                    help="tune on training slices, or on held-out slices not used by the evaluation")
    ap.add_argument("--grid", default=None, help='JSON replacing tuning grids, e.g. \'{"tv": [{"lam": 1.25}]}\'')
    ap.add_argument("--stack", default=None, help="folder of preprocessed float16 stacks (e.g. .gpu/ct) instead "
                    "of the DICOM series (benchmarks/stacks.py)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--markdown", default=None, metavar="JSON", help="print a results JSON as Markdown and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(Path(args.markdown).read_text())))
        return 0
    if not args.quick and not args.tune:
        args.json = args.json or str(RESULTS / f"quality_{args.modality}.json")
        args.png = args.png or str(RESULTS / f"quality_{args.modality}.png")
    import torch

    torch.set_num_threads(args.threads)
    global STACK_FOLDER, DEVICE
    STACK_FOLDER, DEVICE = args.stack, args.device

    def log(msg):
        print(msg, flush=True)

    return MODALITIES[args.modality](args, log)


if __name__ == "__main__":
    sys.exit(main())
