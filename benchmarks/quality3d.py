"""3D sparse-view CT quality: FBP, TV-3D, slice-wise DDS, mbir3d and dds3d on held-out slices.

    PYTHONPATH=. python benchmarks/quality3d.py --data .gpu/ct/holdout.npy --device cuda \\
        --mbir-steps 500 --output out/quality3d            # GPU: 32 slices, 256^2
    PYTHONPATH=. python benchmarks/quality3d.py --quick     # CPU smoke test (4 slices, 64^2 crop, 3 steps)
    PYTHONPATH=. python benchmarks/quality3d.py --quick --geometry cone   # the same, cone beam (16 views)

Data: a contiguous block of axial slices the prior did not see.  ``--data X.npy`` reads a
preprocessed float16 stack (N, S, S) in HU (``python -m medrecon.priors.prepare``; the
ct-default prior held out z 0..31 of /work/shared/data/ct-pancreas-tcia, which is
``.gpu/ct/holdout.npy``); without ``--data`` the DICOM series is read and preprocessed the
same way (256 x 256, whole FOV, 2.1484375 mm; needs pydicom).  ``--crop C`` keeps the centre
C x C (same pixel size).

Measurements (``--geometry parallel``, the default): ``ct.parallel`` with 8 views over 180
degrees (pixel_size 2.1484375 mm) on every slice of the image in HU (a linear operator on HU is
attenuation up to a known affine map), Gaussian noise of 0.5 % of the RMS of the noiseless
sinogram (seed 0).

Cone beam (``--geometry cone``): ``ct.cone`` measures the whole block at once: shape
``[n, S, S]``, voxel_size ``[dz, 2.1484375, 2.1484375]`` mm, ``--views`` (default 16) over a
full turn, flat panel with the operator's defaults (``R = 2 max(n dz, S px)``, ``D = 2 R``,
detector covering the volume) unless ``--source-to-center`` / ``--source-to-detector`` are
given; the same noise rule (0.5 % of the RMS of the noiseless projections, seed 0).  ``dz`` is
the block's slice spacing: ``--dz`` if given; else a ``slice_spacing_mm`` in the stack's .json
sidecar, else the spacing of the series the sidecar names as its ``source`` (when it can be
read), else 3.0 mm, the slice spacing of the ct-pancreas-tcia series behind
``.gpu/ct/*.npy``; for a DICOM folder, the series' own spacing.  A stack whose ``z_indices``
step by k source slices gets k times that.  Methods: FDK (``classical``, reported as ``fdk``),
TV-3D, mbir3d, dds3d (the volume samplers on the true 3D operator, docs/samplers3d.md);
slice-wise ``dds`` needs a per-slice operator and is left out with a note.  Outputs:
quality3d_cone.json / quality3d_cone.png (the parallel run writes quality3d.json / .png), so
both geometries can share one ``--output``.

Methods: FBP (the operator's classical recon); TV-3D (``tv`` with ``dims=3``, isotropic TV
in x, y, z; its ``lam`` is picked from ``--tv-lams`` by whole-volume PSNR against the truth on THIS
block, an oracle choice that favours TV); slice-wise ``dds`` (defaults); ``mbir3d``
(``--mbir-steps``); ``dds3d`` (defaults; ``--dds3d`` key=value overrides).

Metrics: window [-1000, 1000] HU; PSNR and SSIM per 2D slice in the axial (Z), coronal (Y)
and sagittal (X) planes, averaged over the slices of that plane (slices whose reference is
constant inside the window, e.g. rows of air, are left out).  Writes quality3d.json and
quality3d.png (coronal and sagittal views through the centre; ``_cone`` for cone beam; the
geometry is named in the JSON's setup and the figure's title) to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

PIXEL_MM = 2.1484375
DZ_MM = 3.0  # slice spacing of the ct-pancreas-tcia series (the .gpu/ct stacks' sidecars do not record it)
WINDOW = (-1000.0, 1000.0)
DEFAULT_DICOM = "/work/shared/data/ct-pancreas-tcia"
GEOMETRIES = ("parallel", "cone")
DEFAULT_VIEWS = {"parallel": 8, "cone": 16}


# ------------------------------------------------------------------ data and measurements
def load_block(data: str | None, start: int, n: int, crop: int | None) -> np.ndarray:
    """(n, S, S) float32 HU: slices start..start+n of a stack (.npy) or of the DICOM series."""
    if data and data.endswith(".npy"):
        arr = np.load(data, mmap_mode="r")
        if arr.ndim != 3:
            raise SystemExit(f"quality3d: {data} must hold an (N, S, S) stack, got shape {arr.shape}")
        block = np.asarray(arr[start:start + n], dtype=np.float32)
    else:
        from medrecon.priors.data import stack_from_volume

        st = stack_from_volume(data or DEFAULT_DICOM, 256, "ct", None, z=slice(start, start + n))
        block = np.asarray(st.data, dtype=np.float32)
    if block.shape[0] != n:
        raise SystemExit(f"quality3d: asked for {n} slices from {start}, the data have {block.shape[0]}")
    if crop:
        s = block.shape[1]
        o = (s - crop) // 2
        block = block[:, o:o + crop, o:o + crop]
    return np.ascontiguousarray(block)


def _series_spacing(path: str) -> float:
    from medrecon.io import load_volume

    return float(load_volume(path).spacing[0])


def slice_spacing(data: str | None, start: int, n: int, dz: float | None = None) -> tuple[float, str]:
    """Spacing (mm) between the block's slices and where it came from (see the module docstring)."""
    if dz:
        return float(dz), "--dz"
    if not (data and data.endswith(".npy")):
        return _series_spacing(data or DEFAULT_DICOM), "DICOM series"
    side_path = os.path.splitext(data)[0] + ".json"
    side = {}
    if os.path.isfile(side_path):
        with open(side_path) as f:
            side = json.load(f)
    step = 1
    zi = side.get("z_indices") or []
    if len(zi) >= start + n and n > 1:
        steps = set(np.diff(zi[start:start + n]).tolist())
        if len(steps) != 1 or 0 in steps:
            raise SystemExit(f"quality3d: slices {start}..{start + n} of {data} are not equally spaced "
                             f"in their source (z_indices steps {sorted(steps)})")
        step = abs(steps.pop())
    if side.get("slice_spacing_mm"):
        return float(side["slice_spacing_mm"]) * step, f"{side_path} slice_spacing_mm"
    src = side.get("source")
    if src and os.path.exists(src):
        try:
            return _series_spacing(src) * step, f"source series {src}"
        except Exception as exc:  # an unreadable source: fall back to the documented default
            print(f"quality3d: cannot read the slice spacing of {src}: {exc}", file=sys.stderr)
    return DZ_MM * step, f"default {DZ_MM} mm (ct-pancreas-tcia; the stack records none)"


