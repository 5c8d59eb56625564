"""The :class:`Volume` (array + affine + metadata) and its geometry conventions.

Conventions (see also ``docs/volumes.md``)
------------------------------------------

* ``Volume.data`` is a float32 array shaped ``(Z, Y, X)``: slices first, then
  image rows, then image columns, in physical units (Hounsfield units for CT,
  the scanner's arbitrary units for MR).  ``data[k]`` is one slice, as a 2D
  image ``(rows, columns)``; this is the batch layout of per-slice operators.
* ``Volume.affine`` is a 4x4 float64 matrix mapping **voxel indices**
  ``(i, j, k, 1)`` -- ``i`` the column (x) index, ``j`` the row (y) index, ``k``
  the slice (z) index -- to **RAS+ millimetres** (x grows towards the
  patient's Right, +y towards Anterior, +z towards
  Superior, as in NIfTI and nibabel).  So the voxel ``data[k, j, i]`` has
  its centre at ``affine @ [i, j, k, 1]``.  Note the order: the array is indexed
  ``[k, j, i]`` while the affine takes ``(i, j, k)``.
* This is exactly the NIfTI convention once the array is transposed: a NIfTI
  file written by :func:`medrecon.save_volume` holds ``data.transpose(2, 1, 0)`` (shape
  ``(X, Y, Z)``) with ``volume.affine`` as sform and qform, and nibabel /
  FSL / ITK-SNAP / 3D Slicer place it where the DICOM series says.
* DICOM uses LPS+ (+x = Left, +y = Posterior, +z = Superior); the readers and
  writers convert with ``diag(-1, -1, 1, 1)``.  For a DICOM series the affine
  is ``diag(-1,-1,1,1) @ [R*dc, C*dr, step, P0]`` with ``R`` / ``C`` the row /
  column direction cosines of ImageOrientationPatient, ``dr, dc`` PixelSpacing
  (row spacing, column spacing), ``P0`` the ImagePositionPatient of the first
  slice and ``step`` the difference of consecutive slice positions.  Slices are
  sorted so that ``k`` increases along the slice normal ``R x C``.
* Reading and writing files is :mod:`medrecon.io` (``medrecon.load_volume`` /
  ``medrecon.save_volume``); this module imports nothing from it.

Example::

    >>> import numpy as np, medrecon
    >>> vol = medrecon.Volume(np.zeros((2, 3, 4)), np.diag([0.5, 0.5, 3.0, 1.0]))
    >>> vol.shape, vol.spacing
    ((2, 3, 4), (3.0, 0.5, 0.5))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medrecon.errors import InputError

__all__ = ["Volume", "LPS_TO_RAS"]

# DICOM patient coordinates (LPS+) <-> RAS+: flip x and y (the matrix is its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3D image: ``data`` (Z, Y, X) float32 in physical units, ``affine`` 4x4 RAS+ mm, ``meta``.

    Attributes
    ----------
    data : numpy.ndarray
        float32, shape ``(Z, Y, X)`` = (slices, rows, columns), physical units
        (``meta["units"]``: ``"HU"`` for CT).  A 2D array is taken as one slice.
    affine : numpy.ndarray
        float64 (4, 4): voxel ``(i=column, j=row, k=slice)`` -> RAS+ mm, i.e.
        ``data[k, j, i]`` sits at ``affine @ [i, j, k, 1]``.
    meta : dict
        JSON-able metadata.  Keys medrecon fills in: ``modality`` (``"CT"``,
        ``"MR"``, or None), ``units``, ``source`` (path read), ``source_format``
        (``"dicom"`` / ``"nifti"``), ``series_uid``, ``series_description``,
        ``series_number``, ``pixel_spacing`` ([row, column] mm), ``slice_spacing``
        (mm), ``slice_thickness`` (mm), ``gantry_tilt_deg``,
        ``transfer_syntax``, ``source_sop_instance_uids`` (in slice order) and
        ``dicom`` -- the patient / study / frame-of-reference / equipment tags
        (keyword -> value) that a derived DICOM series keeps.
    """

    data: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.dtype.kind == "c":
            raise InputError("a Volume holds real values; got a complex array")
        if data.dtype.kind not in "biuf":
            raise InputError(f"a Volume needs a numeric array, got dtype {data.dtype}")
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise InputError(f"a Volume needs a 3D array shaped (Z, Y, X), got shape {data.shape}")
        if min(data.shape) < 1:
            raise InputError(f"a Volume needs a non-empty array, got shape {data.shape}")
        self.data = data.astype(np.float32, copy=False)
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise InputError(f"a Volume affine must be a finite 4x4 matrix, got shape {aff.shape}")
        if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise InputError("a Volume affine must be invertible (its 3x3 part is singular)")
        self.affine = aff
        if self.meta is None:
            self.meta = {}
        elif not isinstance(self.meta, dict):
            raise InputError(f"Volume meta must be a dict, got {type(self.meta).__name__}")

    # ------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm in the order of the data axes: ``(dz, dy, dx)``."""
        n = np.linalg.norm(self.affine[:3, :3], axis=0)  # (dx, dy, dz) for (i, j, k)
        return (float(n[2]), float(n[1]), float(n[0]))

    @property
    def modality(self) -> str | None:
        return self.meta.get("modality")

    @property
    def units(self) -> str | None:
        return self.meta.get("units")

    # --------------------------------------------------------------- helpers
    def copy(self) -> "Volume":
        """A deep copy (data, affine and meta)."""
        return Volume(self.data.copy(), self.affine.copy(), copy.deepcopy(self.meta))

    def slab(self, start: int, stop: int) -> "Volume":
        """Slices ``start:stop`` (k axis) as a new Volume with its affine shifted so that
        every voxel keeps its position in space (a copy; ``self`` is not modified)."""
        z = self.shape[0]
        if not (0 <= start < stop <= z):
            raise InputError(f"slice range {start}:{stop} is outside 0:{z}")
        aff = self.affine.copy()
        aff[:3, 3] = self.affine[:3, :3] @ np.array([0.0, 0.0, float(start)]) + self.affine[:3, 3]
        meta = copy.deepcopy(self.meta)
        uids = meta.get("source_sop_instance_uids")
        if isinstance(uids, list) and len(uids) == z:
            meta["source_sop_instance_uids"] = uids[start:stop]
        meta["slab"] = [int(start), int(stop)]
        return Volume(self.data[start:stop].copy(), aff, meta)

    def voxel_to_world(self, ijk) -> np.ndarray:
        """RAS+ mm of voxel indices ``(i, j, k)`` (column, row, slice); shape (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def __repr__(self) -> str:
        dz, dy, dx = self.spacing
        return (f"Volume(shape={self.shape} (Z, Y, X), spacing=({dz:.4g}, {dy:.4g}, {dx:.4g}) mm, "
                f"modality={self.modality!r}, units={self.units!r})")
