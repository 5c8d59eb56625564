"""B-mode display of ultrasound RF images: envelope detection and log compression.

An ultrasound image beamformed from RF channel data (delay-and-sum, or a reconstruction
in the RF domain) is a real signal that oscillates along depth at the transducer's centre
frequency ``f0``.  It is displayed as a **B-mode** image in three steps:

1. **Envelope** (:func:`envelope`): the magnitude of the analytic signal along the axial
   (depth) axis, ``e = |rf + i H{rf}|`` with ``H`` the Hilbert transform.  It is computed
   with the FFT: ``X = FFT(rf)``, keep the DC term (and the Nyquist term for an even
   length), double the positive frequencies, zero the negative ones, ``e = |IFFT(X h)|``
   (the same construction as :func:`scipy.signal.hilbert`).  A complex (IQ) input is
   already analytic: its envelope is ``|iq|``.
2. **Log compression** (:func:`log_compress`): ``b = 20 log10(e / e_ref)`` in dB,
   clipped to ``[-DR, 0]`` with ``DR`` the **dynamic range** (60 dB by default).  The
   reference ``e_ref`` defaults to the maximum of each frame (the last two axes), so the
   brightest pixel of every frame is 0 dB; pass ``reference`` (a number in the
   envelope's units) to compare frames or methods on one absolute scale.
3. :func:`bmode` does both.

Axis convention: images are ``(..., nz, nx)`` = (..., depth, lateral), so the axial axis
is ``-2``.  Functions take numpy arrays or torch tensors and return the same kind
(torch stays on its device and keeps autograd).

Example::

    >>> import numpy as np
    >>> z = np.arange(256)[:, None] * np.ones((1, 4))
    >>> rf = np.exp(-((z - 128) / 20.0) ** 2) * np.cos(0.8 * z)
    >>> env = envelope(rf)                 # the Gaussian exp(-((z-128)/20)^2)
    >>> round(float(env[128, 0]), 2)
    1.0
    >>> b = bmode(rf, dynamic_range_db=40)
    >>> float(b.max()), float(b.min())
    (0.0, -40.0)
"""

from __future__ import annotations

import math

import numpy as np

from medrecon.errors import InputError

__all__ = ["envelope", "log_compress", "bmode", "AXIAL"]

#: The axial (depth) axis of an image shaped (..., nz, nx).
AXIAL = -2


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _check_finite(x, what: str) -> None:
    if _is_torch(x):
        import torch

        ok = bool(torch.isfinite(x).all())
    else:
        ok = bool(np.all(np.isfinite(x)))
    if not ok:
        raise InputError(f"the {what} holds NaN or infinite values")


