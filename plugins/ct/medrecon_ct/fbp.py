"""Filtered backprojection (FBP) for the parallel- and fan-beam geometries.

Parallel beam (Kak & Slaney, ch. 3)::

    f(X) = sum_v w_v q_v(X . e_u(theta_v)),     q_v = (1 / tau) IFFT(FFT(p_v) H)

with ``tau`` the detector spacing (mm), ``H`` the discrete ramp (the FFT of the
band-limited spatial kernel h[0] = 1/4, h[odd n] = -1/(pi n)^2, which avoids the
DC offset of a sampled |f|) times a window, ``p_v`` zero-padded to a power of two
at least twice the detector length, and ``w_v`` the angular weight of view
``v`` in radians (``pi / n_views`` for a uniform half turn; half the gap to each
neighbour in general, with gaps larger than 1.5x the median gap -- the missing
wedge of a limited-angle scan -- counted as the median gap).

Fan beam, flat detector: the fan-beam formula for equally spaced detectors
(Kak & Slaney, section 3.4.2, "equally spaced collinear detectors"), not rebinning.  The
detector is scaled to a virtual detector through the isocentre
(``p = u R / D``), each projection is cosine pre-weighted by ``R / sqrt(R^2 + p^2)``,
ramp filtered on the virtual detector, and backprojected with the distance
weight ``1 / U^2``, ``U = (R + X . d) / R``::

    f(X) = 1/2 sum_v w_v U^-2 q_v(p(X)),   p(X) = R (X . e_u) / (R + X . d)

The 1/2 accounts for every ray being measured twice in a full 360-degree scan;
short scans (180 degrees + fan) would need Parker weights, which are not
applied.

The output is in the units of the image: attenuation per mm when the
projections are line integrals in (attenuation per mm) x mm.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medrecon_ct.geometry import FanGeometry, _Geometry, check_filter

__all__ = ["angle_weights", "fbp", "ramp_response"]


def ramp_response(n_det: int, filter: str = "ram-lak") -> np.ndarray:
    """Frequency response (for ``rfft`` of length ``n_pad``) of the windowed ramp,
    in cycles per sample (ramp value 0.5 at Nyquist).  Returns ``(n_pad, H)``."""
    name = check_filter(filter)
    n_pad = max(64, int(2 ** math.ceil(math.log2(2 * n_det))))
    n = np.concatenate([np.arange(1, n_pad // 2 + 1, 2), np.arange(n_pad // 2 - 1, 0, -2)])
    h = np.zeros(n_pad)
    h[0] = 0.25
    h[1::2] = -1.0 / (np.pi * n) ** 2
    H = np.real(np.fft.rfft(h))
    f = np.fft.rfftfreq(n_pad)  # 0 .. 0.5 cycles per sample
    if name == "shepp-logan":
        w = np.ones_like(f)
        w[1:] = np.sin(np.pi * f[1:]) / (np.pi * f[1:])
    elif name == "cosine":
        w = np.cos(np.pi * f)
    elif name == "hamming":
        w = 0.54 + 0.46 * np.cos(2 * np.pi * f)
    elif name == "hann":
        w = 0.5 + 0.5 * np.cos(2 * np.pi * f)
    else:
        w = np.ones_like(f)
    return n_pad, H * w


def angle_weights(angles_deg: np.ndarray, period: float) -> np.ndarray:
    """Angular quadrature weights (radians) for views at ``angles_deg`` over ``period`` degrees."""
    a = np.mod(np.asarray(angles_deg, np.float64), period)
    n = a.size
    if n == 1:
        return np.array([np.deg2rad(period)])
    order = np.argsort(a)
    s = a[order]
    gaps = np.diff(np.concatenate([s, [s[0] + period]]))  # gap after each view (circular)
    med = np.median(gaps[gaps > 0]) if np.any(gaps > 0) else period / n
    gaps = np.where(gaps > 1.5 * med, med, gaps)
    w_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    w = np.empty(n)
    w[order] = w_sorted
    return np.deg2rad(w)


def _filter(p: torch.Tensor, H: np.ndarray, n_pad: int, spacing: float) -> torch.Tensor:
    n_det = p.shape[-1]
    Ht = torch.as_tensor(H, dtype=p.dtype, device=p.device)
    P = torch.fft.rfft(p, n=n_pad, dim=-1)
    return torch.fft.irfft(P * Ht, n=n_pad, dim=-1)[..., :n_det] / spacing


def fbp(y: torch.Tensor, geom: _Geometry, filter: str = "ram-lak", max_elems: int = 1 << 23) -> torch.Tensor:
    """FBP of a batch of sinograms ``y`` ``(B, n_views, n_det)`` -> ``(B, ny, nx)``."""
    dtype = y.dtype if y.dtype in (torch.float32, torch.float64) else torch.float32
    y = y.to(dtype)
    dev = y.device
    B = y.shape[0]
    ny, nx = geom.shape
    ps = geom.pixel_size
    n_pad, H = ramp_response(geom.n_det, filter)
    fan = isinstance(geom, FanGeometry)
    th = torch.as_tensor(np.deg2rad(geom.angles), dtype=dtype, device=dev)
    c = (geom.n_det - 1) / 2.0
    if fan:
        R, D = geom.source_to_center, geom.source_to_detector
        scale = R / D
        u = torch.as_tensor(geom.u, dtype=dtype, device=dev) * scale  # virtual detector (mm)
        p = y * (R / torch.sqrt(R * R + u * u))
        q = _filter(p, H, n_pad, geom.det_spacing * scale)
        w = torch.as_tensor(0.5 * angle_weights(geom.angles, 360.0), dtype=dtype, device=dev)
    else:
        q = _filter(y, H, n_pad, geom.det_spacing)
        w = torch.as_tensor(angle_weights(geom.angles, 180.0), dtype=dtype, device=dev)
    q = q * w[None, :, None]
    X = (torch.arange(nx, dtype=dtype, device=dev) - (nx - 1) / 2.0) * ps
    Y = ((ny - 1) / 2.0 - torch.arange(ny, dtype=dtype, device=dev)) * ps
    Yg, Xg = torch.meshgrid(Y, X, indexing="ij")
    Xf, Yf = Xg.reshape(-1), Yg.reshape(-1)
    out = torch.zeros(B, ny * nx, dtype=dtype, device=dev)
    qpad = torch.nn.functional.pad(q, (1, 1))  # zero bins at both ends for out-of-range taps
    nv = geom.n_views
    chunk = max(1, max_elems // max(1, B * ny * nx))
    for v0 in range(0, nv, chunk):
        v1 = min(nv, v0 + chunk)
        ct, st = torch.cos(th[v0:v1])[:, None], torch.sin(th[v0:v1])[:, None]
        t = Xf[None] * ct + Yf[None] * st  # along e_u
        if fan:
            l_ = R + (-Xf[None] * st + Yf[None] * ct)  # along d, from the source
            ucoord = D * t / l_
            wdist = (R / l_) ** 2
        else:
            ucoord = t
            wdist = None
        k = (ucoord - geom.det_offset) / geom.det_spacing + c + 1.0  # +1 for the pad
        k = k.clamp(0.0, geom.n_det + 1.0)
        k0 = torch.floor(k).clamp(max=geom.n_det)
        a = k - k0
        k0 = k0.long()
        qv = qpad[:, v0:v1]  # (B, V, n_det + 2)
        idx0 = k0[None].expand(B, -1, -1)
        g0 = torch.gather(qv, 2, idx0)
        g1 = torch.gather(qv, 2, idx0 + 1)
        val = g0 + a[None] * (g1 - g0)
        if wdist is not None:
            val = val * wdist[None]
        out += val.sum(1)
    return out.reshape(B, ny, nx)
