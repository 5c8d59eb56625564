"""Region-based evaluation of ultrasound images: gCNR per frame, KS before / after, speckle size, B-mode figure.

Registered as the metric set ``us.regions`` (entry-point group ``medrecon.metrics``, :class:`RegionMetrics`):
``medrecon evaluate --target/--background/--regions/--bmode`` finds it through the registry.

:func:`evaluate_regions` scores a reconstruction (``after``: e.g. a dehazed image) and,
when given, a classical / hazy input (``before``) on target and background regions,
without a ground truth:

* **gCNR** (:func:`medrecon_us.metrics.gcnr`, ``sqrt(n)`` shared bins for ``n`` pixels in the
  smaller region, 8 .. 256) between the target and the
  background of each region pair, on the **envelope** of every frame (then the mean over
  frames);
* **KS** (:func:`medrecon_us.metrics.ks_statistic`): the two-sample Kolmogorov-Smirnov
  statistic between the ``before`` and ``after`` values inside the target, and inside the
  background (signal preservation), per frame and mean.  Each frame's envelope is divided
  by its maximum first, so that a global gain between the two images does not count as
  a change (this is the B-mode in dB before clipping; KS is invariant to the log);
* **speckle size** (:func:`medrecon_us.metrics.speckle_size`): axial and lateral FWHM (mm)
  of the autocorrelation of the envelope inside each background region (mean over frames).

Images are :class:`medrecon.Volume` objects (or NIfTI paths; a measurement ``.h5`` as
``classical`` is reconstructed with the classical sampler) shaped ``(frames, depth,
lateral)`` with an affine in mm: the pixel spacing and the mm position of pixel [0, 0]
are read from it (depth along the volume's row axis ``j``, lateral along its column axis
``i``; the ``us.rf`` importer writes depth from the probe face and lateral from the array
centre).  By default the images are RF (the envelope is taken along depth,
:func:`medrecon_us.bmode.envelope`); ``image="envelope"`` takes them as envelopes already.

Regions
-------
A region is ``(z, x, r)`` -- a disc of radius ``r`` around depth ``z`` and lateral ``x`` --
or ``(z, x, r_in, r_out)`` -- an annulus, the usual background around a circular target.
``units="mm"`` (default) or ``"px"`` (row, column, radius in pixels).  A region whose
centre lies outside the image, or that covers no pixel, is an :class:`InputError`.

Example::

    >>> import numpy as np, medrecon
    >>> rng = np.random.default_rng(0)
    >>> rf = rng.standard_normal((1, 64, 64)); rf[:, 20:30, 20:30] *= 8
    >>> vol = medrecon.Volume(rf, np.diag([0.1, 0.1, 1.0, 1.0]))
    >>> res = evaluate_regions(vol, targets=[(2.5, 2.5, 0.4)], backgrounds=[(4.5, 4.5, 1.0)])
    >>> res["after"]["gcnr"][0]["mean"] > 0.8
    True
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError

__all__ = ["parse_region", "volume_grid", "region_mask", "evaluate_regions", "read_regions_file", "RegionMetrics"]

UNITS = ("mm", "px")
IMAGE_KINDS = ("rf", "envelope")


def parse_region(spec, what: str = "region") -> tuple[float, ...]:
    """``"z,x,r"`` / ``"z,x,r_in,r_out"`` (text) or a 3/4-number sequence -> a tuple of floats."""
    if isinstance(spec, str):
        parts = [p for p in spec.replace(" ", "").split(",") if p]
    elif isinstance(spec, dict):
        c = spec.get("center")
        parts = [*(c or []), *([spec["radius"]] if "radius" in spec else spec.get("radii", []))]
    else:
        parts = list(spec) if isinstance(spec, (list, tuple, np.ndarray)) else [spec]
    try:
        vals = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) not in (3, 4) or not all(math.isfinite(v) for v in vals):
        raise InputError(f"a {what} is z,x,r (a disc) or z,x,r_in,r_out (an annulus), got {spec!r}")
    if vals[2] < 0 or vals[-1] <= 0 or (len(vals) == 4 and not vals[2] < vals[3]):
        raise InputError(f"a {what} needs radius > 0 (and r_in < r_out for an annulus), got {spec!r}")
    return vals


def read_regions_file(path) -> tuple[list, list, str | None]:
    """``(targets, backgrounds, units)`` from a JSON file.

    Format: ``{"units": "mm", "targets": [[z, x, r], ...], "backgrounds": [[z, x, r_in, r_out], ...]}``
    (``units`` optional; each region also as ``{"center": [z, x], "radius": r}`` or
    ``{"center": [z, x], "radii": [r_in, r_out]}``).
    """
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"no such regions file: {str(p)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"the regions file {str(p)!r} is not valid JSON ({exc})") from None
    if not isinstance(d, dict) or not isinstance(d.get("targets"), list):
        raise InputError(f"the regions file {str(p)!r} needs a 'targets' list (and 'backgrounds')")
    backs = d.get("backgrounds", [])
    if not isinstance(backs, list):
        raise InputError(f"'backgrounds' in {str(p)!r} must be a list")
    return list(d["targets"]), backs, d.get("units")


def volume_grid(vol) -> tuple[tuple[float, float], tuple[float, float]]:
    """``((dz, dx), (z0, x0))``: row / column spacing (mm) and the position (mm) of pixel [0, 0]
    along the row and column axes of the volume's affine."""
    aff = np.asarray(vol.affine, dtype=np.float64)
    col_i, row_j = aff[:3, 0], aff[:3, 1]
    dx, dz = float(np.linalg.norm(col_i)), float(np.linalg.norm(row_j))
    return (dz, dx), (float(aff[:3, 3] @ row_j / dz), float(aff[:3, 3] @ col_i / dx))