def make_operator(shape, views: int, geom: dict | None = None):
    """``ct.parallel`` (per slice, pixel_size PIXEL_MM) or, with ``geom["name"] == "cone"``,
    ``ct.cone`` on the whole (n, S, S) block (voxel [dz, px, px], full turn, R and D from ``geom``
    or the operator's defaults)."""
    import medrecon

    geom = geom or {"name": "parallel"}
    if geom["name"] == "parallel":
        return medrecon.get_operator("ct.parallel", shape=int(shape[1]), n_views=views, pixel_size=PIXEL_MM)
    if geom["name"] != "cone":
        raise SystemExit(f"quality3d: unknown geometry {geom['name']!r} (choose from {', '.join(GEOMETRIES)})")
    opt = {k: geom[k] for k in ("source_to_center", "source_to_detector") if geom.get(k) is not None}
    return medrecon.get_operator("ct.cone", shape=[int(v) for v in shape], n_views=views,
                                 voxel_size=[float(geom["dz"]), PIXEL_MM, PIXEL_MM], **opt)


def make_problem(x_hu: np.ndarray, device: str, views: int = 8, noise_rel: float = 0.005, seed: int = 0,
                 geom: dict | None = None):
    """Operator, truth tensor, noisy measurements (noise std = noise_rel x RMS of the clean sinogram).

    For a 3D operator (cone beam) the truth is the whole block as one volume, ``(1, n, S, S)``,
    and the measurements ``(1, *range_shape)``; for ``ct.parallel`` both are per slice."""
    import torch

    from medrecon.samplers.admm_tvz import volume_slices

    A = make_operator(x_hu.shape, views, geom).to(device)
    x = torch.from_numpy(x_hu).to(device)
    if volume_slices(A):
        x = x[None]
    with torch.no_grad():
        y0 = A(x)
    sd = noise_rel * float(y0.pow(2).mean().sqrt())
    g = torch.Generator().manual_seed(seed)
    y = y0 + sd * torch.randn(y0.shape, generator=g).to(device)
    return A, x, y, sd


