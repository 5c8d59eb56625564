"""Orthonormal 2D discrete wavelet transform (Daubechies filters, periodic boundary) in torch.

Filters
-------
``dbN`` (N = 1 ... 10; ``haar`` = ``db1``) is Daubechies' minimum-phase orthonormal scaling
filter with N vanishing moments and 2N taps, computed here by spectral factorisation
(Daubechies, *Ten Lectures on Wavelets*, 1992, sec. 6.1), not copied from a table::

    H(z) = sqrt(2) ((1 + z^-1) / 2)^N Q(z),    |Q(e^iw)|^2 = P(sin^2(w/2)),
    P(y) = sum_{k=0}^{N-1} C(N-1+k, k) y^k

Each root ``y_r`` of ``P`` gives the pair ``z, 1/z`` of roots of ``z^2 - (2 - 4 y_r) z + 1``
(since ``y = (2 - z - 1/z) / 4`` on the unit circle); ``Q`` keeps the one inside the unit
circle (minimum phase), and ``h`` is scaled to ``sum h = sqrt(2)``.  The closed forms:
``db1 = (1, 1) / sqrt(2)``; ``db2 = (1 + sqrt3, 3 + sqrt3, 3 - sqrt3, 1 - sqrt3) / (4 sqrt2)``.
The filters agree with PyWavelets' ``rec_lo`` to 4e-15 (tested).  The high-pass filter is
``g[j] = (-1)^j h[2N-1-j]``.

Transform
---------
One level along an axis of even length ``n`` (indices mod ``n``, i.e. periodization)::

    a[k] = sum_j h[j] x[2k + j - (N-1)],    d[k] = sum_j g[j] x[2k + j - (N-1)],   k < n/2

(the shift ``-(N-1)`` is PyWavelets' ``mode="periodization"`` convention, so the coefficients
equal ``pywt.wavedec2(x, "dbN", "periodization", level)`` laid out by ``pywt.coeffs_to_array``;
tested).  Because the shifts by 2 of ``h`` and ``g`` are orthonormal, so are their periodized
versions for any even ``n``: the one-level map ``x -> (a, d)`` is orthogonal, its adjoint (the
transposed convolution, wrapped back mod ``n``) is its inverse.  A 2D level applies it along
x (the last axis) and then y, and stores the result in place as ``[[LL, LH], [HL, HH]]``
(rows: low/high in y; columns: low/high in x); the next level transforms the top-left ``LL``
block.  After ``J`` levels the top-left ``(py / 2^J, px / 2^J)`` block is the approximation
band (:attr:`Wavelet2D.approx_shape`), everything else detail.

Sizes that are not multiples of ``2^J``: every level needs an even length, so the image is
zero-padded at the bottom/right to ``coeff_shape``, the next multiple of ``2^J`` per axis.
``T`` (:meth:`Wavelet2D.transform`, :meth:`Wavelet2D.inverse`) is the orthogonal transform of
the *padded* grid (``T^T T = T T^T = I``); ``W = T P`` (:meth:`Wavelet2D.forward`) with ``P``
the zero-padding, and ``W^T = P^T T^T`` (:meth:`Wavelet2D.adjoint`: inverse, then crop).
``W`` is an isometry, ``W^T W = I`` (perfect reconstruction; the adjoint is a left inverse),
and when the shape is already a multiple of ``2^J``, ``P = I`` and ``W`` is orthogonal.
Iterative solvers that need the exact proximal map of ``||W x||_1`` work on the padded grid
with ``T`` (see :mod:`medrecon.samplers.l1wavelet`).

Tensors are ``(..., ny, nx)``, real or complex (a complex image is transformed as its real
and imaginary parts, the transform being real), on any device; float64 in, float64 out.

>>> import torch
>>> W = Wavelet2D((30, 21), "db4", levels=2)
>>> W.coeff_shape, W.approx_shape
((32, 24), (8, 6))
>>> x = torch.randn(2, 30, 21, dtype=torch.complex128)
>>> c = W.forward(x)
>>> tuple(c.shape)
(2, 32, 24)
>>> bool(torch.allclose(W.adjoint(c), x, atol=1e-12))        # W^T W = I
True
>>> bool(torch.allclose(c.abs().square().sum(), x.abs().square().sum()))   # energy kept
True
>>> [round(v, 6) for v in daubechies(2)]
[0.482963, 0.836516, 0.224144, -0.12941]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medrecon.errors import InputError

__all__ = ["WAVELETS", "Wavelet2D", "daubechies", "default_levels", "max_levels"]

#: wavelet names :class:`Wavelet2D` accepts
WAVELETS: tuple[str, ...] = ("haar",) + tuple(f"db{n}" for n in range(1, 11))


@functools.cache
def daubechies(n: int) -> tuple[float, ...]:
    """The ``2n`` taps of Daubechies' orthonormal minimum-phase scaling filter ``dbn`` (module docstring).

    >>> h = daubechies(3)
    >>> len(h), round(sum(h), 12), round(sum(v * v for v in h), 12)
    (6, 1.414213562373, 1.0)
    """
    n = int(n)
    if not 1 <= n <= 10:
        raise InputError(f"Daubechies filters are available for 1 to 10 vanishing moments, got {n}")
    q = np.ones(1)
    if n > 1:
        p = [math.comb(n - 1 + k, k) for k in range(n)]  # P(y), increasing powers
        zs = []
        for yr in np.roots(p[::-1]):
            z = np.roots([1.0, -(2.0 - 4.0 * yr), 1.0])
            zs.append(z[np.argmin(np.abs(z))])  # the root inside the unit circle
        q = np.real(np.poly(zs))  # prod_r (1 - r z^-1), coefficients of z^0, z^-1, ...
    binom = np.array([math.comb(n, k) for k in range(n + 1)], dtype=np.float64)
    h = np.convolve(binom, q)
    h = h * (math.sqrt(2.0) / h.sum())
    return tuple(float(v) for v in h)


def _order(wavelet: str) -> int:
    name = str(wavelet).strip().lower()
    if name == "haar":
        return 1
    if name not in WAVELETS:
        raise InputError(f"unknown wavelet {wavelet!r}; use one of {', '.join(WAVELETS)}")
    return int(name[2:])


def max_levels(shape: Sequence[int], wavelet: str = "db4") -> int:
    """PyWavelets' ``dwt_max_level``: ``floor(log2(min(shape) / (taps - 1)))``, at least 1; the
    deepest level whose coarsest band is still as long as the filter."""
    taps = 2 * _order(wavelet)
    n = min(int(s) for s in shape)
    return max(1, int(math.floor(math.log2(max(n, 1) / max(taps - 1, 1)))))


def default_levels(shape: Sequence[int], wavelet: str = "db4", cap: int = 4) -> int:
    """``min(max_levels(shape, wavelet), cap)``: 3 for 64 x 64 with db4, 4 from 128 x 128."""
    return min(max_levels(shape, wavelet), int(cap))


class Wavelet2D:
    """The orthonormal ``levels``-level 2D DWT of ``(..., ny, nx)`` images (module docstring).

    ``forward(x)`` -> coefficients ``(..., *coeff_shape)`` (zero-pads ``x`` first), ``adjoint(c)``
    -> image ``(..., ny, nx)`` (inverse transform, then crop): ``W^T W = I``.  ``transform`` /
    ``inverse`` are the orthogonal transform of the padded grid, ``pad`` / ``crop`` the
    embedding and its adjoint.  ``levels=None``: :func:`default_levels`.
    """

    def __init__(self, shape: Sequence[int], wavelet: str = "db4", levels: int | None = None) -> None:
        try:
            ny, nx = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise InputError(f"the wavelet transform needs an image shape (ny, nx), got {shape!r}") from None
        if ny < 1 or nx < 1:
            raise InputError(f"the wavelet transform needs a positive image shape, got {tuple(shape)}")
        self.order = _order(wavelet)
        self.wavelet = "db1" if str(wavelet).strip().lower() == "haar" else str(wavelet).strip().lower()
        if levels is None:
            levels = default_levels((ny, nx), self.wavelet)
        if isinstance(levels, bool) or int(levels) != levels or int(levels) < 1:
            raise InputError(f"wavelet levels must be a positive integer, got {levels!r}")
        levels = int(levels)
        if 2**levels > min(ny, nx):
            raise InputError(f"{levels} wavelet levels need an image of at least {2**levels} pixels per side, "
                             f"got {ny} x {nx}")
        self.shape = (ny, nx)
        self.levels = levels
        m = 2**levels
        self.coeff_shape = (-(-ny // m) * m, -(-nx // m) * m)
        self.approx_shape = (self.coeff_shape[0] // m, self.coeff_shape[1] // m)
        h = np.array(daubechies(self.order))
        taps = len(h)
        g = np.array([(-1) ** j * h[taps - 1 - j] for j in range(taps)])
        self._bank = np.stack([h, g])[:, None, :]  # (2, 1, taps): low- and high-pass
        self._weights: dict[tuple, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"Wavelet2D(shape={self.shape}, wavelet={self.wavelet!r}, levels={self.levels})"

    # ------------------------------------------------------------------ padding
    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``(..., ny, nx)`` at the bottom/right to ``(..., *coeff_shape)`` (``P``)."""
        self._check(x, self.shape, "image")
        dy, dx = self.coeff_shape[0] - self.shape[0], self.coeff_shape[1] - self.shape[1]
        return F.pad(x, (0, dx, 0, dy)) if dy or dx else x

    def crop(self, u: torch.Tensor) -> torch.Tensor:
        """The top-left ``(ny, nx)`` of a padded image (``P^T``)."""
        self._check(u, self.coeff_shape, "padded image")
        return u[..., : self.shape[0], : self.shape[1]]

    def approx_mask(self, *, device=None, dtype=torch.float32) -> torch.Tensor:
        """``(*coeff_shape)`` tensor: 1 on the approximation band (top-left ``approx_shape``), 0 elsewhere."""
        m = torch.zeros(self.coeff_shape, dtype=dtype, device=device)
        m[: self.approx_shape[0], : self.approx_shape[1]] = 1
        return m

    # ------------------------------------------------------------------ W = T P, W^T = P^T T^T
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Coefficients ``W x = T P x`` of ``(..., ny, nx)`` images, shaped ``(..., *coeff_shape)``."""
        return self.transform(self.pad(x))

    def adjoint(self, c: torch.Tensor) -> torch.Tensor:
        """``W^T c = P^T T^T c``: the image ``(..., ny, nx)`` (``adjoint(forward(x)) == x``)."""
        return self.crop(self.inverse(c))

    __call__ = forward

    # ------------------------------------------------------------------ T, T^T = T^-1 (padded grid)
    def transform(self, u: torch.Tensor) -> torch.Tensor:
        """The orthogonal transform ``T`` of padded images ``(..., *coeff_shape)``."""
        self._check(u, self.coeff_shape, "padded image")
        if u.is_complex():
            return torch.complex(self.transform(u.real), self.transform(u.imag))
        c = u.clone()
        h, w = self.coeff_shape
        for _ in range(self.levels):
            blk = self._analysis(c[..., :h, :w], -1)
            c[..., :h, :w] = self._analysis(blk, -2)
            h, w = h // 2, w // 2
        return c

    def inverse(self, c: torch.Tensor) -> torch.Tensor:
        """``T^T = T^-1``: padded images from coefficients ``(..., *coeff_shape)``."""
        self._check(c, self.coeff_shape, "coefficient array")
        if c.is_complex():
            return torch.complex(self.inverse(c.real), self.inverse(c.imag))
        u = c.clone()
        for lev in reversed(range(self.levels)):
            h, w = self.coeff_shape[0] >> lev, self.coeff_shape[1] >> lev
            blk = self._synthesis(u[..., :h, :w], -2)
            u[..., :h, :w] = self._synthesis(blk, -1)
        return u

    # ------------------------------------------------------------------ one level along one axis
    def _weight(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        wt = self._weights.get(key)
        if wt is None:
            wt = torch.as_tensor(self._bank, dtype=like.dtype, device=like.device)
            self._weights[key] = wt
        return wt

    def _index(self, n: int, device) -> torch.Tensor:
        # the periodically extended signal x[(i - (N-1)) mod n], i < n + taps - 2
        taps = 2 * self.order
        return (torch.arange(n + taps - 2, device=device) - (self.order - 1)) % n

    def _analysis(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """``[a | d]`` along ``axis`` (-1 or -2) of a real tensor (length even)."""
        if axis == -2:
            return self._analysis(x.transpose(-1, -2), -1).transpose(-1, -2)
        lead, n = x.shape[:-1], x.shape[-1]
        ext = x.index_select(-1, self._index(n, x.device)).reshape(-1, 1, n + 2 * self.order - 2)
        out = F.conv1d(ext, self._weight(x), stride=2)  # (M, 2, n/2): cross-correlation with h, g
        return out.reshape(*lead, n)

    def _synthesis(self, c: torch.Tensor, axis: int) -> torch.Tensor:
        """The adjoint (= inverse) of :meth:`_analysis` along ``axis``."""
        if axis == -2:
            return self._synthesis(c.transpose(-1, -2), -1).transpose(-1, -2)
        lead, n = c.shape[:-1], c.shape[-1]
        ext = F.conv_transpose1d(c.reshape(-1, 2, n // 2), self._weight(c), stride=2)  # (M, 1, n + taps - 2)
        # fold back mod n (the adjoint of the periodic extension): entry i of ext adds to
        # x[(i - (N-1)) mod n]; summing whole periods keeps it deterministic (no scatter-add)
        ext = ext[:, 0]
        periods = -(-ext.shape[1] // n)
        folded = F.pad(ext, (0, periods * n - ext.shape[1])).reshape(-1, periods, n).sum(1)
        out = torch.roll(folded, -(self.order - 1), dims=1) if self.order > 1 else folded
        return out.reshape(*lead, n)

    def _check(self, t: torch.Tensor, shape: tuple[int, int], what: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise InputError(f"the wavelet transform expects a torch.Tensor {what}, got {type(t).__name__}")
        if t.ndim < 2 or tuple(t.shape[-2:]) != tuple(shape):
            raise InputError(f"the wavelet transform expects a {what} shaped (..., {shape[0]}, {shape[1]}), "
                             f"got {tuple(t.shape)}")
        if not (t.is_floating_point() or t.is_complex()):
            raise InputError(f"the wavelet transform expects a floating or complex {what}, got {t.dtype}")
