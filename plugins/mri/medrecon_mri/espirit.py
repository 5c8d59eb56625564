"""ESPIRiT coil sensitivities (Uecker et al., MRM 71:990, 2014), with numpy only.

Calibration matrix
    Take the fully sampled calibration (ACS) block ``y_c(q)`` of the ``C`` coils and every
    position ``p`` at which a ``kernel x kernel`` window fits inside it.  The row of ``A``
    for ``p`` is the window's ``C * kernel**2`` samples ``y_c(p + j)``, ``j`` in the window
    (a block-Hankel matrix).  Because every coil image is one image times a smooth
    sensitivity, ``y_c = F(S_c x)``, the patches of *any* image lie in a low-dimensional
    subspace: with ``A = U Sigma V^H``, the span of the rows ``v_1 .. v_K`` of ``V^H`` whose
    singular value exceeds ``thresh`` times the largest (the signal subspace; the other rows
    span the null space, the GRAPPA-like relations every patch obeys).
ESPIRiT operator
    Projecting every patch of a k-space ``y`` onto the signal subspace and averaging the
    ``kernel**2`` patches that cover each sample is a multi-coil convolution, so in the
    image it acts pixel by pixel as the ``C x C`` matrix

        ``G(r) = 1 / kernel**2 * sum_v k_v(r) k_v(r)^H``,
        ``k_{v,c}(r) = sum_j v_v[c, j] exp(2 pi i j . r / N)``

    (the kernels zero-padded to the full grid and inverse-Fourier transformed:
    ``k_v = sqrt(ny nx) ifft2c(pad(v_v))``).  ``G(r)`` is an average of projections, so its
    eigenvalues lie in ``[0, 1]``, without units.  Data that obey the calibration,
    ``m_c(r) = S_c(r) x(r)``, are left unchanged: ``G(r) S(r) = S(r)`` wherever ``x != 0``.
    The maps are therefore the eigenvector of ``G(r)`` of eigenvalue (about) one; where the
    largest eigenvalue is below ``crop`` (outside the object, where no data constrain the
    subspace) the maps are set to zero.  Each eigenvector has unit norm
    (``sum_c |S_c|^2 = 1``) and an arbitrary phase per pixel, fixed here so that the
    virtual body coil ``w^H S(r)`` is real and positive (``w``: the dominant
    eigenvector of the calibration data's coil covariance), which is smooth wherever the
    object is (the caller may re-align the phase to an image).

Computation, in bounded memory
    ``k_{v,c} conj(k_{v,c'})`` has frequencies only in ``[-(kernel-1), kernel-1]`` on each
    axis, so ``G`` is a trigonometric polynomial with ``(2 kernel - 1)**2`` coefficients per
    coil pair, computed exactly on a ``2 kernel x 2 kernel`` grid (cost independent of the
    image size and, after this step, of the number of kernels ``K``).  ``G`` is then
    evaluated a block of rows at a time (two small matrix products), and its dominant
    eigenpair is found by power iteration from the column of largest diagonal, with a
    batched ``eigh`` for the pixels whose residual ``||G s - lambda s||`` has not dropped below
    ``1e-4`` (eigenvalues are accurate to about that).  ``G`` is held one block of rows at a
    time (64 MiB of complex64, plus a compacted copy while iterating), never as
    ``(K, C, ny, nx)``: 32 coils at 320 x 320 peak at about 190 MiB and take ~2 s on one core.

Calibration block
    ``espirit_maps`` uses the central ``MAX_CALIB`` (48) lines of each side of the given
    region: for a 1D (column) mask the ACS spans every readout row, and all of them would
    only make the SVD slow; ``(48 - kernel + 1)`` positions down the readout times those
    across the ACS columns are ample, since the signal subspace has of the order of
    ``(kernel + b)**2`` dimensions (``b`` the coils' bandwidth) whatever the number of coils.
    Each side needs at least ``max(kernel + 1, 2 kernel - 2)`` lines (10 for the default 6 x 6
    kernel, 8 for 5 x 5, 6 for 4 x 4): with fewer, the patches no longer span the signal
    subspace and the eigenvalues fall below ``crop`` across much of the object (measured on a
    Shepp-Logan phantom with 8 and 16 birdcage coils; a narrower ACS needs a smaller kernel).

>>> import numpy as np
>>> from medrecon_mri.coils import synthetic_coil_maps
>>> from medrecon_mri.fft import fft2c_np
>>> yy, xx = np.mgrid[-32:32, -32:32] / 32
>>> x = np.exp(-(yy**2 + xx**2) / 0.3) * np.exp(1j * xx)          # smooth complex object
>>> S = synthetic_coil_maps((64, 64), 8)                            # sum_c |S_c|^2 = 1
>>> k = fft2c_np(S * x)
>>> maps, eig = espirit_maps(k, slice(20, 44), slice(20, 44))
>>> inside = np.abs(x) > 0.2
>>> bool(np.all(np.abs(eig[inside] - 1) < 0.01))                   # eigenvalue ~1 in the object
True
>>> bool(np.all(np.abs((np.conj(maps) * S).sum(0))[inside] > 0.99))  # maps = S up to a phase
True
"""

