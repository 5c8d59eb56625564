"""Centred, orthonormal 2D Fourier transforms over the last two axes (torch and numpy).

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``: the k-space centre (DC) sits at
index ``n // 2`` of each axis, and the image centre at pixel ``n // 2``, as in fastMRI and
SigPy (``center=True``).  With ``norm="ortho"`` the transform is unitary, so ``ifft2c`` is
both its inverse and its adjoint, and ``||fft2c(x)|| = ||x||``.

>>> import torch
>>> x = torch.zeros(4, 4, dtype=torch.complex64); x[2, 2] = 1
>>> bool(torch.allclose(fft2c(x), torch.full((4, 4), 0.25, dtype=torch.complex64)))
True
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["fft2c", "ifft2c", "fft1c_np", "ifft1c_np", "fft2c_np", "ifft2c_np"]

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
