"""Slice geometry of a DICOM series: sort slices along the normal, check the spacing, build the affine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medrecon.errors import FileFormatError, InputError
from medrecon.volume import LPS_TO_RAS

__all__ = ["GeometryWarning", "UnevenSpacingError", "Geometry", "slice_geometry", "step_runs"]


class GeometryWarning(UserWarning):
    """The geometry of a DICOM series needs attention (gantry tilt, single slice)."""



@dataclass
class Geometry:
    """Where the slices of one series lie: their order, the RAS affine, the step between slices."""

    order: list[int]
    affine: np.ndarray  # RAS
    step: np.ndarray  # LPS mm between slices
    tilt_deg: float
    positions: np.ndarray  # LPS, sorted
    #: set when an unevenly spaced series is read with ``allow_uneven``: the sorted positions along
    #: the normal (``normal_mm``), the new even ``spacing_mm`` and how the steps ran (``runs``);
    #: the reader resamples the slices with :func:`medrecon.io.resample.resample_slices`
    uneven: dict | None = None


class UnevenSpacingError(FileFormatError):
    """The slices of a series are not evenly spaced (the sentence describes the steps)."""


def step_runs(diffs: np.ndarray, tol: float = 0.02) -> str:
    """The slice steps (mm) in order, as runs of equal steps (within ``tol`` relative, 0.01 mm):

    >>> step_runs(np.array([4.0] * 13 + [1.081] + [7.0] * 13))
    '13 steps of 4.000 mm, 1 of 1.081 mm, then 13 of 7.000 mm'
    """
    runs: list[list] = []
    for v in np.asarray(diffs, dtype=float):
        if runs and abs(v - runs[-1][0]) <= max(0.01, tol * runs[-1][0]):
            runs[-1][1] += 1
        else:
            runs.append([float(v), 1])
    parts = [f"{n} step{'s' if n != 1 else ''} of {v:.3f} mm" if k == 0 else f"{n} of {v:.3f} mm"
             for k, (v, n) in enumerate(runs)]
    if len(parts) > 6:
        parts = parts[:5] + [f"... ({len(runs)} runs in all)", parts[-1]]
    return ", ".join(parts[:-1]) + (", then " if len(parts) > 1 else "") + parts[-1]


def slice_geometry(iop: np.ndarray, spacing: np.ndarray, ipps: np.ndarray, names: list[str],
                   fallback_dz: float | None, allow_uneven: bool | float = False) -> Geometry:
    """Sort slices by ImagePositionPatient along the normal of ImageOrientationPatient ``iop``.

    ``spacing`` is PixelSpacing (row, column), ``ipps`` the LPS positions in file order,
    ``names`` what the errors call each slice, ``fallback_dz`` the slice step of a single
    slice (1 mm when missing).  Duplicate positions, uneven steps and positions off a line
    raise :class:`FileFormatError`.  With ``allow_uneven`` (True: the median step; a number: that
    step in mm) uneven steps are accepted instead: the affine gets the even step ``s`` along the
    line through the slices (``step = s * (P_last - P_0) / (d_last - d_0)``, ``d`` the positions
    along the normal, so a gantry tilt stays a shear) and ``Geometry.uneven`` tells the reader
    to resample the slices onto ``d_0 + m s``.
    """
    r, c = iop[:3], iop[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-3 or abs(np.linalg.norm(c) - 1) > 1e-3 or abs(r @ c) > 1e-3:
        raise FileFormatError(
            f"ImageOrientationPatient {np.asarray(iop).tolist()} is not two orthogonal unit vectors")
    r = r / np.linalg.norm(r)
    c = c - (c @ r) * r
    c = c / np.linalg.norm(c)
    normal = np.cross(r, c)
    d = ipps @ normal
    order = list(np.argsort(d, kind="stable"))
    d = d[order]
    pos = ipps[order]
    n = len(order)
    uneven = None
    if n > 1:
        diffs = np.diff(d)
        dup = np.nonzero(diffs < 1e-3)[0]
        if dup.size:
            a, b = names[order[dup[0]]], names[order[dup[0] + 1]]
            raise FileFormatError(
                f"{dup.size} duplicate slice position(s) (e.g. {a} and {b} at {d[dup[0]]:.3f} mm along "
                "the normal); the series holds several volumes (echoes, phases or repeats) -- "
                "split them into separate folders")
        med = float(np.median(diffs))
        bad = np.nonzero(np.abs(diffs - med) > max(0.01, 0.02 * med))[0]
        if bad.size:
            line = (pos[-1] - pos[0]) / max(d[-1] - d[0], 1e-9)
            tilt = float(np.degrees(np.arccos(np.clip(abs(line @ normal) / np.linalg.norm(line), -1, 1))))
            if allow_uneven is False or allow_uneven is None:
                raise UnevenSpacingError(
                    f"slices are unevenly spaced along the normal: {step_runs(diffs)} (from {names[order[0]]} to "
                    f"{names[order[-1]]}; a missing slice or a variable-spacing series)"
                    + (f", with a gantry tilt of {tilt:.2f} degrees" if tilt > 0.01 else "")
                    + "; split the series into evenly spaced parts to read it as volumes, or read it resampled "
                    "to even spacing (linear in position) with --allow-uneven (API: allow_uneven=True)")
            target = med if allow_uneven is True else _even_step(allow_uneven)
            uneven = {"normal_mm": d, "spacing_mm": target, "runs": step_runs(diffs), "median_step_mm": med}
            step = line * target
            expected = pos[0] + np.outer(d - d[0], line)
        else:
            step = (pos[-1] - pos[0]) / (n - 1)
            expected = pos[0] + np.outer(np.arange(n), step)
        off = pos - expected
        if np.max(np.linalg.norm(off, axis=1)) > max(0.01, 0.05 * med):
            raise FileFormatError("slice positions do not lie on a straight line; cannot build one volume")
        cosang = np.clip(abs(step @ normal) / np.linalg.norm(step), -1, 1)
        tilt = float(np.degrees(np.arccos(cosang)))
    else:
        dz = fallback_dz if fallback_dz and fallback_dz > 0 else 1.0
        step = normal * dz
        tilt = 0.0
    lps = np.eye(4)
    lps[:3, 0] = r * spacing[1]  # i: along a row (column index), column spacing
    lps[:3, 1] = c * spacing[0]  # j: down a column (row index), row spacing
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    return Geometry(order=order, affine=LPS_TO_RAS @ lps, step=step, tilt_deg=tilt, positions=pos,
                    uneven=uneven)


def _even_step(value) -> float:
    """``allow_uneven`` given as a number: the even slice step in mm (positive, finite)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"allow_uneven must be True or a slice step in mm, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise InputError(f"allow_uneven must be True or a positive slice step in mm, got {value!r}")
    return v