from __future__ import annotations

import numpy as np

from medrecon.errors import InputError
from medrecon_mri.fft import fft2c_np, ifft2c_np

__all__ = ["espirit_maps", "min_calib", "MAX_CALIB"]

MAX_CALIB = 48  # at most this many central lines of each side of the calibration region are used
_BLOCK_BYTES = 64 * 2**20  # per-block size of the (pixels, C, C) complex64 matrices
_TOL = 1e-4  # residual ||G s - lambda s|| at which power iteration stops
_MAX_ITER = 40


def min_calib(kernel: int) -> int:
    """The fewest calibration lines per side that a ``kernel x kernel`` ESPIRiT kernel needs (module docstring)."""
    return max(int(kernel) + 1, 2 * int(kernel) - 2)


def _central(sl: slice, n: int, cap: int, what: str) -> slice:
    if not isinstance(sl, slice) or sl.step not in (None, 1):
        raise InputError(f"{what} must be a slice with step 1, got {sl!r}")
    start, stop, _ = sl.indices(n)
    stop = max(start, stop)
    if stop - start > cap:
        mid = (start + stop) // 2
        start = mid - cap // 2
        stop = start + cap
    return slice(start, stop)


def _calibration_matrix(block: np.ndarray, kernel: int) -> np.ndarray:
    """``(positions, C * kernel**2)``: every ``kernel x kernel x C`` patch of ``block`` ``(C, h, w)``."""
    win = np.lib.stride_tricks.sliding_window_view(block, (kernel, kernel), axis=(1, 2))  # (C, ph, pw, k, k)
    return np.ascontiguousarray(win.transpose(1, 2, 0, 3, 4)).reshape(-1, block.shape[0] * kernel * kernel)


def _signal_subspace(A: np.ndarray, thresh: float) -> np.ndarray:
    """Orthonormal basis ``(K, n)`` of the patches' signal subspace: the rows of ``V^H`` (``A = U S V^H``)
    whose singular value exceeds ``thresh`` times the largest (as rows, they are the patches' own space)."""
    p, n = A.shape
    if p >= n:  # eigen-decomposition of the smaller Gram matrix
        lam, V = np.linalg.eigh(A.conj().T @ A)
        keep = lam > thresh**2 * lam[-1]
        return V[:, keep][:, ::-1].T.conj()
    lam, U = np.linalg.eigh(A @ A.conj().T)
    keep = lam > thresh**2 * lam[-1]
    lam, U = lam[keep][::-1], U[:, keep][:, ::-1]
    return (U.conj().T @ A) / np.sqrt(lam)[:, None]  # rows of V^H = u^H A / sigma


def _coefficients(V: np.ndarray, C: int, kernel: int) -> np.ndarray:
    """Fourier coefficients ``(C, C, 2 kernel - 1, 2 kernel - 1)`` of ``G(r)`` (module docstring)."""
    M = 2 * kernel  # >= 2 kernel - 1 samples: the trigonometric polynomial G is exact on this grid
    pad = np.zeros((len(V), C, M, M), complex)
    o = M // 2 - kernel // 2
    pad[:, :, o:o + kernel, o:o + kernel] = V.reshape(len(V), C, kernel, kernel)
    km = M * ifft2c_np(pad)  # k_v on the coarse grid (unnormalised sums)
    gm = np.einsum("vcyx,vdyx->cdyx", km, km.conj()) / kernel**2
    a = fft2c_np(gm) / M  # a[..., M//2 + d]: coefficient of exp(2 pi i d . (r - centre) / N)
    lo = M // 2 - (kernel - 1)
    return a[:, :, lo:lo + 2 * kernel - 1, lo:lo + 2 * kernel - 1]


