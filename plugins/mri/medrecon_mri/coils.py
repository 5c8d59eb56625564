"""Coil sensitivity maps: synthetic (for simulation) and estimated from the calibration region.

Estimation methods (:func:`estimate_coil_maps`; ``auto``, the default, is ``espirit`` where the
calibration region holds at least 4 lines and ``lowres`` below that), all from the fully sampled centre of
k-space (the auto-calibration signal, ACS, found with :func:`~medrecon_mri.masks.calibration_region`):

``lowres`` (our own, the classic "ACS images over their root-sum-of-squares")
    1. Keep the ACS block (at most the central ``MAX_CALIB`` = 32 lines) of every coil's k-space, taper it with a separable Hann window
       (rows: for a 1D mask, whose readout is fully sampled, the window spans the same
       *fraction* of the readout axis as the ACS spans of the phase-encode axis, so the
       low-resolution images have the same resolution in both directions), zero the rest.
    2. ``m_c = ifft2c(window * k_c)``: smooth low-resolution coil images.
    3. ``S_c = m_c / sqrt(sum_c |m_c|^2)`` inside the support ``rss(m) > threshold *
       max rss(m)`` (holes filled), zero outside.
    Inside the support ``sum_c |S_c|^2 = 1`` (SENSE stays well conditioned) and ``S_c``
    carries the phase of the low-resolution image, so the image that the maps imply,
    ``x = sum_c conj(S_c) m_c``, is real and non-negative at low resolution: this is what
    lets a real magnitude prior meet raw complex data (``real_image=True``, docs/mri.md).
    Outside the support no coil sees the image: SENSE leaves it at zero (a background
    without noise), a prior fills it with what it believes.
``walsh``
    Walsh, Gmitro, Marcellin (MRM 2000): per pixel, the dominant eigenvector of the coil
    covariance of the low-resolution images summed over a ``kernel x kernel``
    neighbourhood; its arbitrary phase is aligned to the low-resolution image (as above),
    restricted to the same support as ``lowres``.
``espirit``
    ESPIRiT (Uecker et al., MRM 2014; our implementation, :mod:`medrecon_mri.espirit`): the
    dominant eigenvector per pixel of the image-space calibration kernels, zero where its
    eigenvalue is below 0.95 (outside the object), phase-aligned the same way.  The kernel is
    the largest of 3..6 that the calibration region supports.

Synthetic maps (:func:`synthetic_coil_maps`): ``n_coils`` coils on a circle around the
field of view ("birdcage-like"), Gaussian magnitude fall-off with a smooth phase,
normalised so that ``sum_c |S_c|^2 = 1`` at every pixel.
"""

from __future__ import annotations

import math

import numpy as np

from medrecon.errors import InputError
from medrecon_mri.fft import ifft2c_np
from medrecon_mri.masks import calibration_region, parse_calib

__all__ = ["estimate_coil_maps", "rss", "synthetic_coil_maps", "lowres_coil_images", "align_phase"]

METHODS = ("auto", "lowres", "walsh", "espirit")
MAX_CALIB = 32  # at most this many central lines are used (more only sharpens the maps)


def rss(x, axis: int = 0):
    """Root-sum-of-squares over the coil axis: ``sqrt(sum_c |x_c|^2)`` (numpy or torch)."""
    if hasattr(x, "detach"):
        return (x.abs() ** 2).sum(dim=axis).sqrt()
    return np.sqrt((np.abs(x) ** 2).sum(axis=axis))