def region_mask(region, shape, spacing=None, origin=(0.0, 0.0)) -> np.ndarray:
    """Boolean mask (nz, nx) of a disc or annulus region; mm when ``spacing`` is given, else pixels."""
    from medrecon_us.metrics import annulus_mask, circle_mask

    nz, nx = shape
    z, x = region[0], region[1]
    dz, dx = (1.0, 1.0) if spacing is None else spacing
    z0, x0 = (0.0, 0.0) if spacing is None else origin
    j, i = (z - z0) / dz, (x - x0) / dx
    if not (-0.5 <= j <= nz - 0.5 and -0.5 <= i <= nx - 0.5):
        unit = "px" if spacing is None else "mm"
        zr = (z0 - dz / 2, z0 + (nz - 0.5) * dz) if spacing is not None else (-0.5, nz - 0.5)
        xr = (x0 - dx / 2, x0 + (nx - 0.5) * dx) if spacing is not None else (-0.5, nx - 0.5)
        raise InputError(f"the region centred at depth {z:g}, lateral {x:g} {unit} lies outside the image "
                         f"(depth {zr[0]:.3g}..{zr[1]:.3g}, lateral {xr[0]:.3g}..{xr[1]:.3g} {unit})")
    kw = {} if spacing is None else {"spacing": spacing, "origin": origin}
    if len(region) == 3:
        return circle_mask(shape, (z, x), region[2], **kw)
    return annulus_mask(shape, (z, x), region[2], region[3], **kw)


def _envelopes(vol, image: str) -> np.ndarray:
    from medrecon_us.bmode import envelope

    d = np.asarray(vol.data, dtype=np.float64)
    return envelope(d, axis=-2) if image == "rf" else np.abs(d)