def geometry_setup(A, geom: dict) -> dict:
    """What the JSON records of the measurement geometry."""
    if geom["name"] == "parallel":
        return {"geometry": "parallel", "operator": "ct.parallel", "arc_deg": [0, 180]}
    return {"geometry": "cone", "operator": "ct.cone", "arc_deg": [0, 360],
            "voxel_size_mm": [float(v) for v in A.voxel_size], "dz_from": geom.get("dz_from"),
            "source_to_center_mm": float(A.R), "source_to_detector_mm": float(A.D),
            "det_shape": list(A.det_shape), "det_spacing_mm": [float(v) for v in A.det_spacing]}


# ------------------------------------------------------------------ metrics
def plane_scores(x: np.ndarray, ref: np.ndarray, window=WINDOW) -> dict:
    """Mean per-slice PSNR / SSIM in the axial, coronal and sagittal planes."""
    from medrecon.metrics import psnr_slices, ssim_slices

    out = {}
    for plane, perm in (("axial", (0, 1, 2)), ("coronal", (1, 0, 2)), ("sagittal", (2, 0, 1))):
        xp, rp = np.transpose(x, perm), np.transpose(ref, perm)
        rc = np.clip(rp, *window)
        keep = rc.reshape(rc.shape[0], -1).std(axis=1) > 0
        ps = psnr_slices(xp[keep], rp[keep], window)
        ss = ssim_slices(xp[keep], rp[keep], window) if min(xp.shape[1:]) >= 3 else np.array([np.nan])
        ps = ps[np.isfinite(ps)]
        out[plane] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "slices": int(keep.sum())}
    return out


# ------------------------------------------------------------------ methods
def run_fbp(A, y, **_):
    import torch

    with torch.no_grad():
        return A.classical(y)


def run_tv3d(A, y, x_ref, lams, iters, **_):
    from medrecon.samplers.tv import tune_tv

    best, xb, table = tune_tv(y, A, x_ref, lams, dims=3, iters=iters)
    return xb, {"lam_hu": best, "sweep_psnr_volume": table, "iters": iters}


def run_dds(A, y, prior, steps, seed, net_batch, params=None, progress=None, **_):
    """Slice-wise DDS in batches of net_batch slices (as the engine would run it)."""
    import torch

    from medrecon.samplers import get_sampler, slice_generators

    s = get_sampler("dds", **(params or {}))
    parts = []
    Z = y.shape[0]
    for a in range(0, Z, net_batch):
        idx = list(range(a, min(Z, a + net_batch)))
        parts.append(s.sample(y[a:a + len(idx)], A, prior, steps=steps, generators=slice_generators(seed, idx),
                              progress=progress))
    return torch.cat(parts)


def run_volume(name, A, y, prior, steps, seed, net_batch, params=None, progress=None, **_):
    """A volume sampler; one generator per axial slice (the Z slices of a 3D operator's domain)."""
    from medrecon.samplers import get_sampler, slice_generators
    from medrecon.samplers.admm_tvz import volume_slices

    s = get_sampler(name, net_batch=net_batch, **(params or {}))
    Z = volume_slices(A) or y.shape[0]
    return s.sample(y, A, prior, steps=steps, generators=slice_generators(seed, range(Z)), progress=progress)


