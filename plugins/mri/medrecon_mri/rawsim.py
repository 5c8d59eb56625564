"""Realistic raw multi-coil k-space from a magnitude image: what a scanner would have measured.

The synthetic ``mri.sense`` simulation (birdcage maps with ``sum_c |S_c|^2 = 1``, a real
image, white noise, maps *given* to the reconstruction) is the easy case.  Raw data differs
in four ways, and :func:`realistic_raw_kspace` puts all four in:

1. **Coil sensitivities from physics, not normalised.**  Each receive coil is a loop seen
   in the imaging plane as two parallel wires at ``z1``, ``z2`` (complex positions in units
   of half the field of view) carrying opposite currents.  In 2D the receive field of a wire
   at ``z_w``, as the complex combination ``B_x - i B_y`` that an MR coil measures, is
   ``-i / (z - z_w)`` (Biot-Savart), so the loop's sensitivity is::

       S_c(z) = g_c (1 / (z - z1) - 1 / (z - z2))

   with ``g_c`` a random complex gain.  ``sum_c |S_c|^2`` is far from 1: the RSS image is
   shaded brighter near the coils, as on a scanner.
2. **Image phase.**  ``x = |image| exp(i phi)`` with ``phi`` a smooth random field (random
   Fourier coefficients of wavelength at least a quarter of the field of view, RMS
   ``phase_rms`` radians) plus a linear ramp (an off-centre echo).
3. **Noise correlated across coils.**  Complex Gaussian with covariance ``Psi = D R D``:
   ``R_ij = rho^|i - j|`` between neighbouring coils (``rho = coil_correlation``) and ``D``
   random per-coil noise levels within +-20 %; its overall level ``noise`` is relative to the
   RMS of the noiseless k-space.
4. **Fully sampled**, so that the reference is what a user has: the root-sum-of-squares of
   the fully sampled noisy coil images (:func:`reference_rss`); undersampling is applied
   afterwards (the importer's ``undersample`` option), and the maps must be estimated from
   the undersampled data.

Everything is seeded.  Layout: ``(coils, ny, nx)`` with the readout down the rows and the
phase-encode lines the columns (:mod:`medrecon_mri.masks`).

>>> import numpy as np
>>> img = np.zeros((32, 32), np.float32); img[8:24, 8:24] = 1
>>> k, maps = realistic_raw_kspace(img, n_coils=4, seed=0)
>>> k.shape, maps.shape, k.dtype
((4, 32, 32), (4, 32, 32), dtype('complex64'))
>>> r = reference_rss(k)
>>> bool(r[16, 16] > 10 * r[2, 2])    # the object is bright, the background is noise
True
"""

from __future__ import annotations

import math

import numpy as np

from medrecon.errors import InputError
from medrecon_mri.fft import fft2c_np, ifft2c_np

__all__ = ["loop_coil_maps", "smooth_phase", "correlated_noise", "realistic_raw_kspace", "reference_rss",
           "write_fastmri"]