def _pairs(targets, backgrounds) -> list[tuple[tuple, tuple]]:
    t = [parse_region(r, "target") for r in targets]
    b = [parse_region(r, "background") for r in backgrounds]
    if not t and not b:
        return []  # no regions: geometry (and the figure) only
    if not t:
        raise InputError("give a target region for the backgrounds (--target z,x,r or --regions FILE)")
    if not b:
        raise InputError("give a background region for the targets (--background z,x,r or z,x,r_in,r_out)")
    if len(b) == 1:
        b = b * len(t)
    if len(b) != len(t):
        raise InputError(f"{len(t)} targets and {len(b)} backgrounds: give one background, or one per target")
    return list(zip(t, b, strict=True))


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def evaluate_regions(recon, *, targets=(), backgrounds=(), classical=None, haze=None, reference=None,
                     units: str = "mm", dynamic_range_db: float = 60.0, image: str = "rf", frame: int = 0,
                     json_path=None, png=None, overwrite: bool = True) -> dict[str, Any]:
    """gCNR, KS and speckle size of ``recon`` (and ``classical``) on target / background regions.

    Parameters
    ----------
    recon : Volume or path
        The reconstruction ("after"), ``(frames, depth, lateral)``.
    targets, backgrounds : lists of regions
        ``(z, x, r)`` discs or ``(z, x, r_in, r_out)`` annuli (text ``"z,x,r"`` too); target
        ``k`` pairs with background ``k``, or every target with a single background.  No
        regions at all: only the figure (and the reference comparison) is made.
    classical : Volume or path, optional
        The classical / hazy input ("before"); a measurement ``.h5`` is reconstructed with
        the classical sampler.  Needed for the KS statistics.
    haze : Volume or path, optional
        A haze estimate, shown in the figure.
    reference : Volume or path, optional
        A ground truth: PSNR / SSIM of the B-mode images (dB, window ``[-DR, 0]``) are added.
    units : "mm" or "px"
        Units of the regions.
    dynamic_range_db : float
        B-mode dynamic range of the figure and of the reference comparison.
    image : "rf" or "envelope"
        What the volumes hold (RF: the envelope is taken along depth).
    frame : int
        The frame the figure shows.
    json_path, png : path, optional
        Write the result as JSON / the B-mode figure (:func:`medrecon_us.bmode_figure.bmode_figure`).

    Returns a JSON-able dict: ``regions`` (each pair with its pixel counts), ``after`` and
    ``before`` (``gcnr``: per pair ``{"per_frame", "mean"}``; ``speckle_mm``: per pair
    ``{"axial", "lateral"}``), ``ks`` (per pair, ``target`` / ``background`` ``{"per_frame",
    "mean"}``), ``spacing_mm``, ``frames``, ``dynamic_range_db``, definitions.
    """
    from medrecon.evaluation import as_volume
    from medrecon.metrics import compare
    from medrecon_us.bmode import _check_dr, log_compress
    from medrecon_us.metrics import gcnr, ks_statistic, speckle_size

    if units not in UNITS:
        raise InputError(f"region units must be mm or px, got {units!r}")
    if image not in IMAGE_KINDS:
        raise InputError(f"image must be rf or envelope, got {image!r}")
    dr = _check_dr(dynamic_range_db)
    pairs = _pairs(targets, backgrounds)
    after_v = as_volume(recon, "reconstruction")
    vols = {"after": after_v}
    for name, obj, what in (("before", classical, "classical reconstruction"), ("haze", haze, "haze estimate"),
                            ("reference", reference, "reference")):
        if obj is not None:
            v = as_volume(obj, what)
            if v.shape != after_v.shape:
                raise InputError(f"the {what} shape {v.shape} differs from the reconstruction shape {after_v.shape}")
            vols[name] = v
    n_frames, nz, nx = after_v.shape
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not -n_frames <= frame < n_frames:
        raise InputError(f"frame must be an index in [0, {n_frames}), got {frame!r}")
    spacing, origin = volume_grid(after_v)
    grid = {"spacing": spacing, "origin": origin} if units == "mm" else {}
    masks = [(region_mask(t, (nz, nx), **grid), region_mask(b, (nz, nx), **grid)) for t, b in pairs]
    env = {k: _envelopes(v, image) for k, v in vols.items()}
    out: dict[str, Any] = {
        "kind": "ultrasound regions",
        "shape": list(after_v.shape),
        "frames": n_frames,
        "spacing_mm": list(spacing),
        "origin_mm": list(origin),
        "units": units,
        "image": image,
        "dynamic_range_db": dr,
        "regions": [{"name": f"pair {k + 1}", "target": list(t), "background": list(b),
                     "target_pixels": int(mt.sum()), "background_pixels": int(mb.sum())}
                    for k, ((t, b), (mt, mb)) in enumerate(zip(pairs, masks, strict=True))],
        "gcnr_definition": "1 - overlap of the target and background envelope histograms (sqrt(n) shared "
                           "bins, n the smaller region's pixel count, 8..256), per frame",
        "ks_definition": "two-sample Kolmogorov-Smirnov statistic between before and after inside a region, "
                         "envelopes divided by each frame's maximum",
        "speckle_definition": "FWHM (mm) of the envelope autocorrelation inside the background, axial and lateral",
    }
    for name in ("after", "before"):
        if name not in env:
            continue
        e = env[name]
        g, sp = [], []
        for mt, mb in masks:
            per = [gcnr(e[f], mt, mb) for f in range(n_frames)]
            g.append({"per_frame": per, "mean": float(np.mean(per))})
            sizes = np.array([speckle_size(e[f], spacing, mask=mb) for f in range(n_frames)])
            sp.append({"axial": _finite(float(np.mean(sizes[:, 0]))),
                       "lateral": _finite(float(np.mean(sizes[:, 1])))})
        out[name] = {"gcnr": g, "speckle_mm": sp}
    if "before" in env:
        norm = {k: env[k] / np.maximum(env[k].max(axis=(1, 2), keepdims=True), np.finfo(float).tiny)
                for k in ("before", "after")}
        ks = []
        for mt, mb in masks:
            entry = {}
            for rname, m in (("target", mt), ("background", mb)):
                per = [ks_statistic(norm["before"][f][m], norm["after"][f][m]) for f in range(n_frames)]
                entry[rname] = {"per_frame": per, "mean": float(np.mean(per))}
            ks.append(entry)
        out["ks"] = ks
    if "reference" in env:
        b_ref = log_compress(env["reference"], dr)
        out["reference_comparison"] = {"on": f"B-mode dB, window [-{dr:g}, 0]",
                                       **compare(log_compress(env["after"], dr), b_ref, (-dr, 0.0))}
        if "before" in env:
            out["reference_comparison"]["before"] = compare(log_compress(env["before"], dr), b_ref, (-dr, 0.0))
    if png is not None:
        from medrecon_us.bmode_figure import bmode_figure

        panels = {"before": env.get("before"), "after": env["after"], "haze estimate": env.get("haze")}
        panels = {k: v[frame] for k, v in panels.items() if v is not None}
        titles = {"after": _title(out, "after"), "before": _title(out, "before")}
        bmode_figure(panels, spacing=spacing, origin=origin, dynamic_range_db=dr,
                     regions=[(t, b) for t, b in pairs], units=units, titles=titles, path=png,
                     suptitle=f"B-mode, dynamic range {dr:g} dB\n(0 dB = each panel's maximum; "
                              f"frame {frame % n_frames} of {n_frames})")
        out["png"] = str(png)
    if json_path is not None:
        from medrecon.io.atomic import atomic_file

        with atomic_file(Path(json_path), overwrite=overwrite) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=2) + "\n")
    return out


