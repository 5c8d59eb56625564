"""``us.planewave``: reflectivity image -> plane-wave RF channel data; its adjoint is delay-and-sum.

Domain: a real reflectivity image ``x`` shaped ``(nz, nx)`` (depth x lateral) on the pixel
grid of :func:`medrecon_us.geometry.pixel_axes`.  Range: real RF channel data ``y`` shaped
``(n_angles, n_elements, n_samples)``, sample ``t`` taken at time ``t0 + t / fs``.  The batch
axis holds frames (``per_slice``: each frame is measured independently).

Forward model (geometry and delays in :mod:`medrecon_us.geometry`, pulse in
:mod:`medrecon_us.pulse`)::

    y[a, e, :] = h * u[a, e, :]
    u[a, e, t] = sum_p w(e, p) x_p L(t - s(a, e, p))
    s(a, e, p) = (tau_tx(a, p) + tau_rx(e, p) - t0) fs                  (samples)

``L(d) = max(0, 1 - |d|)`` is the linear-interpolation (hat) kernel: each pixel's value is
*splatted* into the two samples around its round-trip delay ``s`` with weights ``1 - frac(s)``
and ``frac(s)`` (the transpose of linear interpolation); ``w`` is the receive apodisation and
``h *`` the convolution with the transmit pulse along time.  Samples falling outside ``[0,
n_samples)`` are dropped.  Not modelled: element directivity, geometric spreading,
attenuation, multiple scattering.

Adjoint (exactly the transpose, so the dot-product test holds to rounding)::

    x_p = sum_{a, e} w(e, p) v[a, e](s(a, e, p)),    v[a, e, :] = h # y[a, e, :]

correlation with the pulse (matched filter), linear interpolation of each channel at the
round-trip delay, apodised sum over elements and transmits: delay-and-sum beamforming.

``classical(y)`` is that delay-and-sum image divided, pixel by pixel, by the adjoint's
response to a unit reflector at the pixel itself, the diagonal of ``A^T A``::

    d_p = sum_{a, e} w(e, p)^2 [((1 - f)^2 + f^2) R_0 + 2 f (1 - f) R_1],   f = frac(s(a, e, p))

(``R_k = sum_j h_j h_{j+k}`` the pulse autocorrelation): a point of reflectivity ``r`` images
to ``r`` at its own pixel whatever the number of transmits and elements, and a pixel no
element hears is 0.  It is a real RF image; envelope detection and log compression (B-mode) are not
part of the operator.

Delays are computed on the fly, never as the full ``n_angles x n_elements x nz x nx`` table.
The transmit delay is affine in the pixel position (three numbers per transmit); the operator
keeps, per device and dtype, the (element, pixel) pairs inside the receive aperture (``w > 0``:
34 % of all pairs for a 128-element array at f-number 1.5 over 5..40 mm) with their pixel
index, position, receive delay, weight and channel offset (28 bytes a pair in float32).  It
walks the pairs in chunks of ``chunk`` and, for each chunk, every transmit: forms the
round-trip delays, truncates them to int32 sample indices and fractions, and gathers
(adjoint) or scatter-adds (forward) both interpolation taps at once as one complex number; the
adjoint sums a chunk over transmits before one scatter into the image.  Frames ride in the
last axis, so the delays of a step serve every frame of the batch.  Forward and adjoint run on
the input's device; on CUDA the scatters use atomic adds (results are not bitwise
reproducible, as for any ``index_add_``).

Example::

    >>> import torch, medrecon
    >>> A = medrecon.get_operator("us.planewave", shape=[32, 16], z_mm=[5, 15], x_mm=[-3, 3],
    ...     n_elements=16, pitch_mm=0.3, angles_deg=[-5, 0, 5], fs_hz=20e6, n_samples=512)
    >>> y = A(torch.zeros(2, 32, 16))
    >>> tuple(y.shape)
    (2, 3, 16, 512)
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.operators.base import Operator
from medrecon.operators.params import Param
from medrecon_us.geometry import (
    APODIZATIONS,
    TX_REFERENCES,
    element_positions,
    pixel_axes,
    receive_apodization,
    receive_delays,
    transmit_coefficients,
)
from medrecon_us.pulse import convolve_time, correlate_time, gaussian_pulse

__all__ = ["PlaneWaveRF"]

# (element, pixel) pairs per step: cache-sized on the CPU, large on a GPU
_CHUNK_CPU = 1 << 16
_CHUNK_CUDA = 1 << 22


def _number(v, name: str, *, low: float | None = None, high: float | None = None, low_open: bool = True) -> float:
    """``v`` as a finite float in the stated range, or an InputError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise InputError(f"{name} must be a finite number, got {v!r}")
    v = float(v)
    if low is not None and (v <= low if low_open else v < low):
        raise InputError(f"{name} must be {'greater than' if low_open else 'at least'} {low:g}, got {v:g}")
    if high is not None and v > high:
        raise InputError(f"{name} must be at most {high:g}, got {v:g}")
    return v