def _hilbert_weights(n: int) -> np.ndarray:
    """``h`` of the FFT Hilbert construction: 1 at DC (and Nyquist for even n), 2 for positive frequencies."""
    h = np.zeros(n)
    h[0] = 1.0
    if n % 2 == 0:
        h[n // 2] = 1.0
        h[1: n // 2] = 2.0
    else:
        h[1: (n + 1) // 2] = 2.0
    return h


def envelope(rf, axis: int = AXIAL):
    """Envelope ``|rf + i H{rf}|`` along ``axis`` (default the axial axis, -2).

    Parameters
    ----------
    rf : numpy.ndarray or torch.Tensor
        Real RF samples (any units), or complex IQ / analytic data (then ``|rf|``).
    axis : int
        The axial (fast-time / depth) axis.

    Returns the envelope, same shape and kind (numpy float64 for numpy input; a real
    torch tensor of the input's precision for torch input).  For
    ``rf = a(z) cos(w z + phi)`` with an envelope ``a`` that varies slowly compared to
    the carrier, ``envelope(rf) = a`` up to edge effects of the FFT's periodic
    extension.
    """
    if _is_torch(rf):
        import torch

        if rf.ndim == 0:
            raise InputError("envelope needs an array with an axial axis, got a scalar")
        _check_finite(rf, "RF data")
        if rf.is_complex():
            return rf.abs()
        n = rf.shape[axis]
        x = torch.fft.fft(rf, dim=axis)
        shape = [1] * rf.ndim
        shape[axis] = n
        h = torch.as_tensor(_hilbert_weights(n), dtype=rf.dtype, device=rf.device).reshape(shape)
        return torch.fft.ifft(x * h, dim=axis).abs()
    a = np.asarray(rf)
    if a.ndim == 0:
        raise InputError("envelope needs an array with an axial axis, got a scalar")
    if a.dtype.kind not in "biufc":
        raise InputError(f"envelope needs numeric RF data, got dtype {a.dtype}")
    _check_finite(a, "RF data")
    if np.iscomplexobj(a):
        return np.abs(a)
    n = a.shape[axis]
    shape = [1] * a.ndim
    shape[axis] = n
    x = np.fft.fft(a.astype(np.float64, copy=False), axis=axis)
    return np.abs(np.fft.ifft(x * _hilbert_weights(n).reshape(shape), axis=axis))


def _check_dr(dynamic_range_db) -> float:
    try:
        dr = float(dynamic_range_db)
    except (TypeError, ValueError):
        raise InputError(f"the dynamic range is a number of dB, got {dynamic_range_db!r}") from None
    if not (math.isfinite(dr) and dr > 0):
        raise InputError(f"the dynamic range must be a positive number of dB, got {dynamic_range_db!r}")
    return dr


def log_compress(env, dynamic_range_db: float = 60.0, reference=None):
    """Log compression ``clip(20 log10(env / reference), -DR, 0)`` in dB.

    Parameters
    ----------
    env : numpy.ndarray or torch.Tensor
        Envelope (non-negative; the absolute value is taken), shaped ``(..., nz, nx)``.
    dynamic_range_db : float
        ``DR`` > 0: values more than DR dB below the reference are shown as ``-DR``.
    reference : float, optional
        Envelope value shown as 0 dB.  Default: the maximum of each frame (the last two
        axes; a 1D input is one frame), so each frame spans ``[-DR, 0]``.  Values above a
        given reference are clipped to 0 dB.

    Returns dB values in ``[-DR, 0]``, same shape and kind.  Zero envelope maps to ``-DR``
    (an all-zero frame is ``-DR`` everywhere).
    """
    dr = _check_dr(dynamic_range_db)
    torch_in = _is_torch(env)
    if torch_in:
        import torch

        _check_finite(env, "envelope")
        e = env.abs()
        axes = tuple(range(-min(2, e.ndim), 0)) if e.ndim else ()
        ref = (e.amax(dim=axes, keepdim=True) if axes else e) if reference is None else \
            torch.as_tensor(float(reference), dtype=e.dtype, device=e.device)
        tiny = torch.finfo(e.dtype).tiny
        ref = torch.as_tensor(ref, dtype=e.dtype, device=e.device)
        db = 20.0 * (torch.log10(e.clamp_min(tiny)) - torch.log10(ref.clamp_min(tiny)))
        return torch.where(ref > 0, db, torch.full_like(db, -dr)).clamp(-dr, 0.0)
    e = np.abs(np.asarray(env, dtype=np.float64))
    _check_finite(e, "envelope")
    if reference is None:
        axes = tuple(range(-min(2, e.ndim), 0))
        ref = e.max(axis=axes, keepdims=True) if axes else e
    else:
        try:
            ref = float(reference)
        except (TypeError, ValueError):
            raise InputError(f"the log-compression reference is a number, got {reference!r}") from None
        if not (math.isfinite(ref) and ref > 0):
            raise InputError(f"the log-compression reference must be positive and finite, got {reference!r}")
    tiny = np.finfo(np.float64).tiny
    db = 20.0 * (np.log10(np.maximum(e, tiny)) - np.log10(np.maximum(ref, tiny)))
    return np.clip(np.where(np.asarray(ref) > 0, db, -dr), -dr, 0.0)


def bmode(rf, dynamic_range_db: float = 60.0, axis: int = AXIAL, reference=None):
    """B-mode image in dB: ``log_compress(envelope(rf, axis), dynamic_range_db, reference)``.

    ``rf`` is an RF image ``(..., nz, nx)`` (real; complex IQ is taken as analytic), numpy
    or torch.  Returns dB in ``[-DR, 0]`` (0 dB = each frame's brightest pixel unless a
    ``reference`` envelope value is given).
    """
    return log_compress(envelope(rf, axis), dynamic_range_db, reference)