def _title(res: dict, name: str) -> str:
    if name not in res:
        return name
    g = ", ".join(f"{p['mean']:.3f}" for p in res[name]["gcnr"])
    return f"{name}\ngCNR {g}"


class RegionMetrics:
    """The ultrasound metric set ``us.regions`` (entry-point group ``medrecon.metrics``).

    ``medrecon evaluate`` with regions calls :meth:`evaluate_regions` (:func:`evaluate_regions`)
    and :meth:`read_regions_file`; :func:`medrecon.figures.reconstruction_figure` shows volumes
    of modality ``US`` with :meth:`display` (RF slices as a 60 dB B-mode).
    """

    modality = "US"
    evaluate_regions = staticmethod(evaluate_regions)
    read_regions_file = staticmethod(read_regions_file)

    @staticmethod
    def display(panels: dict, *, std=None, spacing=(1.0, 1.0), origin=None, affine=None, title: str = "",
                path=None, dpi: int = 110) -> list:
        """RF slices ``panels`` (name -> (nz, nx)) as B-mode, 60 dB, ``std`` of the draws as one more
        panel shown linearly (RF units, its own colour bar); returns the panel names drawn.

        The axes are depth and lateral position in mm, the same as ``medrecon evaluate --png``:
        ``origin`` (z0, x0) is the mm position of pixel [0, 0], or it is read from the volume's
        ``affine`` (:func:`volume_grid`: row axis = depth, column axis = lateral, as the importer
        writes it); with neither, pixel [0, 0] is put at (0, 0) mm."""
        from medrecon_us.bmode_figure import bmode_figure

        if origin is None and affine is not None:
            from types import SimpleNamespace

            spacing, origin = volume_grid(SimpleNamespace(affine=affine))
        panels = {k: v for k, v in panels.items() if v is not None}
        linear = ()
        if std is not None:
            panels["std of the draws"] = std
            linear = ("std of the draws",)
        bmode_figure(panels, spacing=spacing, origin=origin if origin is not None else (0.0, 0.0), image="rf",
                     suptitle=title + ", B-mode 60 dB", path=path, dpi=dpi, linear=linear,
                     linear_label="std of the draws (RF units)")
        return list(panels)
