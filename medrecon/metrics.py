"""Image quality metrics: PSNR (NumPy arrays and torch tensors), SSIM (per slice and per volume),
and :func:`compare` (both for one window); :func:`medrecon.evaluation.evaluate` scores a
reconstruction file against a reference with them (JSON and figure).

Modality-specific metrics (e.g. ultrasound gCNR, KS statistic, speckle size) live in their
plugins and are found through the registry (entry-point group ``medrecon.metrics``,
:func:`medrecon.registry.find_metrics`).

Conventions
-----------

Every metric compares a reconstruction ``x`` with a reference ``r`` on a stated
intensity **window** ``[lo, hi]`` in physical units (:mod:`medrecon.intensity_window`):

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

``clip=False`` (PSNR) keeps the data range ``L`` but does not clip: the convention of
iterative-method tuning against a ground truth (``L`` = the reference's peak-to-peak range)
and of the network range ``[-1, 1]`` (``window=(-1, 1)``, ``L = 2``).  Complex values are
compared as magnitudes.

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

import math
from typing import Any

import numpy as np

from medrecon.errors import InputError
from medrecon.intensity_window import CT_WINDOW, default_window, parse_window

__all__ = [
    "CT_WINDOW",
    "default_window",
    "psnr",
    "ssim",
    "psnr_slices",
    "ssim_slices",
    "compare",
]


def _is_torch(a) -> bool:
    return type(a).__module__.split(".")[0] == "torch"


def _arrays(x, ref) -> tuple[np.ndarray, np.ndarray]:
    x, ref = (np.asarray(getattr(a, "data", a)) for a in (x, ref))
    x, ref = (np.abs(a) if np.iscomplexobj(a) else a for a in (x, ref))
    x, ref = x.astype(np.float64, copy=False), ref.astype(np.float64, copy=False)
    if x.shape != ref.shape:
        raise InputError(f"reconstruction shape {x.shape} differs from reference shape {ref.shape}")
    if x.size == 0:
        raise InputError("cannot compute a metric on empty arrays")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(ref))):
        raise InputError("the images hold NaN or infinite values; metrics are undefined")
    return x, ref


def _clip(x, ref, window, clip: bool = True):
    x, ref = _arrays(x, ref)
    lo, hi = parse_window(window, ref)
    if not clip:
        return x, ref, hi - lo
    return np.clip(x, lo, hi), np.clip(ref, lo, hi), hi - lo


def _torch_pair(x, ref):
    """Two tensors of one shape (magnitudes if complex), ``ref`` on ``x``'s device.  Values are not
    checked for NaN: torch metrics run inside batched loops, where a NaN gives a NaN."""
    import torch

    x, r = torch.as_tensor(x), torch.as_tensor(ref)
    if x.shape != r.shape:
        raise InputError(f"reconstruction shape {tuple(x.shape)} differs from reference shape {tuple(r.shape)}")
    if x.numel() == 0:
        raise InputError("cannot compute a metric on empty arrays")
    x = x.abs() if x.is_complex() else x
    r = r.abs() if r.is_complex() else r
    return x, r.to(x.device)


def _torch_window(window, r) -> tuple[float, float]:
    if window is None:
        lo, hi = float(r.min()), float(r.max())
        return (lo, hi) if hi > lo else (lo, lo + 1.0)
    return parse_window(window, None)


def psnr(x, ref, window=None, *, clip: bool = True) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(L^2 / MSE)``, ``L = hi - lo`` (see module doc).

    Parameters
    ----------
    x, ref : numpy arrays, Volumes or torch tensors of one shape
        Torch input is computed in float64 on ``x``'s device.
    window : (lo, hi), optional
        Physical units; ``None`` uses the reference's ``[min, max]``.
    clip : bool
        Clip both images to the window (default).  ``False`` scores them unclipped with
        ``L`` = the window width (e.g. the reference's peak-to-peak range).

    Returns ``inf`` for identical images.
    """
    if _is_torch(x) or _is_torch(ref):
        import torch

        xt, rt = _torch_pair(x, ref)
        xt, rt = xt.to(torch.float64), rt.to(torch.float64)
        lo, hi = _torch_window(window, rt)
        if clip:
            xt, rt = xt.clamp(lo, hi), rt.clamp(lo, hi)
        data_range = hi - lo
        mse = float(torch.mean((xt - rt) ** 2))
        return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)
    xc, rc, L = _clip(x, ref, window, clip)
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


def psnr_slices(x, ref, window=None, *, clip: bool = True):
    """PSNR of each slice (axis 0) in dB: ``10 log10(L^2 / MSE_k)``, ``MSE_k`` the mean over slice ``k``.

    ``window`` and ``clip`` as in :func:`psnr`.  NumPy input (a 2D image is one slice, else
    (Z, Y, X)): a float64 array (Z,), ``inf`` where a slice is identical.  Torch input (a batch
    ``(B, ...)``, e.g. (B, 1, H, W) images in the network range with ``window=(-1, 1),
    clip=False``): a tensor (B,) in the input's dtype and device, computed in that dtype with
    ``MSE_k`` floored at 1e-12 (finite values for batched evaluation loops).
    """
    if _is_torch(x) or _is_torch(ref):
        xt, rt = _torch_pair(x, ref)
        if xt.ndim == 2:
            xt, rt = xt[None], rt[None]
        lo, hi = _torch_window(window, rt)
        if clip:
            xt, rt = xt.clamp(lo, hi), rt.clamp(lo, hi)
        L = hi - lo
        import torch

        mse = ((xt - rt) ** 2).flatten(1).mean(1).clamp(min=1e-12)
        return 10 * torch.log10(L**2 / mse)
    xc, rc, L = _clip(x, ref, window, clip)
    xc, rc = _as3d(xc), _as3d(rc)
    mse = np.mean((xc - rc) ** 2, axis=(1, 2))
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10.0 * np.log10(L * L / np.maximum(mse, 1e-300)))

def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def compare(x, ref, window) -> dict[str, Any]:
    """PSNR and SSIM overall and per slice, as a JSON-able dict (``inf`` is written as null)."""
    lo, hi = parse_window(window, _arrays(x, ref)[1])
    ps = psnr_slices(x, ref, (lo, hi))
    ss = ssim_slices(x, ref, (lo, hi))
    return {
        "psnr": _finite_or_none(psnr(x, ref, (lo, hi))),
        "ssim": float(np.mean(ss)),
        "psnr_per_slice": [_finite_or_none(v) for v in ps],
        "ssim_per_slice": [float(v) for v in ss],
    }
