"""Slice geometry of Siemens protocols: the imported volume's RAS+ affine from ``sSliceArray``.

A Siemens protocol (``MeasYaps`` of a twix file) gives, per slice, the slice normal
``G_S`` (``sNormal``, a unit vector in the patient coordinate system, PCS, whose axes
``(dSag, dCor, dTra)`` point to the patient's left, posterior and head: DICOM's LPS), the
slice centre ``p`` (``sPosition``, mm, PCS) and the in-plane rotation ``phi``
(``dInPlaneRot``, radians, default 0).  The phase-encode and readout directions follow
from these as in Siemens' ``fGSLCalcPRS`` (:func:`phase_read_directions`):

1. the main orientation of ``G_S`` is the axis of its largest component (ties: transverse
   before coronal before sagittal);
2. before rotation, ``G_P`` is the unit vector in the plane of ``G_S`` and that axis
   perpendicular to ``G_S``: transverse ``(0, s_t, -s_c) / sqrt(s_c^2 + s_t^2)``, coronal
   ``(s_c, -s_s, 0) / sqrt(s_s^2 + s_c^2)``, sagittal ``(-s_c, s_s, 0) / sqrt(s_s^2 + s_c^2)``
   (``G_S = (s_s, s_c, s_t)``);
3. ``G_R = G_S x G_P``; the in-plane rotation turns ``G_P <- cos(phi) G_P - sin(phi) G_R``
   and recomputes ``G_R = G_S x G_P``.

The rotation ``[G_P, G_R, G_S]`` is the one the scanner writes into every readout's header
(``sSliceData.aulQuaternion``); the test of the shared GRE file checks the two agree.

Image axes.  The plugin's image is ``(readout rows j, phase-encode columns i)`` from the raw
samples and lines in acquisition order with the centred FFT; its centre pixel
``(j, i) = (ny // 2, nx // 2)`` is the slice centre ``p``.  Raw Siemens data reconstructed
this way run along ``-G_R`` (rows) and ``-G_P`` (columns), the convention of twixtools'
``geometry.prs2sct_mdb`` ("readout and pe are flipped").  With ``dx`` (phase encode) and
``dy`` (readout) the pixel sizes, slice ``k`` centred at ``p_k`` and ``F = diag(-1, -1, 1)``
(LPS -> RAS)::

    affine[:3, 0] = F (-G_P) dx        # column i
    affine[:3, 1] = F (-G_R) dy        # row j
    affine[:3, 2] = F (p_1 - p_0)      # slice step (one slice: G_S times the thickness)
    affine[:3, 3] = F p_0 - (nx // 2) affine[:3, 0] - (ny // 2) affine[:3, 1]

The normal, the slice positions and the pixel sizes are read from the protocol; the in-plane
signs rely on twixtools' convention and were not checked against scanner DICOM images of the
same scan (none are in the shared data).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["frames_affine", "phase_read_directions", "siemens_affine", "siemens_frames", "slice_geometry"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_PCS = ("dSag", "dCor", "dTra")


def _main_orientation(gs: np.ndarray) -> int:
    """0 sagittal, 1 coronal, 2 transverse: the largest component of the normal (ties within
    1e-6, Siemens' tolerance: transverse, then coronal), as Siemens' ``fGSLClassOri``."""
    a_s, a_c, a_t = (abs(float(v)) for v in gs)
    if a_t >= a_s - 1e-6 and a_t >= a_c - 1e-6:
        return 2
    if a_c >= a_s - 1e-6:
        return 1
    return 0


def phase_read_directions(normal, inplane_rot: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Phase-encode and readout unit vectors ``(G_P, G_R)`` (PCS) of a slice with unit
    ``normal`` (PCS) and in-plane rotation ``inplane_rot`` (radians), as the module docstring."""
    gs = np.asarray(normal, dtype=np.float64)
    gs = gs / np.linalg.norm(gs)
    s, c, t = gs
    ori = _main_orientation(gs)
    if ori == 2:
        gp = np.array([0.0, t, -c]) / math.hypot(c, t)
    elif ori == 1:
        gp = np.array([c, -s, 0.0]) / math.hypot(s, c)
    else:
        gp = np.array([-c, s, 0.0]) / math.hypot(s, c)
    gr = np.cross(gs, gp)
    phi = float(inplane_rot)
    gp = math.cos(phi) * gp - math.sin(phi) * gr
    return gp, np.cross(gs, gp)


def _vec(d: Any, default: float = 0.0) -> np.ndarray:
    d = d if isinstance(d, dict) else {}
    return np.array([float(d.get(k, default)) for k in _PCS])


def slice_geometry(yaps: dict) -> list[dict[str, Any]] | None:
    """Per protocol slice: ``{"position", "normal", "inplane_rot", "thickness"}`` (PCS, mm,
    radians) from ``MeasYaps['sSliceArray']['asSlice']``, or None when a normal is missing."""
    try:
        slices = yaps["sSliceArray"]["asSlice"]
    except (KeyError, TypeError):
        return None
    out = []
    for sl in slices if isinstance(slices, list) else []:
        if not isinstance(sl, dict) or "sNormal" not in sl:
            return None
        n = _vec(sl["sNormal"])
        if not np.linalg.norm(n) > 0:
            return None
        out.append({"position": _vec(sl.get("sPosition")), "normal": n / np.linalg.norm(n),
                    "inplane_rot": float(sl.get("dInPlaneRot", 0.0) or 0.0),
                    "thickness": float(sl.get("dThickness", 0.0) or 0.0)})
    return out or None


def frames_affine(frames: list[dict[str, Any]], shape: tuple[int, int], pixel_size_pe: float,
                  pixel_size_readout: float) -> tuple[np.ndarray, list[float]]:
    """The RAS+ affine of slices on a ``(ny, nx)`` = (readout rows, phase-encode columns) grid,
    and the slice positions along the first slice's normal (mm).

    ``frames`` (in volume order) give per slice, in the patient coordinate system (LPS, mm):
    the centre ``position`` of the centre pixel ``(ny // 2, nx // 2)``, the unit vectors
    ``row_dir`` (along which the row index j grows) and ``col_dir`` (column index i), the
    ``normal`` and, optional, the ``thickness`` (the slice step of a single slice)::

        affine[:3, 0] = F col_dir dx,   affine[:3, 1] = F row_dir dy,
        affine[:3, 2] = F (p_1 - p_0)   (one slice: F normal thickness)
        affine[:3, 3] = F p_0 - (nx // 2) affine[:3, 0] - (ny // 2) affine[:3, 1]

    with ``F = diag(-1, -1, 1)`` (LPS -> RAS).
    """
    ny, nx = (int(v) for v in shape)
    f0 = frames[0]
    col_i = _LPS_TO_RAS @ np.asarray(f0["col_dir"], np.float64) * float(pixel_size_pe)
    col_j = _LPS_TO_RAS @ np.asarray(f0["row_dir"], np.float64) * float(pixel_size_readout)
    p0 = np.asarray(f0["position"], np.float64)
    normal = np.asarray(f0["normal"], np.float64)
    if len(frames) > 1:
        step = _LPS_TO_RAS @ (np.asarray(frames[1]["position"], np.float64) - p0)
    else:
        step = _LPS_TO_RAS @ normal * (f0.get("thickness") or float(pixel_size_readout))
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = col_i, col_j, step
    aff[:3, 3] = _LPS_TO_RAS @ p0 - (nx // 2) * col_i - (ny // 2) * col_j
    positions = [float(np.dot(np.asarray(f["position"], np.float64), normal)) for f in frames]
    return aff, positions


def siemens_affine(geom: list[dict[str, Any]], shape: tuple[int, int], pixel_size_pe: float,
                   pixel_size_readout: float) -> tuple[np.ndarray, list[float]]:
    """The RAS+ affine (module docstring) of Siemens protocol slices ``geom`` (in volume
    order, :func:`slice_geometry`) on a ``(ny, nx)`` = (readout, phase encode) grid, and the
    slice positions along the first slice's normal (mm): rows along ``-G_R``, columns along
    ``-G_P`` (:func:`frames_affine`)."""
    return frames_affine(siemens_frames(geom), shape, pixel_size_pe, pixel_size_readout)


def siemens_frames(geom: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`frames_affine`'s slice frames of Siemens protocol slices: rows along ``-G_R``,
    columns along ``-G_P`` (the first slice's directions; the module docstring)."""
    gp, gr = phase_read_directions(geom[0]["normal"], geom[0]["inplane_rot"])
    return [{"position": g["position"], "normal": g["normal"], "row_dir": -gr, "col_dir": -gp,
             "thickness": g["thickness"]} for g in geom]
