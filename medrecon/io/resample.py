"""Resampling a volume onto other sample positions: along the slice axis (an unevenly spaced
series onto even spacing) and onto the grid of another volume (a reference onto a
reconstruction's grid, :func:`medrecon.evaluation.evaluate` with ``resample_reference``).

Both reduce to one 1D rule per axis, :func:`axis_weights`: an output sample whose centre lies at
the fractional input index ``c`` and whose footprint is ``w`` input pixels wide is

* the **area average** of the input over ``[c - w/2, c + w/2]`` when ``w > 1`` (shrinking; each
  input pixel ``i`` covers ``[i - 1/2, i + 1/2]`` and is weighted by its overlap), so an integer
  factor gives block means, as :func:`medrecon.simulation.resample_inplane` does;
* **linear interpolation** between the two nearest input centres when ``w <= 1`` (same size or
  enlarging; a centre up to half a pixel beyond the first / last one takes that pixel's value).

Every row of weights sums to 1 (constants are kept).  The weights are sparse (at most
``ceil(w) + 1`` taps per output sample) and are applied slice by slice, so the peak memory is the
output volume plus one slice.
"""

from __future__ import annotations

import copy

import numpy as np

from medrecon.errors import InputError
from medrecon.volume import Volume

__all__ = ["axis_weights", "resample_slices", "resample_to_grid", "grid_mapping"]

#: how far (input pixels) a footprint may reach past the input's edge and still count as inside
EDGE_TOL = 1e-3


