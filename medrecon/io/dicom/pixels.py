"""DICOM pixels: decode (any transfer syntax pydicom can), refuse colour, apply RescaleSlope / Intercept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError
from medrecon.io.dicom.series import sniff_dicom
from medrecon.io.dicom.sizes import check_inflated_size, check_pixels
from medrecon.io.dicom.tags import import_pydicom

__all__ = ["read_pixels", "checked_rescale", "rescale_into"]


def _decode_error(path: Path, ds, exc: Exception) -> FileFormatError:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(ts, "name", str(ts))
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        from pydicom.pixels import get_decoder

        dec = get_decoder(ts)
    except Exception:  # noqa: BLE001 - no decoder at all for this syntax
        return FileFormatError(
            f"cannot decode the pixels of {path.name}: transfer syntax {name} ({ts}) is not supported "
            "(pydicom has no decoder for it)")
    if not dec.is_available:
        return FileFormatError(
            f"cannot decode the pixels of {path.name}: transfer syntax {name} ({ts}) is not supported "
            f"here; install one of: {', '.join(dec.missing_dependencies)}")
    return FileFormatError(
        f"the pixel data of {path.name} ({name}) could not be decoded; the file may be truncated "
        f"or corrupt ({detail})")


def read_pixels(path: Path) -> tuple[np.ndarray, Any]:
    """The decoded pixel array of one DICOM file and its dataset; a clear error when it cannot be
    (or when it would take more than the memory budget: :mod:`medrecon.io.dicom.sizes`)."""
    pydicom = import_pydicom()
    from pydicom.errors import InvalidDicomError

    check_inflated_size(path)
    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:  # no preamble (accepted by scan_series): read it anyway
            if not sniff_dicom(path):
                raise
            ds = pydicom.dcmread(path, force=True)
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

                ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = (
                    ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian)
    except Exception as exc:  # noqa: BLE001
        raise FileFormatError(f"{str(path)!r} could not be read as DICOM: {exc}") from exc
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise FileFormatError(
            f"{path.name} holds colour pixels (SamplesPerPixel={ds.SamplesPerPixel}); only greyscale is supported")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise FileFormatError(f"{path.name} has no pixel data")
    check_pixels(ds, path)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises several kinds
        raise _decode_error(path, ds, exc) from exc
    return np.asarray(arr), ds


def checked_rescale(slope: float, inter: float, arr: np.ndarray, where: str) -> tuple[float, float]:
    """Refuse a non-finite slope / intercept, or one that overflows float32 on these pixels."""
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise FileFormatError(f"{where}: RescaleSlope / RescaleIntercept must be finite, got {slope} / {inter}")
    if arr.size and (slope != 1.0 or inter != 0.0):
        big = max(abs(float(np.min(arr))), abs(float(np.max(arr))))
        if big * abs(slope) + abs(inter) > 1e38:
            raise FileFormatError(f"{where}: RescaleSlope {slope} / RescaleIntercept {inter} overflow float32")
    return slope, inter


def rescale_into(arr: np.ndarray, ds, out: np.ndarray, where: str = "") -> tuple[float, float]:
    """``out[...] = arr * slope + intercept`` (float64 arithmetic, stored as float32)."""
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0) if "RescaleSlope" in ds else 1.0
    inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0) if "RescaleIntercept" in ds else 0.0
    slope, inter = checked_rescale(slope, inter, arr, where)
    if slope == 1.0 and arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2 and float(np.float32(inter)) == inter:
        np.add(arr, np.float32(inter), out=out, casting="unsafe")  # exact: |int16 + intercept| << 2**24
    else:
        out[...] = arr.astype(np.float64) * slope + inter
    return slope, inter