def _grid(shape) -> np.ndarray:
    """Complex pixel positions ``x + i y`` in units of half the field of view (centre pixel 0)."""
    ny, nx = shape
    y = (np.arange(ny) - ny // 2) / (ny / 2)
    x = (np.arange(nx) - nx // 2) / (nx / 2)
    return x[None, :] + 1j * y[:, None]


def loop_coil_maps(shape, n_coils: int = 8, *, radius: float = 1.25, loop_size: float = 0.6,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Sensitivities ``(n_coils, ny, nx)`` of loop coils on a circle around the field of view.

    Coil ``c`` is centred at angle ``2 pi c / n_coils`` (jittered) on a circle of ``radius``
    (units of half the field of view, > 1 so the coils sit outside the image), its two wires
    ``loop_size`` apart along the tangent; see the module docstring for the field.  Each map
    is scaled so that its peak inside the field of view is about 1 (times a random gain
    within +-20 % and a random phase).
    """
    rng = rng or np.random.default_rng(0)
    if n_coils < 1:
        raise InputError(f"n_coils must be >= 1, got {n_coils}")
    z = _grid(shape)
    maps = []
    for c in range(int(n_coils)):
        a = 2 * math.pi * c / n_coils + rng.uniform(-0.15, 0.15)
        centre = radius * np.exp(1j * a)
        tangent = 1j * np.exp(1j * a)
        z1, z2 = centre + tangent * loop_size / 2, centre - tangent * loop_size / 2
        s = 1 / (z - z1) - 1 / (z - z2)
        s = s / np.abs(s).max()
        gain = rng.uniform(0.8, 1.2) * np.exp(1j * rng.uniform(-math.pi, math.pi))
        maps.append(gain * s)
    return np.stack(maps).astype(np.complex64)


def smooth_phase(shape, *, phase_rms: float = 1.0, ramp: float = 1.0,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """A smooth random phase map (radians) ``(ny, nx)``: a band-limited random field of RMS
    ``phase_rms`` (spatial frequencies up to 4 cycles per field of view) plus a linear ramp
    of up to ``ramp`` radians across the field of view in a random direction."""
    rng = rng or np.random.default_rng(0)
    ny, nx = shape
    ky = np.fft.fftfreq(ny) * ny
    kx = np.fft.fftfreq(nx) * nx
    keep = (np.abs(ky)[:, None] <= 4) & (np.abs(kx)[None, :] <= 4)
    coef = (rng.standard_normal((ny, nx)) + 1j * rng.standard_normal((ny, nx))) * keep
    field = np.fft.ifft2(coef).real
    field *= phase_rms / max(float(field.std()), 1e-12)
    z = _grid(shape)
    d = np.exp(1j * rng.uniform(0, 2 * math.pi))
    return (field + ramp / 2 * (z * np.conj(d)).real).astype(np.float32)


def correlated_noise(shape, sigma: float, *, coil_correlation: float = 0.3,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Complex Gaussian noise ``(C, ...)`` with coil covariance ``sigma^2 D R D`` (module docstring)."""
    rng = rng or np.random.default_rng(0)
    C = int(shape[0])
    if not 0 <= coil_correlation < 1:
        raise InputError(f"coil_correlation must be in [0, 1), got {coil_correlation!r}")
    i = np.arange(C)
    R = coil_correlation ** np.abs(i[:, None] - i[None, :])
    D = np.diag(rng.uniform(0.8, 1.2, C))
    L = np.linalg.cholesky(D @ R @ D)
    w = (rng.standard_normal((C, int(np.prod(shape[1:])))) + 1j * rng.standard_normal(
        (C, int(np.prod(shape[1:]))))) / math.sqrt(2)
    return (float(sigma) * (L @ w)).reshape(shape).astype(np.complex64)


def realistic_raw_kspace(image, n_coils: int = 8, *, seed: int = 0, noise: float = 0.01,
                         phase_rms: float = 1.0, ramp: float = 1.0, coil_correlation: float = 0.3,
                         radius: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Fully sampled raw k-space ``(n_coils, ny, nx)`` complex64 of a magnitude ``image`` (module docstring).

    Returns ``(kspace, maps)``; ``maps`` are the true sensitivities (for diagnosis only: a
    reconstruction must estimate its own).  ``noise``: the noise standard deviation per
    complex sample relative to the RMS of the noiseless k-space.
    """
    img = np.abs(np.asarray(image, dtype=np.float64))
    if img.ndim != 2 or not np.all(np.isfinite(img)):
        raise InputError(f"the image must be a finite 2D array, got shape {img.shape}")
    rng = np.random.default_rng(seed)
    maps = loop_coil_maps(img.shape, n_coils, radius=radius, rng=rng)
    x = img * np.exp(1j * smooth_phase(img.shape, phase_rms=phase_rms, ramp=ramp, rng=rng))
    k = fft2c_np(maps * x[None])
    sigma = float(noise) * float(np.sqrt(np.mean(np.abs(k) ** 2)))
    k = k + correlated_noise(k.shape, sigma, coil_correlation=coil_correlation, rng=rng)
    return k.astype(np.complex64), maps


def reference_rss(kspace: np.ndarray) -> np.ndarray:
    """The fully sampled root-sum-of-squares image ``sqrt(sum_c |F^H k_c|^2)`` (float32)."""
    return np.sqrt((np.abs(ifft2c_np(np.asarray(kspace))) ** 2).sum(0)).astype(np.float32)


def write_fastmri(path, kspace: np.ndarray, mask=None) -> None:
    """Write ``kspace`` ``(slices, coils, readout, phase encode)`` (or one slice, 3D) as a
    fastMRI-style HDF5 file (a ``kspace`` dataset; an optional 1D ``mask`` dataset)."""
    import h5py

    k = np.asarray(kspace, np.complex64)
    if k.ndim == 3:
        k = k[None]
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k)
        if mask is not None:
            f.create_dataset("mask", data=np.asarray(mask, np.float32).reshape(-1))
