"""Image quality metrics: PSNR, SSIM (per slice and per volume), gCNR, and :func:`evaluate`.

Conventions
-----------

Every metric compares a reconstruction ``x`` with a reference ``r`` on a stated
intensity **window** ``[lo, hi]`` in physical units:

* both arrays are clipped to the window, and the **data range** is the window
  width ``L = hi - lo``;
* ``PSNR = 10 log10(L^2 / MSE)`` with ``MSE = mean((x - r)^2)`` (dB; ``inf`` when
  ``MSE = 0``);
* ``SSIM`` is :func:`skimage.metrics.structural_similarity` with ``data_range=L``
  on each 2D slice (7x7 uniform window, or the largest odd window that fits a
  smaller image); the volume SSIM is the mean of the slice SSIMs (axial SSIM,
  as reported in the diffusion-reconstruction literature);
* the volume PSNR is computed from the MSE of the whole volume (not the mean of
  slice PSNRs).

Default windows (:func:`default_window`): CT in HU (units ``HU``, or modality
``CT`` with no units and air at about -1000) ``[-1000, 1000]`` HU, air to dense
bone; anything else (MR, arbitrary units, CT in attenuation per mm) the
reference's own ``[min, max]``.

Example::

    >>> import numpy as np
    >>> r = np.zeros((8, 8)); x = r + 10.0          # MSE = 100
    >>> round(psnr(x, r, window=(-1000, 1000)), 3)   # 10 log10(2000^2 / 100)
    46.021
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError

__all__ = [
    "CT_WINDOW",
    "default_window",
    "psnr",
    "ssim",
    "psnr_slices",
    "ssim_slices",
    "gcnr",
    "compare",
    "evaluate",
]

#: Default CT evaluation window in HU (air .. dense bone).
CT_WINDOW = (-1000.0, 1000.0)


def _arrays(x, ref) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(getattr(x, "data", x), dtype=np.float64)
    ref = np.asarray(getattr(ref, "data", ref), dtype=np.float64)
    if x.shape != ref.shape:
        raise InputError(f"reconstruction shape {x.shape} differs from reference shape {ref.shape}")
    if x.size == 0:
        raise InputError("cannot compute a metric on empty arrays")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(ref))):
        raise InputError("the images hold NaN or infinite values; metrics are undefined")
    return x, ref


def _window(window, ref: np.ndarray) -> tuple[float, float]:
    if window is None:
        lo, hi = float(ref.min()), float(ref.max())
        if hi <= lo:
            hi = lo + 1.0
        return lo, hi
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise InputError(f"a window is two numbers lo, hi; got {window!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InputError(f"a window needs finite lo < hi; got {lo}, {hi}")
    return lo, hi


def default_window(reference, meta: dict | None = None) -> tuple[float, float]:
    """The window metrics use when none is given: ``CT_WINDOW`` for CT / HU data, else the
    reference's ``[min, max]``.  ``reference`` is a Volume (its meta is read unless ``meta``
    is given) or an array."""
    if meta is None:
        meta = getattr(reference, "meta", None) or {}
    modality = str(meta.get("modality") or "").upper()
    units = str(meta.get("units") or "").upper()
    data = np.asarray(getattr(reference, "data", reference), dtype=np.float64)
    if units == "HU":
        return CT_WINDOW
    # CT without stated units: HU if it looks like HU (air at about -1000), else e.g. attenuation / mm
    if modality == "CT" and not units and data.size and float(data.min()) < -500:
        return CT_WINDOW
    return _window(None, data)


def _clip(x, ref, window):
    x, ref = _arrays(x, ref)
    lo, hi = _window(window, ref)
    return np.clip(x, lo, hi), np.clip(ref, lo, hi), hi - lo


def psnr(x, ref, window=None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(L^2 / MSE)`` on ``window`` (see module doc).

    ``window=None`` uses the reference's ``[min, max]``.  Returns ``inf`` for identical images.
    """
    xc, rc, L = _clip(x, ref, window)
    mse = float(np.mean((xc - rc) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(L * L / mse)


def _ssim2d(x: np.ndarray, r: np.ndarray, L: float) -> float:
    from skimage.metrics import structural_similarity

    side = min(x.shape)
    win = min(7, side if side % 2 == 1 else side - 1)
    if win < 3:
        raise InputError(f"SSIM needs images of at least 3x3 pixels, got {x.shape}")
    return float(structural_similarity(r, x, data_range=L, win_size=win))


def _as3d(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise InputError(f"expected a 2D slice or a (Z, Y, X) volume, got shape {a.shape}")
    return a


def ssim_slices(x, ref, window=None) -> np.ndarray:
    """SSIM of each axial slice (axis 0) with ``data_range`` = window width; shape (Z,)."""
    xc, rc, L = _clip(x, ref, window)
    xc, rc = _as3d(xc), _as3d(rc)
    return np.array([_ssim2d(a, b, L) for a, b in zip(xc, rc, strict=True)])


def ssim(x, ref, window=None) -> float:
    """Structural similarity on ``window``: the mean of the per-slice 2D SSIMs (a 2D image is one slice)."""
    return float(np.mean(ssim_slices(x, ref, window)))


def psnr_slices(x, ref, window=None) -> np.ndarray:
    """PSNR of each axial slice (axis 0) in dB, shape (Z,)."""
    xc, rc, L = _clip(x, ref, window)
    xc, rc = _as3d(xc), _as3d(rc)
    mse = np.mean((xc - rc) ** 2, axis=(1, 2))
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10.0 * np.log10(L * L / np.maximum(mse, 1e-300)))


def gcnr(region_a, region_b, bins: int | np.ndarray = 256) -> float:
    """Generalised contrast-to-noise ratio: ``1 - sum_k min(p_a(k), p_b(k))``.

    ``p_a``, ``p_b`` are the normalised histograms of the two regions' values on
    common bins spanning both (``bins`` an edge count or explicit edges).  gCNR is 0
    for identical distributions and 1 for non-overlapping ones; it does not
    change under monotonic intensity transforms (Rodriguez-Molares et al., 2020).

    >>> round(gcnr(np.zeros(100), np.ones(100)), 3)
    1.0
    """
    a = np.asarray(region_a, dtype=np.float64).ravel()
    b = np.asarray(region_b, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise InputError("gcnr needs two non-empty regions")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("gcnr regions hold NaN or infinite values")
    if np.isscalar(bins) or np.ndim(bins) == 0:
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        if hi <= lo:
            return 0.0
        edges = np.linspace(lo, hi, int(bins) + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
    pa, _ = np.histogram(a, bins=edges)
    pb, _ = np.histogram(b, bins=edges)
    pa = pa / max(pa.sum(), 1)
    pb = pb / max(pb.sum(), 1)
    return float(1.0 - np.minimum(pa, pb).sum())


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def compare(x, ref, window) -> dict[str, Any]:
    """PSNR and SSIM overall and per slice, as a JSON-able dict (``inf`` is written as null)."""
    lo, hi = _window(window, _arrays(x, ref)[1])
    ps = psnr_slices(x, ref, (lo, hi))
    ss = ssim_slices(x, ref, (lo, hi))
    return {
        "psnr": _finite_or_none(psnr(x, ref, (lo, hi))),
        "ssim": float(np.mean(ss)),
        "psnr_per_slice": [_finite_or_none(v) for v in ps],
        "ssim_per_slice": [float(v) for v in ss],
    }


def evaluate(recon, reference, *, window=None, classical=None, json_path=None, png=None,
             overwrite: bool = True) -> dict[str, Any]:
    """Compare a reconstruction with a reference volume: PSNR and SSIM per slice and overall.

    Parameters
    ----------
    recon, reference : Volume, array, or path (NIfTI / DICOM folder)
    window : (lo, hi), optional
        Intensity window in physical units; default :func:`default_window` of the reference.
    classical : Volume, array or path, optional
        A classical reconstruction (e.g. FBP) scored the same way and shown in the figure.
        A measurement file (``.h5``) is reconstructed with the ``classical`` sampler.
    json_path : path, optional
        Write the result dict as JSON (atomically).
    png : path, optional
        Write the comparison figure (:func:`medrecon.figures.comparison_figure`).

    Returns
    -------
    dict with ``window``, ``data_range``, ``psnr`` (dB), ``ssim``, ``psnr_per_slice``,
    ``ssim_per_slice``, ``shape``, and ``classical`` (the same metrics) when given.
    """
    rec_v = _volume(recon, "reconstruction")
    ref_v = _volume(reference, "reference")
    if rec_v.shape != ref_v.shape:
        raise InputError(f"reconstruction shape {rec_v.shape} differs from reference shape {ref_v.shape}")
    if window is None:
        # the reference's modality / units decide; a bare NIfTI reference borrows the reconstruction's
        meta = ref_v.meta or {}
        if not (meta.get("modality") or meta.get("units")):
            meta = rec_v.meta or {}
        lo, hi = default_window(ref_v, meta=meta)
        source = "default"
    else:
        lo, hi = _window(window, ref_v.data)
        source = "given"
    out: dict[str, Any] = {
        "window": [lo, hi],
        "window_source": source,
        "data_range": hi - lo,
        "shape": list(rec_v.shape),
        "ssim_definition": "mean over axial slices of 2D SSIM (skimage, data_range = window width)",
        "psnr_definition": "10 log10(range^2 / MSE over the whole volume), values clipped to the window",
    }
    out.update(compare(rec_v.data, ref_v.data, (lo, hi)))
    cl_v = None
    if classical is not None:
        cl_v = _volume(classical, "classical reconstruction")
        if cl_v.shape != ref_v.shape:
            raise InputError(f"classical reconstruction shape {cl_v.shape} differs from reference shape {ref_v.shape}")
        out["classical"] = compare(cl_v.data, ref_v.data, (lo, hi))
    if png is not None:
        from medrecon.figures import comparison_figure

        comparison_figure(ref_v, rec_v, classical=cl_v, window=(lo, hi), path=png, metrics=out)
        out["png"] = str(png)
    if json_path is not None:
        from medrecon.io.atomic import atomic_file

        with atomic_file(Path(json_path), overwrite=overwrite) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=2) + "\n")
    return out


def _volume(obj, what: str):
    from medrecon.volume import Volume

    if isinstance(obj, Volume):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if p.name.lower().endswith((".h5", ".hdf5")):
            from medrecon.engine import reconstruct

            return reconstruct(str(p), sampler="classical", progress=False)
        from medrecon.volume import load_volume

        return load_volume(p)
    arr = np.asarray(obj, dtype=np.float32)
    return Volume(arr)