def axis_weights(n_in: int, centres: np.ndarray, width: float) -> np.ndarray:
    """``(n_out, n_in)`` weights taking a 1D signal on ``n_in`` pixels to samples centred at the
    fractional input indices ``centres`` with footprints ``width`` input pixels wide (see the
    module doc: area average when ``width > 1``, linear interpolation otherwise).

    ``centres`` must lie in ``[-1/2, n_in - 1/2]`` (and, when averaging, the whole footprint);
    callers check that with :func:`_outside` first.

    >>> axis_weights(4, np.array([0.5, 2.5]), 2.0).tolist()   # 2:1 block means
    [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    >>> axis_weights(3, np.array([0.25, 2.0]), 1.0).tolist()  # linear
    [[0.75, 0.25, 0.0], [0.0, 0.0, 1.0]]
    """
    c = np.asarray(centres, dtype=np.float64)
    w = np.zeros((c.size, int(n_in)), dtype=np.float64)
    width = abs(float(width))
    if width > 1.0 + 1e-9:
        for o, cc in enumerate(c):
            a, b = cc - width / 2 + 0.5, cc + width / 2 + 0.5  # footprint in edge coordinates
            a, b = max(a, 0.0), min(b, float(n_in))
            for i in range(int(np.floor(a)), min(int(np.ceil(b)), n_in)):
                w[o, i] = max(0.0, min(b, i + 1) - max(a, i))
    else:
        cl = np.clip(c, 0.0, n_in - 1)
        i0 = np.minimum(np.floor(cl).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = cl - i0
        w[np.arange(c.size), i0] += 1.0 - f
        w[np.arange(c.size), i1] += f
    s = w.sum(axis=1, keepdims=True)
    return w / np.where(s > 0, s, 1.0)


def _outside(n_in: int, centres: np.ndarray, width: float) -> np.ndarray:
    """Which samples reach outside ``[-1/2, n_in - 1/2]`` (by more than :data:`EDGE_TOL` pixels)."""
    half = abs(float(width)) / 2 if abs(float(width)) > 1.0 + 1e-9 else 0.0
    c = np.asarray(centres, dtype=np.float64)
    return (c - half < -0.5 - EDGE_TOL) | (c + half > n_in - 0.5 + EDGE_TOL)


def _apply_k(data: np.ndarray, wk: np.ndarray, wy: np.ndarray | None = None,
             wx: np.ndarray | None = None) -> np.ndarray:
    """``out[m] = wy @ (sum_i wk[m, i] data[i]) @ wx.T`` for every output slice ``m`` (float32)."""
    ny = data.shape[1] if wy is None else wy.shape[0]
    nx = data.shape[2] if wx is None else wx.shape[0]
    out = np.empty((wk.shape[0], ny, nx), dtype=np.float32)
    for m in range(wk.shape[0]):
        taps = np.nonzero(wk[m])[0]
        acc = np.zeros(data.shape[1:], dtype=np.float64)
        for i in taps:
            acc += wk[m, i] * data[i]
        if wy is not None:
            acc = wy @ acc
        if wx is not None:
            acc = acc @ wx.T
        out[m] = acc
    return out


def resample_slices(data: np.ndarray, positions: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Slices ``data`` ``(Z, Y, X)`` at the increasing positions ``positions`` (mm along the slice
    normal, uneven) onto even spacing: targets ``t_m = positions[0] + m * spacing`` for
    ``m = 0 .. floor((positions[-1] - positions[0]) / spacing)``, each the linear interpolation in
    physical position between the two input slices around it.  Returns ``(new_data, targets)``;
    the first slice stays where it was, the last target is at most one ``spacing`` short of the
    last input slice.

    >>> d, t = resample_slices(np.array([0.0, 3.0, 6.0]).reshape(3, 1, 1), np.array([0.0, 1.0, 4.0]), 2.0)
    >>> d[:, 0, 0].tolist(), t.tolist()   # 2 mm lies a third of the way from 1 mm to 4 mm
    ([0.0, 4.0, 6.0], [0.0, 2.0, 4.0])
    """
    d = np.asarray(positions, dtype=np.float64)
    if not np.isfinite(spacing) or spacing <= 0:
        raise InputError(f"the slice spacing to resample to must be a positive number of mm, got {spacing!r}")
    n_out = int(np.floor((d[-1] - d[0]) / spacing + 1e-6)) + 1
    from medrecon.io.budget import array_bytes, require

    require(array_bytes((n_out, *data.shape[1:]), 4),
            f"resampling {data.shape[0]} slices to {n_out} evenly spaced ones ({spacing:.4g} mm)")
    targets = d[0] + spacing * np.arange(n_out)
    frac = np.interp(targets, d, np.arange(d.size, dtype=np.float64))  # fractional input index
    return _apply_k(data, axis_weights(d.size, frac, 1.0)), targets


def grid_mapping(src: Volume, dst_shape, dst_affine) -> np.ndarray:
    """``inv(src.affine) @ dst_affine``: the 4x4 map from voxel indices ``(i, j, k)`` of the grid
    ``(dst_shape, dst_affine)`` to fractional voxel indices of ``src``."""
    return np.linalg.inv(src.affine) @ np.asarray(dst_affine, dtype=np.float64)


def resample_to_grid(src: Volume, dst_shape, dst_affine, what: str = "the volume",
                     onto: str = "the target grid") -> Volume:
    """``src`` resampled onto the grid ``dst_shape`` ``(Z, Y, X)`` / ``dst_affine`` (RAS mm), the
    same physical space: ``M = inv(A_src) @ A_dst`` takes a target voxel to its fractional source
    index; each axis of the target must run along one axis of the source (``M``'s 3x3 part
    diagonal up to 1e-4 of a voxel: shifts, scalings and flips, no rotation).  Along each axis the
    target voxel ``n`` is centred at ``c = M[a, a] n + M[a, 3]`` with footprint ``|M[a, a]|``
    source voxels, weighted by :func:`axis_weights` (area average when the target voxels are
    larger, linear interpolation otherwise).  A target grid that reaches outside ``src`` (by
    more than :data:`EDGE_TOL` voxels) raises :class:`InputError` saying where; ``what`` /
    ``onto`` name the two grids in it.  ``meta["resampled_to_grid"]`` records the mapping.
    """
    shape = tuple(int(s) for s in dst_shape)
    m = grid_mapping(src, shape, dst_affine)
    lin = m[:3, :3]
    off = lin - np.diag(np.diag(lin))
    if np.max(np.abs(off)) > 1e-4 or np.min(np.abs(np.diag(lin))) < 1e-9:
        raise InputError(f"the axes of {what} are not aligned with those of {onto} (rotated or permuted by "
                         f"{np.array2string(lin, precision=3, separator=',')}); resampling needs parallel axes")
    n_src = (src.shape[2], src.shape[1], src.shape[0])  # (i, j, k) sizes
    n_dst = (shape[2], shape[1], shape[0])
    centres = [m[a, a] * np.arange(n_dst[a]) + m[a, 3] for a in range(3)]
    widths = [abs(m[a, a]) for a in range(3)]
    outside = [_outside(n_src[a], centres[a], widths[a]) for a in range(3)]
    axis = ("columns (i axis)", "rows (j axis)", "slices (k axis)")
    if any(o.all() for o in outside):
        a = next(a for a in range(3) if outside[a].all())
        raise InputError(
            f"{what} does not overlap {onto} in space (in {axis[a]} {onto} lies at indices "
            f"{centres[a].min():.4g} to {centres[a].max():.4g} of {what}, which holds 0 to {n_src[a] - 1})")
    if any(o.any() for o in outside):
        a = next(a for a in range(3) if outside[a].any())
        raise InputError(
            f"{onto} reaches outside {what}: in {axis[a]} it lies at indices {centres[a].min():.4g} to "
            f"{centres[a].max():.4g} of {what}, which holds 0 to {n_src[a] - 1}")
    from medrecon.io.budget import array_bytes, require

    require(array_bytes(shape, 4), f"resampling {what} to {shape[0]} x {shape[1]} x {shape[2]}")
    wx, wy, wk = (axis_weights(n_src[a], centres[a], widths[a]) for a in range(3))
    data = _apply_k(src.data, wk, wy, wx)
    meta = copy.deepcopy(src.meta)
    meta["resampled_to_grid"] = {
        "from_shape": list(src.shape), "to_shape": list(shape),
        "scale_kji": [float(m[2, 2]), float(m[1, 1]), float(m[0, 0])],
        "offset_kji": [float(m[2, 3]), float(m[1, 3]), float(m[0, 3])],
        "method": {ax: ("area average" if w > 1 + 1e-9 else ("copy" if abs(w - 1) < 1e-9 and np.allclose(
            c, np.round(c), atol=1e-6) else "linear")) for ax, w, c in zip("ijk", widths, centres, strict=True)},
    }
    return Volume(data, np.asarray(dst_affine, dtype=np.float64), meta)