def _exponentials(n: int, kernel: int) -> np.ndarray:
    d = np.arange(-(kernel - 1), kernel)
    return np.exp(2j * np.pi * np.outer(np.arange(n) - n // 2, d) / n)  # (n, 2 kernel - 1)


def _dominant(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dominant eigenpairs of Hermitian PSD ``G`` ``(P, C, C)``: vectors ``(P, C)``, values ``(P,)``."""
    P, C, _ = G.shape
    diag = np.einsum("pcc->pc", G).real
    s = G[np.arange(P), :, diag.argmax(1)]  # G e_j: never orthogonal to the dominant eigenvector
    s = s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-30)
    lam = np.zeros(P, np.float32)
    active = np.arange(P)  # pixels in the working set; g, x: their matrices and vectors
    g, x = G, s.copy()
    for _ in range(_MAX_ITER):
        y = (g @ x[:, :, None])[:, :, 0]
        lam_a = np.einsum("pc,pc->p", x.conj(), y).real
        nrm = np.linalg.norm(y, axis=1)
        go = (np.linalg.norm(y - lam_a[:, None] * x, axis=1) > _TOL) & (nrm > 0)
        lam[active], s[active] = lam_a, x  # final where converged
        if not go.any():
            break
        x = np.where(go[:, None], y / np.where(nrm > 0, nrm, 1)[:, None], x)
        if go.mean() < 0.5:  # compact the working set (converged vectors otherwise iterate on, harmlessly)
            active, g, x, go = active[go], g[go], x[go], go[go]
    else:  # slow convergence (close eigenvalues): exact decomposition
        left = active[go]
        w, v = np.linalg.eigh(G[left])
        lam[left], s[left] = w[:, -1], v[:, :, -1]
    return s, lam


def espirit_maps(kspace, calib_rows: slice, calib_cols: slice, *, kernel: int = 6, thresh: float = 0.02,
                 crop: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """ESPIRiT maps ``(C, ny, nx)`` complex64 and their eigenvalues ``(ny, nx)`` float32.

    ``kspace``: ``(C, ny, nx)`` complex, zeros where not sampled, centred as in
    :mod:`medrecon_mri.fft`; ``kspace[:, calib_rows, calib_cols]`` must be fully sampled (its
    central ``MAX_CALIB`` lines per side are used).  ``kernel``: the k-space kernel width;
    ``thresh``: singular values above ``thresh`` times the largest span the signal subspace;
    ``crop``: maps are zero where the largest eigenvalue is at most ``crop``.  The maps have
    unit norm over the coils where not cropped, and the phase of the virtual body coil
    (module docstring).
    """
    k = np.asarray(kspace)
    if k.ndim != 3:
        raise InputError(f"ESPIRiT needs k-space shaped (coils, ny, nx), got {k.shape}")
    if isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or kernel < 1:
        raise InputError(f"the ESPIRiT kernel width must be a positive integer, got {kernel!r}")
    for name, v in (("thresh", thresh), ("crop", crop)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise InputError(f"the ESPIRiT {name} must be a number in [0, 1), got {v!r}")
    if not np.isfinite(k).all():
        raise InputError("the k-space holds NaN or infinite values; ESPIRiT needs finite data")
    kernel = int(kernel)
    C, ny, nx = k.shape
    rs = _central(calib_rows, ny, MAX_CALIB, "calib_rows")
    cs = _central(calib_cols, nx, MAX_CALIB, "calib_cols")
    h, w = rs.stop - rs.start, cs.stop - cs.start
    need = min_calib(kernel)
    if min(h, w) < need:
        raise InputError(f"the {h} x {w} calibration region is too small for a {kernel} x {kernel} ESPIRiT "
                         f"kernel, which needs at least {need} fully sampled central lines on each side; "
                         "use --import-option coil_method=lowres, or give a larger calib=")
    block = k[:, rs, cs].astype(np.complex128)
    scale = np.abs(block).max()
    if scale == 0:
        raise InputError("the calibration region of the k-space is all zeros; ESPIRiT needs the sampled centre")
    block = block / scale

    V = _signal_subspace(_calibration_matrix(block, kernel), float(thresh))
    a = _coefficients(V, C, kernel)  # (C, C, D, D)
    D = a.shape[-1]
    ey, ex = _exponentials(ny, kernel), _exponentials(nx, kernel)
    # T[dy, x, c, c'] = sum_dx a[c, c', dy, dx] ex[x, dx]; G[y] = sum_dy ey[y, dy] T[dy]
    T = np.einsum("cdil,xl->ixcd", a, ex).astype(np.complex64).reshape(D, -1)
    ey = ey.astype(np.complex64)

    flat = block.reshape(C, -1)  # virtual body coil: dominant eigenvector of the coil covariance
    wv = np.linalg.eigh(flat @ flat.conj().T)[1][:, -1].astype(np.complex64)

    maps = np.zeros((ny, nx, C), np.complex64)
    eig = np.zeros((ny, nx), np.float32)
    rows = max(1, _BLOCK_BYTES // (8 * C * C * nx))
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        G = (ey[y0:y1] @ T).reshape(-1, C, C)
        s, lam = _dominant(G)
        ref = s @ wv.conj()
        s = s * (np.conj(ref) / np.maximum(np.abs(ref), 1e-30))[:, None]
        s[lam <= crop] = 0
        maps[y0:y1] = s.reshape(y1 - y0, nx, C)
        eig[y0:y1] = lam.reshape(y1 - y0, nx)
    return np.ascontiguousarray(np.moveaxis(maps, -1, 0)), eig
