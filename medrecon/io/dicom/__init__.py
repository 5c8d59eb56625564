"""DICOM series: scan a folder, pick a series, read it as a :class:`~medrecon.volume.Volume`;
write a volume as a derived series.

Modules
-------
* :mod:`~medrecon.io.dicom.series` -- scan a folder's headers, group them into series
  (:class:`SeriesInfo`), pick one (:func:`select_series`).
* :mod:`~medrecon.io.dicom.geometry` -- sort slices along the normal, check the spacing,
  build the affine (:class:`GeometryWarning`).
* :mod:`~medrecon.io.dicom.pixels` -- decode pixels, apply RescaleSlope / RescaleIntercept.
* :mod:`~medrecon.io.dicom.read` -- :func:`read_dicom` (single-frame series, enhanced
  multi-frame, Siemens mosaic, GridFrameOffsetVector).
* :mod:`~medrecon.io.dicom.write` -- :func:`write_dicom_series` (a new derived series).
* :mod:`~medrecon.io.dicom.tags` -- the tags a derived series keeps, SOP class UIDs,
  pydicom values as JSON.
* :mod:`~medrecon.io.dicom.sizes` -- the memory a file takes to read (inflated size of a
  deflated transfer syntax, decoded pixels), checked against the budget before pydicom
  allocates it.

Reading
-------
1. Every file under the folder (recursively) is read **without pixels**
   (``stop_before_pixels``); files that are not DICOM images are skipped
   (licence files, DICOMDIR, reports).
2. Files are grouped by SeriesInstanceUID and, inside a series, split by
   ImageOrientationPatient and matrix size (a localizer series often mixes
   three orientations).  A group is named by its UID, or ``UID#n`` when the
   series was split.
3. Slices are sorted by ImagePositionPatient projected on the slice normal
   ``n = R x C`` (R, C the row / column direction cosines); InstanceNumber is
   not used.  The slice step is taken from the positions.  Duplicate positions,
   uneven spacing (gaps: a missing slice) and positions off a line raise
   :class:`~medrecon.errors.FileFormatError`.
4. Gantry tilt (slice step not parallel to the normal) is detected.  The slices
   are kept as acquired, **not resampled**: the affine's third column is the real
   step between slice positions, so the affine is sheared and every voxel keeps
   its exact position.  A :class:`GeometryWarning` says so; ``meta["gantry_tilt_deg"]``
   records the angle.  (NIfTI's sform keeps the shear; its qform cannot, see
   :mod:`medrecon.io.nifti`.)
5. Pixels are decoded by pydicom's pixel handlers (native, RLE, JPEG baseline /
   lossless, JPEG-LS, JPEG 2000, HTJ2K through pylibjpeg); a transfer syntax with
   no installed decoder is named in the error.  RescaleSlope / RescaleIntercept
   are applied per slice.
6. Before any of this allocates, the sizes are checked against the memory budget
   (:mod:`medrecon.io.budget`): a deflated file's inflated size while scanning, each file's
   decoded pixels and the float32 volume before reading.
"""

from __future__ import annotations

from medrecon.io.dicom.geometry import GeometryWarning, UnevenSpacingError
from medrecon.io.dicom.read import read_dicom
from medrecon.io.dicom.series import SeriesInfo, scan_series, select_series  # noqa: F401
from medrecon.io.dicom.tags import (  # noqa: F401 - importable from here, as before the split
    CT_IMAGE_STORAGE,
    DICOMDIR_SOP,
    INFO_TAGS,
    KEEP_TAGS,
    MR_IMAGE_STORAGE,
    SECONDARY_CAPTURE,
)
from medrecon.io.dicom.write import write_dicom_series

__all__ = ["GeometryWarning", "UnevenSpacingError", "SeriesInfo", "scan_series", "read_dicom", "write_dicom_series"]