def synthetic_coil_maps(shape, n_coils: int = 8, width: float = 1.0, radius: float = 1.5,
                        phase: float = 1.0) -> np.ndarray:
    """Birdcage-like maps ``(n_coils, ny, nx)`` complex64 with ``sum_c |S_c|^2 = 1``.

    Coil ``c`` sits at angle ``2 pi c / n_coils`` on a circle of ``radius`` (in units of half
    the field of view); its magnitude is ``exp(-d^2 / (2 width^2))`` (``d`` the distance to
    the coil in the same units) and its phase ``phase * angle(p - p_c) + 2 pi c / n_coils``.
    """
    ny, nx = (int(s) for s in shape)
    n_coils = int(n_coils)
    if n_coils < 1:
        raise InputError(f"n_coils must be >= 1, got {n_coils}")
    y = (np.arange(ny) - ny // 2) / (ny / 2)
    x = (np.arange(nx) - nx // 2) / (nx / 2)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    maps = []
    for c in range(n_coils):
        a = 2 * math.pi * c / n_coils
        py, px = radius * math.sin(a), radius * math.cos(a)
        d2 = (yy - py) ** 2 + (xx - px) ** 2
        ph = float(phase) * np.arctan2(yy - py, xx - px) + a
        maps.append(np.exp(-d2 / (2 * float(width) ** 2)) * np.exp(1j * ph))
    s = np.stack(maps)
    return (s / rss(s)[None]).astype(np.complex64)


def _hann(n: int) -> np.ndarray:
    return 0.5 * (1 - np.cos(2 * np.pi * (np.arange(n) + 1) / (n + 1)))


def lowres_coil_images(kspace: np.ndarray, mask: np.ndarray | None = None, calib=None) -> np.ndarray:
    """Low-resolution coil images from the ACS block of ``kspace`` ``(C, ny, nx)`` (see module docstring).

    ``calib``: ACS size ``[rows, columns]`` (centred) overriding the one found in ``mask``;
    ``mask`` defaults to the non-zero pattern of ``kspace``.
    """
    k = np.asarray(kspace)
    if k.ndim != 3:
        raise InputError(f"coil map estimation needs k-space shaped (coils, ny, nx), got {k.shape}")
    C, ny, nx = k.shape
    if calib is not None:
        h, w = parse_calib((ny, nx), calib)
        rs = slice((ny - h + 1) // 2, (ny - h + 1) // 2 + h)
        cs = slice((nx - w + 1) // 2, (nx - w + 1) // 2 + w)
    else:
        if mask is None:
            mask = np.abs(k).sum(0) > 0
        rs, cs = calibration_region(mask)
        if cs.stop - cs.start > MAX_CALIB:  # fully sampled data: keep the maps smooth
            c0 = (cs.start + cs.stop) // 2
            cs = slice(c0 - MAX_CALIB // 2, c0 - MAX_CALIB // 2 + MAX_CALIB)
        if rs.stop - rs.start > MAX_CALIB and rs.stop - rs.start < ny:
            r0 = (rs.start + rs.stop) // 2
            rs = slice(r0 - MAX_CALIB // 2, r0 - MAX_CALIB // 2 + MAX_CALIB)
    h, w = rs.stop - rs.start, cs.stop - cs.start
    if w < 4 or h < 4:
        raise InputError(f"the calibration region is too small ({h}x{w}) to estimate coil maps; "
                         "sample more central k-space lines")
    if h == ny:  # 1D mask: fully sampled readout; match the phase-encode resolution
        h = max(4, min(ny, int(round(w * ny / nx))))
        rs = slice((ny - h + 1) // 2, (ny - h + 1) // 2 + h)
    win = np.zeros((ny, nx))
    win[rs, cs] = _hann(h)[:, None] * _hann(w)[None, :]
    return ifft2c_np(k * win[None])


def align_phase(maps: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Multiply ``maps`` by the phase of ``sum_c conj(S_c) m_c`` so that the implied image is real >= 0."""
    comb = (np.conj(maps) * images).sum(0)
    return maps * np.exp(1j * np.angle(comb))[None]


def resolve_method(method: str, shape, mask=None, calib=None) -> str:
    """``auto`` -> ``espirit`` when the calibration region supports a 3 x 3 ESPIRiT kernel, else
    ``lowres``; other methods unchanged.  ``shape``: the k-space grid ``(ny, nx)``."""
    if method != "auto":
        return method
    from medrecon_mri.espirit import MAX_CALIB, min_calib

    if calib is not None:
        h, w = parse_calib(tuple(shape), calib)
    else:
        m = np.ones(tuple(shape), bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), tuple(shape))
        rs, cs = calibration_region(m)
        h, w = rs.stop - rs.start, cs.stop - cs.start
    return "espirit" if min(h, w, MAX_CALIB) >= min_calib(3) else "lowres"


def estimate_coil_maps(kspace, mask=None, *, method: str = "auto", calib=None, threshold: float = 0.05,
                       kernel: int = 5) -> np.ndarray:
    """Coil maps ``(C, ny, nx)`` complex64 from k-space ``(C, ny, nx)`` (zeros where not sampled).

    ``mask`` (``(ny, nx)`` or ``(nx,)`` columns) locates the calibration region (default: the
    non-zero pattern of ``kspace``); ``calib=[rows, cols]`` gives it explicitly.
    ``threshold``: the support is where the low-resolution RSS exceeds this fraction of its maximum.  See the module
    docstring for the methods.
    """
    if method not in METHODS:
        raise InputError(f"unknown coil map method {method!r}; use one of {', '.join(METHODS)}")
    k = np.asarray(kspace.detach().cpu().numpy() if hasattr(kspace, "detach") else kspace)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim == 1:
            mask = np.broadcast_to(mask[None, :], k.shape[-2:])
    if isinstance(threshold, (bool, str)) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise InputError(f"the coil-map threshold must be a number in [0, 1), got {threshold!r}")
    if mask is None:
        mask = np.abs(k).sum(0) > 0
    method = resolve_method(method, k.shape[-2:], mask, calib)
    m = lowres_coil_images(k, mask, calib)
    from scipy.ndimage import binary_fill_holes

    r = rss(m)
    support = binary_fill_holes(r > float(threshold) * float(r.max())) if r.max() > 0 else np.ones(r.shape, bool)
    if method == "lowres":
        maps = m / np.where(r > 0, r, 1.0)[None]
    elif method == "walsh":
        maps = align_phase(_walsh(m, int(kernel)), m)
    else:
        maps = align_phase(_espirit(k, mask, calib), m)
    return (maps * support[None]).astype(np.complex64)


def _box(a: np.ndarray, k: int) -> np.ndarray:
    """Sum over a k x k neighbourhood of the last two axes (edges: the part inside)."""
    from scipy.ndimage import uniform_filter

    re = uniform_filter(a.real, size=(1,) * (a.ndim - 2) + (k, k), mode="constant")
    im = uniform_filter(a.imag, size=(1,) * (a.ndim - 2) + (k, k), mode="constant")
    return (re + 1j * im) * k * k


def _walsh(m: np.ndarray, kernel: int) -> np.ndarray:
    C, ny, nx = m.shape
    cov = _box(m[:, None] * np.conj(m[None, :]), kernel)  # (C, C, ny, nx)
    cov = np.moveaxis(cov.reshape(C, C, -1), -1, 0)  # (P, C, C), Hermitian
    _, vec = np.linalg.eigh(cov)
    v = vec[:, :, -1]  # dominant eigenvector (P, C)
    return np.moveaxis(v, 0, -1).reshape(C, ny, nx)


def _espirit(k: np.ndarray, mask, calib) -> np.ndarray:
    """ESPIRiT maps (:mod:`medrecon_mri.espirit`) from the calibration region of ``mask`` (or ``calib``)."""
    from medrecon_mri.espirit import MAX_CALIB, espirit_maps, min_calib

    ny, nx = k.shape[-2:]
    if calib is not None:  # centred as in lowres_coil_images
        h, w = parse_calib((ny, nx), calib)
        rs = slice((ny - h + 1) // 2, (ny - h + 1) // 2 + h)
        cs = slice((nx - w + 1) // 2, (nx - w + 1) // 2 + w)
    else:
        rs, cs = calibration_region(mask if mask is not None else np.abs(k).sum(0) > 0)
    # the largest kernel <= 6 that the (capped) region supports; espirit_maps raises the
    # InputError (naming coil_method=lowres / calib=) when even 3 x 3 does not fit
    n = min(rs.stop - rs.start, cs.stop - cs.start, MAX_CALIB)
    kernel = max([kk for kk in range(3, 7) if min_calib(kk) <= n], default=3)
    return espirit_maps(k, rs, cs, kernel=kernel, thresh=0.02, crop=0.95)[0]
