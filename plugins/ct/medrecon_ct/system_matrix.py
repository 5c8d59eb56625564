"""Sparse CT system matrices (Joseph's method), built once per geometry and cached.

The projection ``y = A x`` of a 2D image is a line integral along every ray.
Joseph's method steps along the ray one pixel row at a time (one column at a time
when the ray is closer to horizontal), takes the image value at the crossing by
linear interpolation between the two nearest pixels of that row, and multiplies
by the step length ``pixel_size / |d_y|`` (mm).  Those interpolation weights
form a sparse matrix ``A`` with about ``2 * max(ny, nx)`` non-zeros per ray,
shape ``(n_views * n_det, ny * nx)``.

A batch of slices is projected by one sparse-dense product ``A @ X`` with ``X``
shaped ``(ny * nx, B)``, so the matrix is read once per batch and its cost is
shared by every slice.  The adjoint is ``A^T @ Y`` with a precomputed CSR copy of
``A^T``: exact by construction (the dot-product test holds to rounding).

Caches: an in-memory LRU keyed by ``(geometry hash, device, dtype)`` (size limit
``MEDRECON_CT_CACHE_GB``, default 8), and optionally a disk cache of the CSR
arrays under ``$MEDRECON_CACHE_DIR`` (default ``~/.cache/medrecon``)/ct, switched
on by ``MEDRECON_CT_DISK_CACHE=1``.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from medrecon_ct.geometry import _Geometry

__all__ = ["SystemMatrix", "build_joseph_csr", "get_system_matrix", "clear_cache", "last_build_seconds"]

_LOCK = threading.RLock()
_CPU: "OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]]" = OrderedDict()
_TORCH: "OrderedDict[tuple, SystemMatrix]" = OrderedDict()
_BUILD_SECONDS: dict[str, float] = {}


def last_build_seconds(key: str) -> float | None:
    """Seconds spent building (or loading from disk) the matrix of geometry ``key``."""
    return _BUILD_SECONDS.get(key)


def clear_cache() -> None:
    """Drop every cached system matrix from memory."""
    with _LOCK:
        _CPU.clear()
        _CPU_T.clear()
        _TORCH.clear()


def _joseph_run(px, py, dx, dy, vert: bool, shape, ps):
    """Joseph weights for consecutive rays that all step along rows (``vert``) or
    all along columns: returns ``(non-zeros per ray, columns int32, values float32)``
    in ray-major order."""
    ny, nx = shape
    if vert:  # step through rows: Y_i = ((ny-1)/2 - i) ps
        n_step, n_other = ny, nx
        a_pos = ((ny - 1) / 2.0 - np.arange(ny)) * ps
        o_main, o_other, d_main, d_other = py, px, dy, dx
    else:  # step through columns: X_j = (j - (nx-1)/2) ps
        n_step, n_other = nx, ny
        a_pos = (np.arange(nx) - (nx - 1) / 2.0) * ps
        o_main, o_other, d_main, d_other = px, py, dx, dy
    t = (a_pos[None, :] - o_main[:, None]) / d_main[:, None]  # (r, n_step) mm along the ray
    other = o_other[:, None] + t * d_other[:, None]  # mm along the other axis
    f = other / ps + (nx - 1) / 2.0 if vert else (ny - 1) / 2.0 - other / ps  # fractional index
    f0 = np.floor(f)
    w1 = (f - f0).astype(np.float32)
    f0 = f0.astype(np.int32)
    length = (ps / np.abs(d_main)).astype(np.float32)[:, None, None]
    # two taps per step: (f0, 1 - w1) and (f0 + 1, w1)
    idx = np.stack([f0, f0 + 1], -1)  # (r, n_step, 2)
    w = np.stack([1.0 - w1, w1], -1) * length
    ok = (idx >= 0) & (idx < n_other) & (w != 0)
    step = np.arange(n_step, dtype=np.int32)[None, :, None]
    pix = step * nx + idx if vert else idx * nx + step
    return ok.sum(axis=(1, 2)), pix[ok], w[ok]


def matrix_bytes(geom) -> int:
    """An upper estimate of the bytes :func:`build_joseph_csr` allocates: the rays (4 float64 per
    ray), and ``A`` and its transpose with at most ``2 max(ny, nx)`` entries per ray, each an int32
    column and a float32 value, held about twice while converting."""
    ny, nx = geom.shape
    n_rays = int(geom.n_views) * int(geom.n_det)
    return n_rays * 32 + 2 * 2 * n_rays * 2 * max(ny, nx) * 8


def build_joseph_csr(geom: _Geometry, chunk_elems: int = 1 << 21):
    """Build ``A`` in CSR form as numpy arrays ``(indptr int32, indices int32, data float32, shape)``.

    Rays are processed in runs of equal stepping direction, in chunks of about
    ``chunk_elems`` ray-steps, so entries come out in ray order and memory stays
    bounded.  Vertical rays have sorted column indices, horizontal ones are in
    step order (CSR products do not need sorted columns).
    """
    from medrecon.io.budget import require

    ny, nx = geom.shape
    require(matrix_bytes(geom), f"the CT system matrix of {geom.n_views} views x {geom.n_det} detector bins on a "
                                f"{ny}x{nx} grid")
    pts, dirs = geom.rays()
    ps = float(geom.pixel_size)
    n_rays = pts.shape[0]
    per = max(1, chunk_elems // max(ny, nx))
    vertical = np.abs(dirs[:, 1]) >= np.abs(dirs[:, 0])
    bounds = [0, *(np.flatnonzero(np.diff(vertical)) + 1).tolist(), n_rays]
    counts_all = np.zeros(n_rays, np.int64)
    cols_chunks, vals_chunks = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        vert = bool(vertical[a])
        for r0 in range(a, b, per):
            r1 = min(b, r0 + per)
            c, cols, vals = _joseph_run(pts[r0:r1, 0], pts[r0:r1, 1], dirs[r0:r1, 0], dirs[r0:r1, 1],
                                        vert, (ny, nx), ps)
            counts_all[r0:r1] = c
            cols_chunks.append(cols)
            vals_chunks.append(vals)
    nnz = int(counts_all.sum())
    if nnz >= 2**31 - 1:
        raise MemoryError(f"the system matrix would hold {nnz} non-zeros; use a smaller geometry")
    indptr = np.zeros(n_rays + 1, np.int32)
    np.cumsum(counts_all, out=indptr[1:])
    indices = np.concatenate(cols_chunks) if cols_chunks else np.zeros(0, np.int32)
    data = np.concatenate(vals_chunks) if vals_chunks else np.zeros(0, np.float32)
    return indptr, indices, data, (n_rays, ny * nx)


def _transpose_csr(indptr, indices, data, shape):
    import scipy.sparse as sp

    m = sp.csr_matrix((data, indices, indptr), shape=shape)
    t = m.tocsc()  # CSC of A == CSR of A^T, indices sorted
    return (t.indptr.astype(np.int32, copy=False), t.indices.astype(np.int32, copy=False),
            t.data.astype(np.float32, copy=False), (shape[1], shape[0]))


def _disk_dir() -> Path | None:
    if os.environ.get("MEDRECON_CT_DISK_CACHE", "0").lower() in ("", "0", "false", "no"):
        return None
    base = os.environ.get("MEDRECON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "medrecon")
    return Path(base) / "ct"


def _load_or_build_cpu(geom: _Geometry):
    key = geom.key()
    with _LOCK:
        if key in _CPU:
            _CPU.move_to_end(key)
            return _CPU[key]
    t0 = time.perf_counter()
    d = _disk_dir()
    arrs = None
    if d is not None and (d / f"{key}.npz").is_file():
        try:
            with np.load(d / f"{key}.npz") as z:
                arrs = (z["indptr"], z["indices"], z["data"], tuple(int(v) for v in z["shape"]))
        except Exception:  # noqa: BLE001 - a corrupt cache file is rebuilt
            arrs = None
    if arrs is None:
        arrs = build_joseph_csr(geom)
        if d is not None:
            try:
                d.mkdir(parents=True, exist_ok=True)
                tmp = d / f"{key}.{os.getpid()}.tmp.npz"
                np.savez(tmp, indptr=arrs[0], indices=arrs[1], data=arrs[2], shape=np.array(arrs[3]))
                os.replace(tmp, d / f"{key}.npz")
            except OSError:
                pass
    _BUILD_SECONDS[key] = time.perf_counter() - t0
    with _LOCK:
        _CPU[key] = arrs
        while len(_CPU) > 3:
            _CPU.popitem(last=False)
    return arrs


_CPU_T: "OrderedDict[str, tuple]" = OrderedDict()


def _transpose_cached(geom: _Geometry):
    key = geom.key()
    with _LOCK:
        if key in _CPU_T:
            _CPU_T.move_to_end(key)
            return _CPU_T[key]
    t0 = time.perf_counter()
    out = _transpose_csr(*_load_or_build_cpu(geom))
    _BUILD_SECONDS[key] = _BUILD_SECONDS.get(key, 0.0) + time.perf_counter() - t0
    with _LOCK:
        _CPU_T[key] = out
        while len(_CPU_T) > 3:
            _CPU_T.popitem(last=False)
    return out


class SystemMatrix:
    """``A`` and ``A^T`` as torch CSR tensors on one device and dtype.

    ``forward(x)``: ``(B, ny, nx) -> (B, n_views, n_det)``;
    ``adjoint(y)``: ``(B, n_views, n_det) -> (B, ny, nx)``.
    """

    def __init__(self, geom: _Geometry, device: torch.device, dtype: torch.dtype):
        indptr, indices, data, shape = _load_or_build_cpu(geom)
        self.geom = geom
        self.shape = shape

        def csr(p, i, v, s):
            # int32 indices: about 3x faster than int64 in torch's CPU kernel
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
                return torch.sparse_csr_tensor(
                    torch.from_numpy(p), torch.from_numpy(i), torch.from_numpy(v).to(dtype),
                    size=s, check_invariants=False,
                ).to(device)

        self._csr = csr
        self._device, self._dtype = device, dtype
        self.A = csr(indptr, indices, data, shape)
        self._AT: torch.Tensor | None = None
        self.nbytes = 2 * data.size * (torch.finfo(dtype).bits // 8 + 4) + 4 * (shape[0] + shape[1])

    @property
    def AT(self) -> torch.Tensor:
        """``A^T`` as CSR (the transpose is computed on first use and cached)."""
        if self._AT is None:
            with _LOCK:
                if self._AT is None:
                    self._AT = self._csr(*_transpose_cached(self.geom))
        return self._AT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        X = x.reshape(b, -1).t().contiguous()
        with torch.autocast(device_type=X.device.type, enabled=False):  # sparse products stay in fp32/64
            Y = self.A @ X
        return Y.t().reshape(b, self.geom.n_views, self.geom.n_det)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        b = y.shape[0]
        Y = y.reshape(b, -1).t().contiguous()
        with torch.autocast(device_type=Y.device.type, enabled=False):
            X = self.AT @ Y
        return X.t().reshape(b, *self.geom.shape)


def get_system_matrix(geom: _Geometry, device, dtype: torch.dtype) -> SystemMatrix:
    """The (cached) :class:`SystemMatrix` of ``geom`` on ``device`` in ``dtype``."""
    device = torch.device(device)
    k = (geom.key(), str(device), dtype)
    with _LOCK:
        if k in _TORCH:
            _TORCH.move_to_end(k)
            return _TORCH[k]
    sm = SystemMatrix(geom, device, dtype)
    limit = float(os.environ.get("MEDRECON_CT_CACHE_GB", "8")) * 1e9
    with _LOCK:
        _TORCH[k] = sm
        total = sum(v.nbytes for v in _TORCH.values())
        while len(_TORCH) > 1 and total > limit:
            _, old = _TORCH.popitem(last=False)
            total -= old.nbytes
    return sm