def _count(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not float(v).is_integer() \
            or int(v) < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _pair(v, name: str, n: int, *, low: float | None = None) -> list[float]:
    """``[first, last]`` pixel-centre coordinates (mm) for an axis of ``n`` pixels."""
    if not isinstance(v, (list, tuple, np.ndarray)) or len(v) != 2:
        raise InputError(f"{name} must be [first, last] in mm, got {v!r}")
    a, b = (_number(e, name) for e in v)
    if n > 1 and not b > a:
        raise InputError(f"{name} must increase from first to last pixel centre, got {[a, b]}")
    if n == 1 and a != b:
        raise InputError(f"{name} of a one-pixel axis must repeat its centre, got {[a, b]}")
    if low is not None and a < low:
        raise InputError(f"{name} must start at or below the probe face (depth >= {low:g} mm), got {a:g}")
    return [a, b]


def _grid_shape(shape) -> list[int]:
    if not isinstance(shape, (list, tuple, np.ndarray)) or len(shape) != 2:
        raise InputError(f"shape must be [nz, nx], got {shape!r}")
    return [_count(shape[0], "shape[0] (nz)"), _count(shape[1], "shape[1] (nx)")]


def _angles(angles_deg) -> list[float]:
    if isinstance(angles_deg, (int, float, np.integer, np.floating)) and not isinstance(angles_deg, bool):
        angles_deg = [angles_deg]
    if not isinstance(angles_deg, (list, tuple, np.ndarray)) or len(angles_deg) == 0:
        raise InputError(f"angles_deg must be a non-empty list of steering angles in degrees, got {angles_deg!r}")
    out = [_number(a, "every steering angle in angles_deg", low=-90.0, high=90.0) for a in angles_deg]
    if any(abs(a) >= 90.0 for a in out):
        raise InputError("every steering angle in angles_deg must lie strictly between -90 and 90 degrees")
    return out


def _choice(name: str, options):
    def check(v):
        if v not in options:
            raise InputError(f"{name} must be one of {', '.join(options)}, got {v!r}")
        return v

    return check


class PlaneWaveRF(Operator):
    """Plane-wave RF forward model (module docstring): ``(B, nz, nx) -> (B, n_angles, n_elements, n_samples)``.

    Parameters (units in the names; all stored in the spec):

    ``shape``
        ``[nz, nx]`` image grid (depth x lateral).
    ``z_mm``, ``x_mm``
        ``[first, last]`` pixel-centre depth (>= 0, from the probe face) and lateral position
        (from the array centre) of the first and last row / column, mm.
    ``n_elements``, ``pitch_mm``
        Linear array: element centres ``x_e = (e - (n_elements - 1) / 2) pitch``.
    ``angles_deg``
        Plane-wave steering angles, degrees (positive steers towards +x), ``|angle| < 90``.
    ``fs_hz``, ``n_samples``, ``t0_s``
        Sampling rate, samples per channel, time of sample 0 (s, default 0) relative to the
        transmit time reference.
    ``c``
        Speed of sound, m/s (default 1540; accepted 300 .. 10000).
    ``f0_hz``, ``bandwidth``
        Pulse centre frequency (Hz, below ``fs / 2``) and fractional -6 dB bandwidth (0 .. 2]
        of the Gaussian-modulated sinusoid :func:`medrecon_us.pulse.gaussian_pulse`.
    ``f_number``, ``apodization``
        Receive aperture ``|x - x_e| <= z / (2 f_number)``, weighted ``"hann"`` (default) or
        ``"boxcar"`` (:func:`medrecon_us.geometry.receive_apodization`).
    ``tx_reference``
        Time zero of a transmit: ``"first_element"`` (default: the first-firing edge element
        fires at t = 0, as Verasonics records it) or ``"center"`` (the wavefront crosses the
        array centre at t = 0, the PICMUS / USTB convention); see :mod:`medrecon_us.geometry`.
        On the Verasonics wire-phantom recording (7 angles, +-1.5 degrees) ``"first_element"``
        compounds coherently and ``"center"`` does not: the wire peaks of the delay-and-sum
        envelope are about 5x higher (plugins/ultrasound/README.md).
    ``chunk``
        Most (element, pixel) pairs handled per step, each for every transmit (default None:
        ``2**16`` on the CPU, ``2**22`` on CUDA).  Results do not depend on it beyond rounding.
    """

    name: ClassVar[str] = "us.planewave"
    per_slice: ClassVar[bool] = True
    domain_is_complex: ClassVar[bool] = False
    range_is_complex: ClassVar[bool] = False

    PARAMS: ClassVar[tuple[Param, ...]] = (
        Param("shape", check=_grid_shape, grid="shape", doc="[nz, nx] image grid (depth x lateral), pixels"),
        Param("z_mm", doc="[first, last] pixel-centre depth, mm (>= 0)"),
        Param("x_mm", doc="[first, last] pixel-centre lateral position, mm"),
        Param("n_elements", check=lambda v: _count(v, "n_elements"), doc="elements of the linear array"),
        Param("pitch_mm", check=lambda v: _number(v, "pitch_mm", low=0.0), doc="element pitch, mm"),
        Param("angles_deg", check=_angles, doc="plane-wave steering angles, degrees"),
        Param("fs_hz", check=lambda v: _number(v, "fs_hz (sampling rate)", low=0.0), doc="sampling rate, Hz"),
        Param("n_samples", check=lambda v: _count(v, "n_samples"), doc="samples per channel"),
        Param("c", 1540.0, check=lambda v: _number(v, "c (speed of sound, m/s)", low=300.0, high=10000.0,
                                                   low_open=False), doc="speed of sound, m/s"),
        Param("t0_s", 0.0, check=lambda v: _number(v, "t0_s"), doc="time of sample 0, s"),
        Param("f0_hz", 5e6, check=lambda v: _number(v, "f0_hz (pulse centre frequency)", low=0.0),
              doc="pulse centre frequency, Hz"),
        Param("bandwidth", 0.6, check=lambda v: _number(v, "bandwidth (fractional, -6 dB)", low=0.0, high=2.0),
              doc="fractional -6 dB pulse bandwidth"),
        Param("f_number", 1.5, check=lambda v: _number(v, "f_number", low=0.0), doc="receive f-number"),
        Param("apodization", "hann", check=_choice("apodization", APODIZATIONS), doc="receive apodisation"),
        Param("tx_reference", "first_element", check=_choice("tx_reference", TX_REFERENCES),
              doc="time zero of a transmit"),
        Param("chunk", None, check=lambda v: None if v is None else _count(v, "chunk"),
              doc="(element, pixel) pairs per step (default by device)"),
    )

    @classmethod
    def example(cls) -> "PlaneWaveRF":
        """A 32 x 16 grid over 5..15 mm depth and +-3 mm, 16 elements of 0.3 mm, 3 angles, 512 samples at 20 MHz."""
        return cls(shape=[32, 16], z_mm=[5, 15], x_mm=[-3, 3], n_elements=16, pitch_mm=0.3, angles_deg=[-5, 0, 5],
                   fs_hz=20e6, n_samples=512)

    def _build(self, p) -> None:
        nz, nx = p["shape"]
        p["z_mm"] = _pair(p["z_mm"], "z_mm", nz, low=0.0)
        p["x_mm"] = _pair(p["x_mm"], "x_mm", nx)
        n_elements, angles_deg, fs_hz, n_samples = p["n_elements"], p["angles_deg"], p["fs_hz"], p["n_samples"]
        f0_hz, bandwidth = p["f0_hz"], p["bandwidth"]
        if f0_hz >= fs_hz / 2:
            raise InputError(f"f0_hz ({f0_hz:g} Hz) must be below half the sampling rate fs_hz / 2 ({fs_hz / 2:g} Hz)")
        if n_elements * (n_samples + 3) >= 2**31:
            raise InputError(f"n_elements x n_samples ({n_elements} x {n_samples}) is too large for one transmit "
                             f"(at most 2**31 samples)")
        self.domain_shape = (nz, nx)
        self.range_shape = (len(angles_deg), n_elements, n_samples)
        taps = gaussian_pulse(f0_hz, bandwidth, fs_hz)
        self._taps_h = taps.tolist()  # float64 numbers: no device round trip per call
        self.register_buffer("pulse", torch.from_numpy(taps.astype(np.float32)))  # for users: h_k, k = -K..K
        self._plans: dict = {}

    # ------------------------------------------------------------------ geometry
    @property
    def n_angles(self) -> int:
        return self.range_shape[0]

    def _plan(self, device: torch.device, dtype: torch.dtype) -> dict:
        """The factors of the delays, cached per device and dtype (computed in float64).

        The transmit delay is affine in the pixel position, ``tau_tx = a z + b x + o``
        (:func:`~medrecon_us.geometry.transmit_coefficients`): ``tx`` holds ``(a fs, b fs,
        (o - t0) fs + 1)`` per transmit (the +1 is the channel padding of :meth:`_taps`).  For the
        (element, pixel) pairs that the apodisation keeps (``w > 0``), flat: ``p`` pixel index,
        ``z``, ``x`` its position (m), ``rx`` = ``tau_rx fs``, ``w`` the weight, ``off`` = ``e L``
        the channel's offset in a transmit's padded ``(n_elements, L)`` block (``L = n_samples + 3``).
        """
        key = (str(device), dtype)
        if key not in self._plans:
            p = self._params
            z, x = pixel_axes(p["shape"], p["z_mm"], p["x_mm"], device=device)
            pitch = p["pitch_mm"] * 1e-3
            xe = element_positions(p["n_elements"], pitch, device=device)
            fs = p["fs_hz"]
            co = transmit_coefficients([math.radians(a) for a in p["angles_deg"]], p["c"],
                                       n_elements=p["n_elements"], pitch_m=pitch, reference=p["tx_reference"])
            rx = receive_delays(xe, z, x, p["c"]).flatten(1)
            w = receive_apodization(xe, z, x, p["f_number"], p["apodization"]).flatten(1)
            e, pix = torch.nonzero(w > 0, as_tuple=True)
            nx = x.numel()
            self._plans[key] = {
                "tx": [(a * fs, b * fs, (o - p["t0_s"]) * fs + 1.0) for a, b, o in co],
                "p": pix,
                "z": z[pix // nx].to(dtype),
                "x": x[pix % nx].to(dtype),
                "rx": (rx[e, pix] * fs).to(dtype),
                "w": w[e, pix].to(dtype),
                "off": (e * (self.range_shape[2] + 3)).to(torch.int32),
            }
        return self._plans[key]

    def _delays(self, plan: dict, a: int, k0: int, k1: int) -> torch.Tensor:
        """Padded round-trip delays ``s + 1`` (samples) of transmit ``a`` and pairs ``k0 .. k1-1``."""
        ca, cb, co = plan["tx"][a]
        return torch.add(plan["rx"][k0:k1], plan["z"][k0:k1], alpha=ca).add_(plan["x"][k0:k1], alpha=cb).add_(co)

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), ...: the cached plans follow
        self._plans = {}
        return super()._apply(fn, *args, **kwargs)

    def _chunks(self, n_pairs: int, device: torch.device) -> list[tuple[int, int]]:
        """Ranges ``[k0, k1)`` of at most ``chunk`` (element, pixel) pairs; each is done for every transmit."""
        chunk = self._params["chunk"] or (_CHUNK_CUDA if device.type == "cuda" else _CHUNK_CPU)
        return [(k0, min(k0 + chunk, n_pairs)) for k0 in range(0, n_pairs, chunk)]

    def _taps(self, plan: dict, a: int, k0: int, k1: int):
        """Hat-kernel taps of transmit ``a`` and pairs ``k0 .. k1-1``: ``(i, W)``, both ``(k1 - k0,)``.

        The channels are padded to ``L = n_samples + 3`` (sample ``t`` at ``t + 1``); the padded
        delay ``s + 1`` is clamped to ``[0, n_samples + 1]``, so that a delay off the record puts
        its weight on padding only.  Tap 0, weight ``w0 = w (1 - f)`` (``f`` the fractional
        delay), is at flat index ``i`` of transmit ``a``'s ``(n_elements, L)`` block, tap 1,
        ``w1 = w f``, at ``i + 1``; ``W = w0 - i w1`` carries both (complex).
        """
        nt = self.range_shape[2]
        s = self._delays(plan, a, k0, k1).clamp_(0, nt + 1)
        i = s.to(torch.int32)  # truncation = floor as s >= 0; int32: less memory traffic, faster gathers
        w1 = s.sub_(i).mul_(plan["w"][k0:k1])
        W = torch.complex(plan["w"][k0:k1] - w1, w1.neg_())
        return i.add_(plan["off"][k0:k1]), W

    # ------------------------------------------------------------------ operator
    # Frames ride in the last axis, so that every gathered or scattered index moves a
    # contiguous row of B values, and both interpolation taps travel as one complex number:
    # the forward accumulates x_p conj(W) = x_p w0 + i x_p w1 at index i, the adjoint reads the
    # pair v[i] + i v[i + 1] and keeps Re(pair W) = w0 v[i] + w1 v[i + 1].  One index_add_ /
    # index_select instead of two, and complex products instead of strided real/imaginary
    # views: about 3x faster on the CPU than two real taps.
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        na, ne, nt = self.range_shape
        plan = self._plan(x.device, x.dtype)
        xt = x.reshape(b, -1).t().contiguous()  # (P, B)
        u = torch.zeros(na, ne * (nt + 3), b, dtype=_complex_of(x.dtype), device=x.device)
        for k0, k1 in self._chunks(plan["p"].numel(), x.device):
            xs = xt.index_select(0, plan["p"][k0:k1]).to(u.dtype)  # gathered once, used by every transmit
            for a in range(na):
                i, W = self._taps(plan, a, k0, k1)
                # int64 for index_add_: its int32 path is ~20x slower on the CPU (torch 2.13)
                u[a].index_add_(0, i.long(), xs * W[:, None])
        u = torch.view_as_real(u).view(na, ne, nt + 3, b, 2)
        u = u[:, :, 1 : nt + 1, :, 0] - u[:, :, 0:nt, :, 1]  # sample t: tap 0 at t + 1, tap 1 at t (+ 1); Im W = -w1
        return convolve_time(u.permute(3, 0, 1, 2), self._taps_h)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        b = y.shape[0]
        na, ne, nt = self.range_shape
        plan = self._plan(y.device, y.dtype)
        v = correlate_time(y, self._taps_h)
        v = torch.nn.functional.pad(v, (1, 3)).permute(1, 2, 3, 0)  # (na, ne, L + 1, B), L = nt + 3 padded
        pairs = torch.view_as_complex(torch.stack([v[:, :, :-1], v[:, :, 1:]], -1)).reshape(na, ne * (nt + 3), b)
        out = torch.zeros(self.domain_shape[0] * self.domain_shape[1], b, dtype=y.dtype, device=y.device)
        for k0, k1 in self._chunks(plan["p"].numel(), y.device):
            acc = torch.zeros(k1 - k0, b, dtype=y.dtype, device=y.device)
            for a in range(na):  # sum over transmits first: one scatter per chunk, not one per transmit
                i, W = self._taps(plan, a, k0, k1)
                acc += (pairs[a].index_select(0, i) * W[:, None]).real
            out.index_add_(0, plan["p"][k0:k1], acc)
        return out.t().reshape(b, *self.domain_shape)

    def _diag_normal(self, plan: dict) -> torch.Tensor:
        """The diagonal of ``A^T A``: a unit reflector's delay-and-sum value at its own pixel, ``(P,)``.

        ``sum_{a,e} w^2 [((1 - f)^2 + f^2) R_0 + 2 f (1 - f) R_1]`` with ``f`` the fractional
        delay and ``R_k = sum_j h_j h_{j+k}`` the pulse autocorrelation (pulse taps cut by the
        ends of the record are ignored).  Cached in the plan; pixels no channel records get 1.
        """
        if "diag" not in plan:
            h = np.asarray(self._taps_h)
            r0, r1 = float(np.sum(h * h)), float(np.sum(h[1:] * h[:-1]))
            nt = self.range_shape[2]
            d = torch.zeros(self.domain_shape[0] * self.domain_shape[1], dtype=plan["rx"].dtype,
                            device=plan["rx"].device)
            for k0, k1 in self._chunks(plan["p"].numel(), d.device):
                acc = torch.zeros_like(plan["w"][k0:k1])
                for a in range(self.n_angles):
                    s = self._delays(plan, a, k0, k1)
                    f = s - torch.floor(s)
                    on = (s >= 1) & (s <= nt)  # both taps on the record
                    acc += on * (((1 - f) ** 2 + f * f) * r0 + 2 * f * (1 - f) * r1)
                d.index_add_(0, plan["p"][k0:k1], plan["w"][k0:k1] ** 2 * acc)
            top = float(d.max())
            plan["diag"] = torch.where(d > 1e-6 * top, d, torch.ones_like(d)) if top > 0 else torch.ones_like(d)
        return plan["diag"]

    def classical(self, y: torch.Tensor) -> torch.Tensor:
        """Delay-and-sum RF image ``A^T y / diag(A^T A)`` (module docstring), ``(B, nz, nx)``."""
        x = self.adjoint(y)
        return x / self._diag_normal(self._plan(x.device, x.dtype)).view(self.domain_shape)


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64
