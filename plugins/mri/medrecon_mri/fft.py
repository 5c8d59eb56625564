"""Centred, orthonormal 2D Fourier transforms over the last two axes (torch and numpy).

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``: the k-space centre (DC) sits at
index ``n // 2`` of each axis, and the image centre at pixel ``n // 2``, as in fastMRI and
SigPy (``center=True``).  With ``norm="ortho"`` the transform is unitary, so ``ifft2c`` is
both its inverse and its adjoint, and ``||fft2c(x)|| = ||x||``.

>>> import torch
>>> x = torch.zeros(4, 4, dtype=torch.complex64); x[2, 2] = 1
>>> bool(torch.allclose(fft2c(x), torch.full((4, 4), 0.25, dtype=torch.complex64)))
True

Shifts as sign flips (even sizes).  For an even length ``N``, with ``c[n] = (-1)^n`` and
``g = (-1)^(N/2)``, the shifts are modulations::

    fftshift(fft(ifftshift(x)))[k]  = g c[k] fft(c x)[k]
    fftshift(ifft(ifftshift(y)))[n] = g c[n] ifft(c y)[n]

(``ifftshift`` moves ``x[n + N/2]`` to ``n``, which multiplies the transform by
``(-1)^k``; the final ``fftshift`` reads it at ``k + N/2``, which multiplies the input by
``(-1)^n``.)  The operators use this to skip the four copies the shifts cost per call:
with the checkerboard ``C = c_y c_x`` and the signed mask ``M' = g_y g_x C M``::

    M fft2c(v)  = M' fft2(C v),        ifft2c(M y) = C ifft2(M' y)

and ``C v = S (C x)`` needs the checkerboard only on the (single-coil) image.  Odd sizes
keep the shifts (:func:`shift_free`).

>>> x = torch.randn(3, 6, 8, dtype=torch.complex64)
>>> C = checkerboard(6, 8)
>>> g = centred_sign(6, 8)
>>> bool(torch.allclose(fft2c(x), g * C * torch.fft.fft2(C * x, norm="ortho"), atol=1e-5))
True
>>> bool(torch.allclose(ifft2c(x), g * C * torch.fft.ifft2(C * x, norm="ortho"), atol=1e-5))
True
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["fft2c", "ifft2c", "shift_free", "checkerboard", "centred_sign", "fft1c_np", "ifft1c_np", "fft2c_np", "ifft2c_np"]

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT of the last two axes (image -> k-space)."""
    if not x.is_complex():
        x = x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2D FFT of the last two axes (k-space -> image); adjoint of :func:`fft2c`."""
    if not k.is_complex():
        k = k.to(torch.complex128 if k.dtype == torch.float64 else torch.complex64)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_DIMS), norm="ortho"), dim=_DIMS)


def shift_free(ny: int, nx: int) -> bool:
    """Whether the centred transforms of a ``(ny, nx)`` grid can be sign flips (both sizes even)."""
    return ny % 2 == 0 and nx % 2 == 0


def checkerboard(ny: int, nx: int) -> torch.Tensor:
    """``C[i, j] = (-1)^(i + j)``, float32 ``(ny, nx)`` (see the module docstring)."""
    c = 1.0 - 2.0 * (torch.arange(ny)[:, None] + torch.arange(nx)[None, :]).remainder(2)
    return c.to(torch.float32)


def centred_sign(ny: int, nx: int) -> float:
    """The global sign ``g = (-1)^(ny/2 + nx/2)`` of the shift-free centred transforms (even sizes)."""
    return -1.0 if (ny // 2 + nx // 2) % 2 else 1.0


def fft1c_np(x: np.ndarray, axis: int) -> np.ndarray:
    """Centred orthonormal 1D FFT along ``axis`` (numpy)."""
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(x, axes=axis), axis=axis, norm="ortho"), axes=axis)


def ifft1c_np(k: np.ndarray, axis: int) -> np.ndarray:
    """Centred orthonormal inverse 1D FFT along ``axis`` (numpy)."""
    return np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(k, axes=axis), axis=axis, norm="ortho"), axes=axis)


def fft2c_np(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT of the last two axes (numpy)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=_DIMS), norm="ortho"), axes=_DIMS)


def ifft2c_np(k: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse 2D FFT of the last two axes (numpy)."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=_DIMS), norm="ortho"), axes=_DIMS)