def as_block(x, shape) -> np.ndarray:
    """A recon (per-slice (n, S, S) or one volume (1, n, S, S)) as an (n, S, S) float32 array."""
    return x.detach().float().cpu().numpy().reshape(shape)


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _write_json(path, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def parse_kv(items) -> dict:
    out = {}
    for it in items or []:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def geometry_for(a, data: str | None, start: int, n: int) -> dict:
    """The measurement geometry of a block from the command line (cone: with the block's dz)."""
    if a.geometry == "parallel":
        return {"name": "parallel"}
    dz, where = slice_spacing(data, start, n, a.dz)
    return {"name": "cone", "dz": dz, "dz_from": where, "source_to_center": a.source_to_center,
            "source_to_detector": a.source_to_detector}


def tune_dds3d(a, prior, common) -> dict:
    """Pick dds3d's (rho, lam) by mean coronal + sagittal PSNR on a block of other slices."""
    xt = load_block(a.tune_data, a.tune_start, a.tune_slices, a.crop)
    At, _, yt, _ = make_problem(xt, a.device, a.views, 0.005, a.seed + 1,
                                geometry_for(a, a.tune_data, a.tune_start, a.tune_slices))
    rows, best = [], None
    for triple in a.tune_grid.split(","):
        rho, lam, lam_xy = ([float(v) for v in triple.split(":")] + [0.0])[:3]
        params = {**parse_kv(a.dds3d), "rho": rho, "lam": lam, "lam_xy": lam_xy}
        t1 = time.perf_counter()
        xr = as_block(run_volume("dds3d", At, yt, steps=a.steps, params=params, **common), xt.shape)
        sc = plane_scores(xr, xt)
        score = 0.5 * (sc["coronal"]["psnr"] + sc["sagittal"]["psnr"])
        rows.append({"rho": rho, "lam": lam, "lam_xy": lam_xy, "score_db": score, "axial_psnr": sc["axial"]["psnr"],
                     "seconds": round(time.perf_counter() - t1, 2)})
        print(f"tune dds3d rho {rho:g} lam {lam:g} lam_xy {lam_xy:g}: cor/sag {score:.2f} dB, axial {sc['axial']['psnr']:.2f} dB",
              flush=True)
        if best is None or score > best[0]:
            best = (score, {"rho": rho, "lam": lam, "lam_xy": lam_xy})
    return {"data": a.tune_data, "slices": [a.tune_start, a.tune_start + a.tune_slices], "rows": rows,
            "best": best[1]}


# ------------------------------------------------------------------ figure
def figure(path, ref, recons: dict, window=WINDOW, title: str | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["reference"] + list(recons)
    vols = [ref] + [recons[k] for k in recons]
    Z, Y, X = ref.shape
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 2 * 2.2 * max(0.35, Z / Y) + 1.2),
                             squeeze=False)
    for j, (n, v) in enumerate(zip(names, vols, strict=True)):
        axes[0, j].imshow(v[:, Y // 2, :], cmap="gray", vmin=window[0], vmax=window[1], aspect="auto")
        axes[1, j].imshow(v[:, :, X // 2], cmap="gray", vmin=window[0], vmax=window[1], aspect="auto")
        axes[0, j].set_title(n, fontsize=9)
        for i in range(2):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    axes[0, 0].set_ylabel("coronal (z down)", fontsize=8)
    axes[1, 0].set_ylabel("sagittal (z down)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figure_safe(path, ref, recons, title=None) -> None:
    try:
        figure(path, ref, recons, title=title)
    except Exception as exc:  # the numbers matter more than the picture
        print(f"quality3d: figure failed: {exc}", file=sys.stderr)


# ------------------------------------------------------------------ main
def resolve_methods(spec: str, geometry: str) -> list[str]:
    """The method names to run.  The operator's classical recon is ``fbp`` for parallel beam and
    ``fdk`` for cone beam (either name is accepted); slice-wise ``dds`` is dropped for cone beam."""
    classical = "fdk" if geometry == "cone" else "fbp"
    out = []
    for m in (m.strip() for m in spec.split(",")):
        if not m:
            continue
        if m in ("fbp", "fdk"):
            m = classical
        if m == "dds" and geometry == "cone":
            print("quality3d: note: slice-wise dds needs a per-slice operator; left out for cone beam "
                  "(dds3d / mbir3d run on the 3D operator)", flush=True)
            continue
        if m not in out:
            out.append(m)
    return out


def run_method(m, A, y, x, a, common, tuned):
    """Reconstruct with method ``m``: (recon tensor, extra JSON fields), or None to skip it."""
    if m in ("fbp", "fdk"):
        return run_fbp(A, y), {}
    if m == "tv3d":
        return run_tv3d(A, y, x, [float(v) for v in a.tv_lams.split(",")], a.tv_iters)
    if m == "dds":
        return run_dds(A, y, steps=a.steps, **common), {}
    if m == "mbir3d":
        pm = parse_kv(a.mbir3d)
        return run_volume("mbir3d", A, y, steps=a.mbir_steps, params=pm, **common), \
            {"params": pm, "steps": a.mbir_steps}
    if m in ("dds3d", "dds3d_tuned"):
        if m == "dds3d_tuned" and not tuned:
            return None
        pd = {**(tuned["best"] if m == "dds3d_tuned" else {}), **parse_kv(a.dds3d)}
        return run_volume("dds3d", A, y, steps=a.steps, params=pd, **common), {"params": pd, "steps": a.steps}
    raise SystemExit(f"quality3d: unknown method {m!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="preprocessed (N, S, S) HU stack .npy, or a DICOM folder")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--geometry", choices=GEOMETRIES, default="parallel",
                    help="parallel: ct.parallel per slice (default); cone: ct.cone on the whole block")
    ap.add_argument("--views", type=int, default=None,
                    help="views: default 8 over 180 degrees (parallel), 16 over 360 degrees (cone)")
    ap.add_argument("--dz", type=float, default=None,
                    help=f"cone: slice spacing in mm (default: from the stack's sidecar / source series, "
                         f"else {DZ_MM}, the ct-pancreas-tcia series)")
    ap.add_argument("--source-to-center", type=float, default=None, help="cone: R in mm (default: ct.cone's)")
    ap.add_argument("--source-to-detector", type=float, default=None, help="cone: D in mm (default: ct.cone's)")
    ap.add_argument("--prior", default="ct-default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=50, help="DDS and dds3d steps")
    ap.add_argument("--mbir-steps", type=int, default=500)
    ap.add_argument("--net-batch", type=int, default=32)
    ap.add_argument("--tv-lams", default="2,5,10,20,40", help="TV-3D lam sweep (HU)")
    ap.add_argument("--tv-iters", type=int, default=300)
    ap.add_argument("--dds3d", nargs="*", default=[], help="dds3d parameter overrides key=value")
    ap.add_argument("--mbir3d", nargs="*", default=[], help="mbir3d parameter overrides key=value")
    ap.add_argument("--methods", default="fbp,dds,dds3d,dds3d_tuned,tv3d,mbir3d",
                    help="dds3d: defaults (TV along z only); dds3d_tuned: rho, lam, lam_xy from --tune-data; "
                         "fbp (= fdk for cone beam); dds is left out for cone beam")
    ap.add_argument("--tune-data", default=None,
                    help="stack .npy of OTHER slices (e.g. .gpu/ct/train.npy): pick dds3d's rho and lam there first")
    ap.add_argument("--tune-start", type=int, default=0)
    ap.add_argument("--tune-slices", type=int, default=16)
    ap.add_argument("--tune-grid", default="0.03:0.003:0,0.03:0.001:0,0.01:0.001:0,0.03:0.003:0.001,"
                    "0.03:0.003:0.002,0.03:0.003:0.004",
                    help="dds3d rho:lam:lam_xy triples to try on the tuning block (dds3d_tuned uses the best)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-amp", action="store_true", help="fp32 network on CUDA (default: bf16 autocast)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: 4 slices, 64^2 crop, 3 steps")
    ap.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"), help="folder for quality3d[_cone].json / .png")
    a = ap.parse_args(argv)
    if a.views is None:
        a.views = DEFAULT_VIEWS[a.geometry]
    if a.quick:
        a.slices, a.crop = min(a.slices, 4), a.crop or 64
        a.steps, a.mbir_steps, a.tv_iters, a.tv_lams = 3, 3, 20, "5,20"
        if a.data is None and os.path.exists(".gpu/ct/holdout.npy"):
            a.data = ".gpu/ct/holdout.npy"

    import torch

    from medrecon.priors import load_prior

    if a.threads:
        torch.set_num_threads(a.threads)
    os.makedirs(a.output, exist_ok=True)
    stem = "quality3d" if a.geometry == "parallel" else f"quality3d_{a.geometry}"
    json_path, png_path = (os.path.join(a.output, f"{stem}.{ext}") for ext in ("json", "png"))
    t0 = time.perf_counter()
    methods = resolve_methods(a.methods, a.geometry)
    x_hu = load_block(a.data, a.start, a.slices, a.crop)
    geom = geometry_for(a, a.data, a.start, a.slices)
    A, x, y, sd = make_problem(x_hu, a.device, a.views, 0.005, a.seed, geom)
    setup = geometry_setup(A, geom)
    title = f"{setup['operator']}, {a.views} views over {setup['arc_deg'][1]} deg, {x_hu.shape[0]} slices"
    print(f"quality3d: {title}, range {tuple(A.range_shape)}"
          + (f", dz {geom['dz']:g} mm ({geom['dz_from']}), R {A.R:g} mm, D {A.D:g} mm" if geom["name"] == "cone"
             else ""), flush=True)
    prior = load_prior(a.prior, device=a.device)
    prior.autocast = not a.no_amp
    common = dict(prior=prior, seed=a.seed, net_batch=a.net_batch)
    tuned = None
    if a.tune_data:
        tuned = tune_dds3d(a, prior, common)
    res = {"setup": {"data": a.data or DEFAULT_DICOM, "slices": [a.start, a.start + a.slices],
                     "shape": list(x_hu.shape), "views": a.views, "noise": "0.5% of sinogram RMS",
                     "noise_std": sd, "pixel_size_mm": PIXEL_MM, "window_hu": list(WINDOW), "prior": a.prior,
                     "steps": a.steps, "mbir_steps": a.mbir_steps, "device": a.device, "amp_bf16": bool(str(a.device).startswith("cuda") and not a.no_amp),
                     "card": torch.cuda.get_device_name() if str(a.device).startswith("cuda") else "cpu",
                     "torch": torch.__version__, **setup},
           "methods": {}}
    if tuned:
        res["dds3d_tuning"] = tuned
    recons = {}
    for i, m in enumerate(methods):
        if i == len(methods) - 1 and recons:  # the picture so far, in case the last (slowest) method times out
            _figure_safe(png_path, x_hu, recons, title)
        _sync(a.device)
        t1 = time.perf_counter()
        out = run_method(m, A, y, x, a, common, tuned)
        if out is None:
            continue
        _sync(a.device)
        sec = time.perf_counter() - t1
        xr = as_block(out[0], x_hu.shape)
        recons[m] = xr
        sc = plane_scores(xr, x_hu)
        res["methods"][m] = {"seconds": round(sec, 3), **sc, **out[1]}
        _write_json(json_path, res)  # a timeout keeps what is done
        print(f"{m:8s} {sec:8.1f} s  " + "  ".join(f"{p} {sc[p]['psnr']:.2f} dB / {sc[p]['ssim']:.3f}"
                                                   for p in ("axial", "coronal", "sagittal")), flush=True)
    res["seconds_total"] = round(time.perf_counter() - t0, 2)
    print(f"\n{title}\n| method | axial PSNR / SSIM | coronal PSNR / SSIM | sagittal PSNR / SSIM | s |")
    print("|---|---|---|---|---|")
    for m, r in res["methods"].items():
        print(f"| {m} | " + " | ".join(f"{r[p]['psnr']:.2f} / {r[p]['ssim']:.3f}"
                                     for p in ("axial", "coronal", "sagittal")) + f" | {r['seconds']:.1f} |")
    for m3 in ("dds3d", "dds3d_tuned"):
        for base in ("dds", "tv3d"):
            if base in res["methods"] and m3 in res["methods"]:
                d = {p: res["methods"][m3][p]["psnr"] - res["methods"][base][p]["psnr"]
                     for p in ("axial", "coronal", "sagittal")}
                res[f"{m3}_minus_{base}_psnr"] = d
                print(f"{m3} - {base} PSNR (dB): " + ", ".join(f"{k} {v:+.2f}" for k, v in d.items()))
    _write_json(json_path, res)
    _figure_safe(png_path, x_hu, recons, title)
    print(f"wrote {json_path} and {os.path.basename(png_path)} ({res['seconds_total']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
