"""The transmit pulse: a Gaussian-modulated sinusoid, and convolution with it along time.

Pulse (two-way impulse response of the probe, dimensionless)::

    h(t) = exp(-a t^2) cos(2 pi f0 t),      a = (pi f0 B)^2 / (4 L),   L = (6 / 20) ln 10

``f0`` is the centre frequency (Hz) and ``B`` the fractional bandwidth at -6 dB: the spectrum
``|H(f)|`` falls to ``10^(-6/20)`` (0.501) of its peak at ``f0 (1 +- B / 2)``.  This is ``scipy.signal.gausspulse(t,
fc=f0, bw=B, bwr=-6)``.  The envelope's standard deviation is ``sigma = 1 / sqrt(2 a)``
seconds (0.125 us at 5 MHz, B = 0.6).  Sampled at ``t_k = k / fs`` for ``|k| <= K``,
``K = ceil(4 sigma fs)`` (the envelope is below 3.4e-4 beyond), the taps are even in ``k``.

Along the last (time) axis::

    convolve:   (h * u)[t] = sum_k h_k u[t - k]
    correlate:  (h # v)[t] = sum_k h_k v[t + k]        (the adjoint of convolve)

both with zero padding and the output as long as the input ("same"), so ``<h * u, v> =
<u, h # v>`` exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["convolve_time", "correlate_time", "gaussian_pulse", "pulse_sigma"]


def pulse_sigma(f0_hz: float, bandwidth: float) -> float:
    """Envelope standard deviation ``sigma = 1 / sqrt(2 a) = sqrt(2 L) / (pi f0 B)`` in seconds."""
    return math.sqrt(2.0 * 0.3 * math.log(10.0)) / (math.pi * f0_hz * bandwidth)


def gaussian_pulse(f0_hz: float, bandwidth: float, fs_hz: float) -> np.ndarray:
    """Taps ``h_k = h(k / fs)``, ``k = -K .. K`` (float64, length ``2K + 1``, centre tap 1).

    >>> h = gaussian_pulse(5e6, 0.6, 20e6)
    >>> len(h), float(h[len(h) // 2])
    (21, 1.0)
    """
    sigma = pulse_sigma(f0_hz, bandwidth)
    half = max(1, math.ceil(4.0 * sigma * fs_hz))
    t = np.arange(-half, half + 1) / fs_hz
    a = 1.0 / (2.0 * sigma * sigma)
    return np.exp(-a * t * t) * np.cos(2.0 * math.pi * f0_hz * t)


def _apply(u: torch.Tensor, w) -> torch.Tensor:
    """``out[t] = sum_j w[j] u[t + j - K]`` along the last axis (zero padding, same length).

    A sum of ``2K + 1`` shifted, scaled copies: for a short pulse on many channels this is
    several times faster than ``conv1d`` with one input channel (measured 26 ms against
    160 ms for 1280 channels x 1536 samples x 21 taps on one CPU thread), and exact.
    """
    taps = [float(v) for v in (w.tolist() if isinstance(w, torch.Tensor) else w)]
    k = (len(taps) - 1) // 2
    n = u.shape[-1]
    up = F.pad(u, (k, k))
    out = up[..., 0:n] * taps[0]
    for j in range(1, len(taps)):
        if taps[j] != 0.0:
            out.add_(up[..., j : j + n], alpha=taps[j])
    return out


def convolve_time(u: torch.Tensor, h) -> torch.Tensor:
    """``(h * u)[t] = sum_k h_k u[t - k]`` along the last axis (``h`` odd length, centred; a
    tensor or a sequence of numbers)."""
    taps = h.tolist() if isinstance(h, torch.Tensor) else list(h)
    return _apply(u, taps[::-1])


def correlate_time(v: torch.Tensor, h) -> torch.Tensor:
    """``(h # v)[t] = sum_k h_k v[t + k]`` along the last axis: the adjoint of :func:`convolve_time`."""
    return _apply(v, h)
