"""DICOM series: scan a folder, pick a series, read it as a :class:`~medrecon.volume.Volume`;
write a volume as a derived series.

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
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError, InputError
from medrecon.volume import LPS_TO_RAS, Volume

__all__ = ["GeometryWarning", "SeriesInfo", "scan_series", "read_dicom", "write_dicom_series"]

# tags a derived series keeps from its source (patient, study, frame of reference, equipment)
KEEP_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Manufacturer", "ManufacturerModelName", "InstitutionName", "BodyPartExamined",
    "PatientPosition", "KVP", "ConvolutionKernel", "MagneticFieldStrength",
    # acquisition attributes the CT / MR image modules require (type 1 / 2)
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime",
    "EchoTime", "EchoTrainLength", "InversionTime", "ImagingFrequency", "ImagedNucleus",
    "SpecificCharacterSet",
)
# informative tags stored in meta["dicom"] but not blindly copied
INFO_TAGS = (
    "Modality", "SOPClassUID", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber",
    "SliceThickness", "SpacingBetweenSlices", "WindowCenter", "WindowWidth", "RescaleType",
    "GantryDetectorTilt", "ImageType", "FlipAngle",
    "SeriesDate", "SeriesTime", "AcquisitionNumber",
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DICOMDIR_SOP = "1.2.840.10008.1.3.10"


class GeometryWarning(UserWarning):
    """The geometry of a DICOM series needs attention (gantry tilt, single slice)."""


@dataclass
class SeriesInfo:
    """One readable series (or one orientation / matrix group of a series) in a folder."""

    key: str  # UID, or UID#n when the series was split
    uid: str
    description: str
    modality: str
    number: int | None
    rows: int
    columns: int
    orientation: tuple[float, ...] | None
    files: list[Path] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list, repr=False)
    multiframe: bool = False
    split_of: int = 1  # how many groups the SeriesInstanceUID was split into

    @property
    def n_slices(self) -> int:
        if self.multiframe:
            return int(getattr(self.headers[0], "NumberOfFrames", 1) or 1)
        return len(self.files)

    def summary(self) -> str:
        d = f"'{self.description}'" if self.description else "(no description)"
        return (f"{self.key} {d} {self.modality or '?'} {self.n_slices} slice(s) "
                f"{self.rows}x{self.columns}")


# ------------------------------------------------------------------ helpers
def _dicom():
    import pydicom

    return pydicom


def _json_value(v: Any) -> Any:
    """A pydicom element value as a JSON-able value."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import PersonName

    if isinstance(v, (MultiValue, list, tuple)):
        return [_json_value(e) for e in v]
    if isinstance(v, PersonName):
        return str(v)
    if isinstance(v, bytes):
        return None
    if isinstance(v, float):  # DSfloat is a float
        return float(v)
    if isinstance(v, bool):
        return v
    if isinstance(v, int):  # IS is an int
        return int(v)
    if isinstance(v, str):
        return str(v)
    return None


def _floats(v: Any, n: int, what: str, path: Path) -> np.ndarray:
    try:
        a = np.array([float(e) for e in v], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{path}: {what} is not a list of numbers ({v!r})") from exc
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise FileFormatError(f"{path}: {what} should hold {n} finite numbers, got {v!r}")
    return a


def _is_image(ds) -> bool:
    sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if sop == DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        return False
    return "Rows" in ds and "Columns" in ds


def _iter_files(root: Path):
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            yield Path(dirpath) / name


def _sniff_dicom(path: Path) -> bool:
    """Whether a file without the ``DICM`` preamble may still be DICOM (old ACR-NEMA style).

    Its first data element must be in group 0x0000, 0x0002 or 0x0008 (either byte
    order).  Anything else (licence texts, reports, ...) is not parsed at all: pydicom's
    ``force=True`` would read arbitrary bytes as element lengths and may try to
    allocate gigabytes for them.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if len(head) < 4:
        return False
    return int.from_bytes(head[:2], "little") in (0x0000, 0x0002, 0x0008) or \
        int.from_bytes(head[:2], "big") in (0x0002, 0x0008)


def _orientation(ds) -> tuple[float, ...] | None:
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None:
        sfg = getattr(ds, "SharedFunctionalGroupsSequence", None)
        try:
            iop = sfg[0].PlaneOrientationSequence[0].ImageOrientationPatient
        except (TypeError, IndexError, AttributeError):
            return None
    try:
        return tuple(round(float(e), 4) + 0.0 for e in iop)
    except (TypeError, ValueError):
        return None


def scan_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """Read the headers (no pixels) of every DICOM image under ``path`` and group them.

    Returns the series sorted by SeriesNumber then UID; raises
    :class:`FileFormatError` when no DICOM image is found.
    """
    pydicom = _dicom()
    from pydicom.errors import InvalidDicomError

    root = Path(path)
    if not root.exists():
        raise FileFormatError(f"no such file or folder: {str(root)!r}")
    groups: dict[tuple, list[tuple[Path, Any]]] = {}
    n_files = 0
    for f in _iter_files(root):
        n_files += 1
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            # no 128-byte preamble + "DICM": old ACR-NEMA style files; try without it
            try:
                if not _sniff_dicom(f):
                    raise InvalidDicomError("not DICOM")
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                if not _is_image(ds) or "SOPInstanceUID" not in ds:
                    raise InvalidDicomError("not an image")
            except Exception:  # noqa: BLE001 - anything unreadable is simply not DICOM
                if root.is_file():
                    raise FileFormatError(f"{str(f)!r} is not a readable DICOM file") from None
                continue
        except OSError as exc:
            if root.is_file():
                raise FileFormatError(f"{str(f)!r} could not be read ({exc.strerror or exc})") from None
            continue
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on corrupt headers
            # it has the DICM preamble, so it is DICOM: a corrupt or truncated file in a
            # series is an error (skipping it would silently drop a slice)
            raise FileFormatError(
                f"{str(f)!r} is a DICOM file whose header could not be read (truncated or corrupt: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        try:
            if not _is_image(ds):
                continue
            uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
            nframes = int(getattr(ds, "NumberOfFrames", 1) or 1)
            enhanced = nframes > 1 or "PerFrameFunctionalGroupsSequence" in ds
            rows, cols = int(ds.Rows), int(ds.Columns)
            key = (uid, _orientation(ds), rows, cols, f"multiframe:{f}" if enhanced else "")
        except Exception as exc:  # noqa: BLE001 - values pydicom cannot convert
            raise FileFormatError(
                f"{str(f)!r}: invalid image header ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        if rows < 1 or cols < 1:
            raise FileFormatError(f"{str(f)!r}: the image is {rows}x{cols} (Rows x Columns must be >= 1)")
        groups.setdefault(key, []).append((f, ds))
    if not groups:
        where = "file" if root.is_file() else f"folder ({n_files} file(s) looked at)"
        raise FileFormatError(f"no DICOM images found in {str(root)!r} {where}")

    by_uid: dict[str, list[tuple]] = {}
    for key in groups:
        by_uid.setdefault(key[0], []).append(key)
    out: list[SeriesInfo] = []
    for uid, keys in by_uid.items():
        keys.sort(key=lambda k: (-len(groups[k]), str(k[1]), k[2], k[3], k[4]))
        for n, key in enumerate(keys, start=1):
            members = groups[key]
            ds0 = members[0][1]
            try:
                number = int(getattr(ds0, "SeriesNumber", None))
            except (TypeError, ValueError):
                number = None
            out.append(SeriesInfo(
                key=uid if len(keys) == 1 else f"{uid}#{n}",
                uid=uid,
                description=str(getattr(ds0, "SeriesDescription", "") or ""),
                modality=str(getattr(ds0, "Modality", "") or ""),
                number=number,
                rows=key[2], columns=key[3], orientation=key[1],
                files=[m[0] for m in members],
                headers=[m[1] for m in members],
                multiframe=bool(key[4]),
                split_of=len(keys),
            ))
    out.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid, s.key))
    return out


def _listing(series: list[SeriesInfo]) -> str:
    return "; ".join(f"[{i}] {s.summary()}" for i, s in enumerate(series))


def select_series(series: list[SeriesInfo], choice: str | int | None, where: str) -> SeriesInfo:
    """Pick one series by index, UID (or UID#n) or description; see :func:`medrecon.load_volume`."""
    if choice is None:
        if len(series) == 1:
            return series[0]
        uids = {s.uid for s in series}
        if len(uids) == 1:
            raise FileFormatError(
                f"series {series[0].uid} in {where} mixes orientations or matrix sizes "
                f"({len(series)} groups); choose one group with series= or --series: {_listing(series)}")
        raise InputError(
            f"{where} holds {len(series)} series; choose one with series= or --series (index, UID or "
            f"description): {_listing(series)}")
    if isinstance(choice, (int, np.integer)) or (isinstance(choice, str) and choice.strip().isdigit()
                                                  and len(choice.strip()) < 6):
        i = int(choice)
        if not 0 <= i < len(series):
            raise InputError(f"series index {i} is out of range; {where} holds: {_listing(series)}")
        return series[i]
    c = str(choice).strip()
    exact = [s for s in series if s.key == c]
    if exact:
        return exact[0]
    same_uid = [s for s in series if s.uid == c]
    if len(same_uid) > 1:
        raise FileFormatError(
            f"series {c} mixes orientations or matrix sizes ({len(same_uid)} groups); "
            f"choose one group with series= or --series: {_listing(same_uid)}")
    desc = [s for s in series if s.description.lower() == c.lower()]
    if len(desc) == 1:
        return desc[0]
    if len(desc) > 1:
        raise InputError(f"several series are described {c!r}; choose by index or UID: {_listing(desc)}")
    raise InputError(f"no series {c!r} in {where}; it holds: {_listing(series)}")


# ----------------------------------------------------------------- geometry
@dataclass
class _Geometry:
    order: list[int]
    affine: np.ndarray  # RAS
    step: np.ndarray  # LPS mm between slices
    tilt_deg: float
    positions: np.ndarray  # LPS, sorted


def _geometry(iop: np.ndarray, spacing: np.ndarray, ipps: np.ndarray, names: list[str],
              fallback_dz: float | None) -> _Geometry:
    r, c = iop[:3], iop[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-3 or abs(np.linalg.norm(c) - 1) > 1e-3 or abs(r @ c) > 1e-3:
        raise FileFormatError(
            f"ImageOrientationPatient {list(iop)} is not two orthogonal unit vectors")
    r = r / np.linalg.norm(r)
    c = c - (c @ r) * r
    c = c / np.linalg.norm(c)
    normal = np.cross(r, c)
    d = ipps @ normal
    order = list(np.argsort(d, kind="stable"))
    d = d[order]
    pos = ipps[order]
    n = len(order)
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
            i = bad[0]
            raise FileFormatError(
                f"slices are unevenly spaced: {diffs[i]:.3f} mm between {names[order[i]]} and "
                f"{names[order[i + 1]]} but {med:.3f} mm elsewhere (a missing slice or a "
                f"variable-spacing series; {bad.size} irregular step(s))")
        step = (pos[-1] - pos[0]) / (n - 1)
        off = pos - (pos[0] + np.outer(np.arange(n), step))
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
    return _Geometry(order=order, affine=LPS_TO_RAS @ lps, step=step, tilt_deg=tilt, positions=pos)


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


def _pixels(path: Path, frames: bool = False) -> tuple[np.ndarray, Any]:
    pydicom = _dicom()
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:  # no preamble (accepted by scan_series): read it anyway
            if not _sniff_dicom(path):
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
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises several kinds
        raise _decode_error(path, ds, exc) from exc
    return np.asarray(arr), ds


def _checked_rescale(slope: float, inter: float, arr: np.ndarray, where: str) -> tuple[float, float]:
    """Refuse a non-finite slope / intercept, or one that overflows float32 on these pixels."""
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise FileFormatError(f"{where}: RescaleSlope / RescaleIntercept must be finite, got {slope} / {inter}")
    if arr.size and (slope != 1.0 or inter != 0.0):
        big = max(abs(float(np.min(arr))), abs(float(np.max(arr))))
        if big * abs(slope) + abs(inter) > 1e38:
            raise FileFormatError(f"{where}: RescaleSlope {slope} / RescaleIntercept {inter} overflow float32")
    return slope, inter


def _rescale_into(arr: np.ndarray, ds, out: np.ndarray, where: str = "") -> tuple[float, float]:
    """``out[...] = arr * slope + intercept`` (float64 arithmetic, stored as float32)."""
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0) if "RescaleSlope" in ds else 1.0
    inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0) if "RescaleIntercept" in ds else 0.0
    slope, inter = _checked_rescale(slope, inter, arr, where)
    if slope == 1.0 and arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2 and float(np.float32(inter)) == inter:
        np.add(arr, np.float32(inter), out=out, casting="unsafe")  # exact: |int16 + intercept| << 2**24
    else:
        out[...] = arr.astype(np.float64) * slope + inter
    return slope, inter


def _meta(ds0, info: SeriesInfo, files: list[Path], root: Path, geo: _Geometry, spacing, slopes) -> dict:
    modality = str(getattr(ds0, "Modality", "") or "") or None
    rescale_type = str(getattr(ds0, "RescaleType", "") or "")
    if modality == "CT":
        units = "HU" if rescale_type in ("", "HU") else rescale_type
    else:
        units = rescale_type or "arbitrary"
    tags: dict[str, Any] = {}
    for kw in KEEP_TAGS + INFO_TAGS:
        if kw in ds0:
            v = _json_value(ds0.data_element(kw).value)
            if v is not None and v != "" and v != []:
                tags[kw] = v
    ts = getattr(getattr(ds0, "file_meta", None), "TransferSyntaxUID", None)
    thickness = tags.get("SliceThickness")
    return {
        "modality": modality,
        "units": units,
        "source": str(root),
        "source_format": "dicom",
        "series_uid": info.uid,
        "series_key": info.key,
        "series_description": info.description,
        "series_number": info.number,
        "pixel_spacing": [float(spacing[0]), float(spacing[1])],
        "slice_spacing": float(np.linalg.norm(geo.step)),
        "slice_thickness": float(thickness) if isinstance(thickness, (int, float)) else None,
        "gantry_tilt_deg": round(geo.tilt_deg, 4),
        "transfer_syntax": str(ts) if ts else None,
        "rescale_slopes": sorted({float(s) for s in slopes}),
        "source_sop_instance_uids": [],
        "source_files": [str(f) for f in files] if len(files) <= 4096 else [],
        "dicom": tags,
    }


# what pydicom / numpy raise on header values they cannot convert or that contradict
# each other (a wrong VR, a short list, a bad sequence); read_dicom turns them into
# one-sentence FileFormatErrors
_HEADER_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError,
                  ZeroDivisionError, NotImplementedError, __import__("struct").error, EOFError)


def read_dicom(path: str | os.PathLike, series: str | int | None = None) -> Volume:
    """Read one series of a DICOM folder (or one DICOM file); see the module docstring."""
    from medrecon.errors import MedreconError

    try:
        return _read_dicom(path, series)
    except MedreconError:
        raise
    except _HEADER_ERRORS as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise FileFormatError(
            f"{str(path)!r}: invalid or inconsistent DICOM header ({type(exc).__name__}: {detail[:200]})") from exc


def _read_dicom(path: str | os.PathLike, series: str | int | None = None) -> Volume:
    root = Path(path)
    all_series = scan_series(root)
    info = select_series(all_series, series, repr(str(root)))
    if info.multiframe:
        return _read_multiframe(info, root)
    if any("MOSAIC" in [str(t).upper() for t in (getattr(h, "ImageType", None) or [])] for h in info.headers):
        if len(info.files) != 1:
            raise FileFormatError(
                f"series {info.key} holds {len(info.files)} Siemens mosaic files, i.e. {len(info.files)} volumes "
                "(a time or diffusion series); load one file at a time")
        return _read_mosaic(info, root)
    headers = info.headers
    names = [f.name for f in info.files]
    iop = None
    spacing = None
    ipps = []
    single = len(info.files) == 1
    for f, ds in zip(info.files, headers, strict=True):
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            if not single:
                raise FileFormatError(
                    f"{f.name} has no ImagePositionPatient / ImageOrientationPatient; cannot place "
                    "the slices in space (is it a secondary capture or a scout?)")
            warnings.warn(
                f"{f.name} has no ImagePositionPatient / ImageOrientationPatient: it is placed at the "
                "origin with identity orientation (the affine is not a patient position)",
                GeometryWarning, stacklevel=3)
            ipps.append(np.zeros(3))
            o = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        else:
            ipps.append(_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", f))
            o = _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", f)
        if iop is not None and np.max(np.abs(o - iop)) > 1e-4:
            raise FileFormatError(f"mixed orientations: {f.name} has ImageOrientationPatient {list(o)}")
        iop = o if iop is None else iop
        ps = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
        ps = _floats(ps, 2, "PixelSpacing", f) if ps is not None else None
        if ps is None:
            if not single:
                raise FileFormatError(f"{f.name} has no PixelSpacing")
            warnings.warn(f"{f.name} has no PixelSpacing: 1 mm pixels assumed", GeometryWarning, stacklevel=3)
            ps = np.ones(2)
        if spacing is None:
            spacing = ps
        elif np.max(np.abs(ps - spacing)) > 1e-4:
            raise FileFormatError(
                f"PixelSpacing changes within the series ({list(spacing)} vs {list(ps)} in {f.name})")
    ds0 = headers[0]
    fallback = None
    for kw in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            fallback = float(getattr(ds0, kw))
            break
        except (TypeError, ValueError, AttributeError):
            continue
    geo = _geometry(iop, spacing, np.array(ipps), names, fallback)
    if len(info.files) == 1:
        warnings.warn(
            f"{names[0]}: a single slice; its thickness along the normal is taken from "
            f"SpacingBetweenSlices / SliceThickness ({np.linalg.norm(geo.step):.4g} mm)",
            GeometryWarning, stacklevel=3)
    tilt_tag = getattr(ds0, "GantryDetectorTilt", None)
    if geo.tilt_deg > 0.01:
        warnings.warn(
            f"gantry tilt of {geo.tilt_deg:.2f} degrees detected (GantryDetectorTilt={tilt_tag}): slices are "
            "kept as acquired, not resampled; the affine is sheared so that every voxel keeps its exact "
            "position (NIfTI qform cannot hold the shear: tools that read only qform, or assume "
            "orthogonal axes, will misplace the slices)",
            GeometryWarning, stacklevel=3)
    # one preallocated float32 volume, filled slice by slice: peak memory is the volume
    # plus one decoded slice (no list of slices + np.stack copy)
    data = np.empty((len(geo.order), info.rows, info.columns), dtype=np.float32)
    slopes = []
    sop_uids = []
    for k, idx in enumerate(geo.order):
        f = info.files[idx]
        arr, ds = _pixels(f)
        if arr.shape != (info.rows, info.columns):
            raise FileFormatError(f"{f.name}: pixel array shape {arr.shape} does not match Rows x Columns")
        slope, _ = _rescale_into(arr, ds, data[k], f.name)
        slopes.append(slope)
        sop_uids.append(str(getattr(ds, "SOPInstanceUID", "")))
        del arr, ds
    meta = _meta(ds0, info, [info.files[i] for i in geo.order], root, geo, spacing, slopes)
    meta["source_sop_instance_uids"] = sop_uids
    return Volume(data, geo.affine, meta)


def _read_multiframe(info: SeriesInfo, root: Path) -> Volume:
    """An enhanced (multi-frame) image: geometry from the functional group sequences."""
    f = info.files[0]
    arr, ds = _pixels(f)
    nf = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] != nf:
        raise FileFormatError(f"{f.name}: {arr.shape[0]} frames decoded but NumberOfFrames is {nf}")
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per = ds.PerFrameFunctionalGroupsSequence if "PerFrameFunctionalGroupsSequence" in ds else None
    if (per is None or len(per) != nf) and "GridFrameOffsetVector" in ds:
        return _read_grid_offsets(info, root, arr, ds)
    if per is None or len(per) != nf:
        raise FileFormatError(f"{f.name}: multi-frame file without a per-frame functional group for every frame")

    def find(item, seq, kw):
        for src in (item, shared):
            if src is not None and seq in src and kw in src[seq][0]:
                return src[seq][0].data_element(kw).value
        return None

    ipps, iops, pss, slopes, inters = [], [], [], [], []
    for fr in per:
        ipp = find(fr, "PlanePositionSequence", "ImagePositionPatient")
        iop = find(fr, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = find(fr, "PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or ps is None:
            raise FileFormatError(f"{f.name}: a frame lacks its position, orientation or pixel spacing")
        ipps.append(_floats(ipp, 3, "ImagePositionPatient", f))
        iops.append(_floats(iop, 6, "ImageOrientationPatient", f))
        pss.append(_floats(ps, 2, "PixelSpacing", f))
        s = find(fr, "PixelValueTransformationSequence", "RescaleSlope")
        i = find(fr, "PixelValueTransformationSequence", "RescaleIntercept")
        slopes.append(float(s) if s is not None else float(getattr(ds, "RescaleSlope", 1.0) or 1.0))
        inters.append(float(i) if i is not None else float(getattr(ds, "RescaleIntercept", 0.0) or 0.0))
    iops_a = np.array(iops)
    if np.max(np.abs(iops_a - iops_a[0])) > 1e-4:
        raise FileFormatError(f"{f.name}: frames have different orientations (mixed orientations)")
    fallback = None
    try:
        fallback = float(find(per[0], "PixelMeasuresSequence", "SliceThickness"))
    except (TypeError, ValueError):
        pass
    geo = _geometry(iops_a[0], pss[0], np.array(ipps), [f"frame {k + 1}" for k in range(nf)], fallback)
    for k in range(nf):
        _checked_rescale(slopes[k], inters[k], arr[k], f"{f.name} frame {k + 1}")
    data = np.stack([(arr[k].astype(np.float64) * slopes[k] + inters[k]).astype(np.float32) for k in geo.order])
    meta = _meta(ds, info, [f], root, geo, pss[0], slopes)
    meta["source_sop_instance_uids"] = [str(getattr(ds, "SOPInstanceUID", ""))]
    meta["multiframe"] = True
    return Volume(data, geo.affine, meta)


def _read_mosaic(info: SeriesInfo, root: Path) -> Volume:
    """A Siemens mosaic (slices tiled in one image), unpacked by nibabel's MosaicWrapper."""
    f = info.files[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nibabel: "DICOM readers are highly experimental"
        from nibabel.nicom import dicomwrappers
    arr, ds = _pixels(f)  # decodes (any transfer syntax) and checks greyscale
    try:
        w = dicomwrappers.wrapper_from_data(ds)
        data = np.asarray(w.get_data(), dtype=np.float64)  # (rows, columns, slices), rescaled
        nib_aff = np.asarray(w.affine, dtype=np.float64)  # LPS, voxel (row, column, slice)
    except Exception as exc:  # noqa: BLE001 - nibabel raises several kinds on odd CSA headers
        raise FileFormatError(f"{f.name}: Siemens mosaic could not be unpacked ({exc})") from exc
    if data.ndim == 2:
        data = data[..., None]
    lps = nib_aff[:, [1, 0, 2, 3]]  # to voxel (column, row, slice)
    geo = _Geometry(order=[0], affine=LPS_TO_RAS @ lps, step=lps[:3, 2], tilt_deg=0.0,
                    positions=lps[:3, 3][None])
    meta = _meta(ds, info, [f], root, geo, np.linalg.norm(nib_aff[:3, :2], axis=0), [1.0])
    meta["mosaic"] = True
    meta["source_sop_instance_uids"] = [str(getattr(ds, "SOPInstanceUID", ""))]
    return Volume(data.transpose(2, 0, 1).astype(np.float32), geo.affine, meta)


def _read_grid_offsets(info: SeriesInfo, root: Path, arr: np.ndarray, ds) -> Volume:
    """A multi-frame image placed by GridFrameOffsetVector (RT Dose, some NM / PET)."""
    f = info.files[0]
    ipp = _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", f)
    iop = _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", f)
    ps = _floats(ds.PixelSpacing, 2, "PixelSpacing", f)
    off = np.array([float(v) for v in ds.GridFrameOffsetVector])
    if off.shape[0] != arr.shape[0]:
        raise FileFormatError(f"{f.name}: GridFrameOffsetVector has {off.shape[0]} entries for {arr.shape[0]} frames")
    normal = np.cross(iop[:3], iop[3:])
    ipps = ipp[None] + off[:, None] * normal[None]
    geo = _geometry(iop, ps, ipps, [f"frame {k + 1}" for k in range(len(off))], None)
    scale = float(getattr(ds, "DoseGridScaling", 1.0) or 1.0)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0) * scale
    inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    slope, inter = _checked_rescale(slope, inter, arr, f.name)
    data = np.stack([(arr[k].astype(np.float64) * slope + inter).astype(np.float32) for k in geo.order])
    meta = _meta(ds, info, [f], root, geo, ps, [slope])
    if "DoseUnits" in ds:
        meta["units"] = str(ds.DoseUnits)
    meta["source_sop_instance_uids"] = [str(getattr(ds, "SOPInstanceUID", ""))]
    meta["multiframe"] = True
    return Volume(data, geo.affine, meta)


# ------------------------------------------------------------------ writing
def _quantise(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """int16 values ``q`` with ``data ~= q * slope + intercept``, ``|error| <= slope / 2``."""
    lo, hi = float(data.min()), float(data.max())
    if np.all(data == np.round(data)) and lo >= -32768 and hi <= 32767:
        return data.astype(np.int16), 1.0, 0.0
    if hi == lo:
        return np.zeros(data.shape, np.int16), 1.0, lo
    intercept = (hi + lo) / 2.0
    slope = (hi - lo) / 65000.0  # keep |q| <= 32500, a margin for rounding
    # DS holds 16 characters: round slope / intercept to what DICOM stores, then quantise with them
    slope = float(_ds(slope))
    intercept = float(_ds(intercept))
    q = np.round((data.astype(np.float64) - intercept) / slope)
    return np.clip(q, -32768, 32767).astype(np.int16), slope, intercept


def _ds(x: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(x))


def _meta_from_like(like: Any) -> dict:
    if like is None:
        return {}
    if isinstance(like, Volume):
        return like.meta
    if isinstance(like, dict):
        return like
    if isinstance(like, (str, os.PathLike)):
        series = scan_series(like)
        info = series[0] if len(series) == 1 else select_series(series, None, repr(str(like)))
        ds0 = info.headers[0]
        tags = {}
        for kw in KEEP_TAGS + INFO_TAGS:
            if kw in ds0:
                v = _json_value(ds0.data_element(kw).value)
                if v is not None and v != "":
                    tags[kw] = v
        return {"modality": info.modality or None, "series_uid": info.uid,
                "series_description": info.description, "series_number": info.number, "dicom": tags,
                "source_sop_instance_uids": [str(getattr(h, "SOPInstanceUID", "")) for h in info.headers]}
    raise InputError(f"like= must be a Volume, a meta dict or a DICOM path, got {type(like).__name__}")


def write_dicom_series(volume: Volume, path: str | os.PathLike, overwrite: bool = False,
                       like: Any = None, description: str | None = None) -> Path:
    """Write ``volume`` as a new derived DICOM series in folder ``path`` (``IM0001.dcm``, ...).

    Geometry comes from ``volume.affine`` (RAS -> LPS): ImageOrientationPatient from
    its first two columns, PixelSpacing from their lengths, ImagePositionPatient of
    slice ``k`` = ``affine @ [0, 0, k, 1]``, SpacingBetweenSlices from the third
    column.  Values are stored as int16 with one RescaleSlope / RescaleIntercept
    for the whole series (slope 1, intercept 0 when every value is an integer in
    int16 range, e.g. HU).  Patient, study and frame-of-reference tags come from
    ``like`` (or ``volume.meta``); the series gets new UIDs and
    ImageType ``DERIVED\\SECONDARY``.
    """
    pydicom = _dicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    from medrecon.io.atomic import atomic_dir, check_target

    path = Path(path)
    check_target(path, overwrite)
    src = _meta_from_like(like) if like is not None else volume.meta
    tags = dict(src.get("dicom") or {})
    modality = src.get("modality") or volume.meta.get("modality") or tags.get("Modality") or "OT"

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    ci, cj, ck = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dc, dr = float(np.linalg.norm(ci)), float(np.linalg.norm(cj))
    r, c = ci / dc, cj / dr
    if abs(r @ c) > 1e-4:
        raise InputError("the affine's row and column axes are not orthogonal; DICOM cannot store this geometry")
    normal = np.cross(r, c)
    dz = float(np.linalg.norm(ck))
    nz, ny, nx = volume.shape
    q, slope, intercept = _quantise(volume.data)

    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    series_uid = generate_uid()
    study_uid = tags.get("StudyInstanceUID") or generate_uid()
    for_uid = tags.get("FrameOfReferenceUID") or generate_uid()
    sop_class = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}.get(modality, SECONDARY_CAPTURE)
    src_desc = src.get("series_description") or tags.get("SeriesDescription") or ""
    desc = description or (f"{src_desc} (medrecon)" if src_desc else "medrecon derived")
    try:
        series_number = int(src.get("series_number") or tags.get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        series_number = 1000
    source_uids = src.get("source_sop_instance_uids") or []
    src_class = tags.get("SOPClassUID")
    if dz == 0:
        raise InputError("the affine's slice axis has zero length")
    if nz > 1 and abs(abs(ck @ normal) / dz - 1) > 1e-6:
        pass  # gantry tilt: positions below follow the sheared axis exactly
    if description is None and len(desc) > 64:
        desc = desc[:64]

    if volume.modality == "CT" or modality == "CT":
        wc = tags.get("WindowCenter", 40)
        ww = tags.get("WindowWidth", 400)
    else:
        lo, hi = np.percentile(volume.data, [1, 99])
        wc, ww = (hi + lo) / 2, max(hi - lo, 1e-3)

    with atomic_dir(path, overwrite=overwrite) as tmp:
        for k in range(nz):
            ipp = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
            sop_uid = generate_uid()
            fm = FileMetaDataset()
            fm.MediaStorageSOPClassUID = sop_class
            fm.MediaStorageSOPInstanceUID = sop_uid
            fm.TransferSyntaxUID = ExplicitVRLittleEndian
            fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            fm.ImplementationVersionName = "MEDRECON"
            ds = pydicom.Dataset()
            ds.file_meta = fm
            ds.SpecificCharacterSet = "ISO_IR 192"
            for kw in KEEP_TAGS:
                if kw in tags and kw != "SpecificCharacterSet":
                    try:
                        setattr(ds, kw, tags[kw])
                    except (TypeError, ValueError):
                        pass
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = for_uid
            ds.StudyDate = tags.get("StudyDate", date)
            ds.StudyTime = tags.get("StudyTime", time)
            ds.SeriesDate, ds.SeriesTime = date, time
            ds.ContentDate, ds.ContentTime = date, time
            ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
            ds.Modality = modality
            for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID",
                       "AccessionNumber", "ReferringPhysicianName", "PositionReferenceIndicator"):
                if kw not in ds:
                    setattr(ds, kw, "")
            if "Manufacturer" not in ds:
                ds.Manufacturer = ""
            if sop_class == CT_IMAGE_STORAGE:
                for kw in ("KVP", "AcquisitionNumber"):  # type 2 in the CT Image module
                    if kw not in ds:
                        setattr(ds, kw, None)
            elif sop_class == MR_IMAGE_STORAGE:
                if "ScanningSequence" not in ds:
                    ds.ScanningSequence = "RM"  # research mode: not known for a derived image
                if "SequenceVariant" not in ds:
                    ds.SequenceVariant = "NONE"
                for kw in ("ScanOptions", "MRAcquisitionType", "EchoTime", "EchoTrainLength"):
                    if kw not in ds:
                        setattr(ds, kw, None)
            else:
                ds.ConversionType = "WSD"  # secondary capture: workstation
            ds.SeriesDescription = desc
            ds.SeriesNumber = series_number
            ds.InstanceNumber = k + 1
            ds.DerivationDescription = "written by medrecon from a Volume"
            if k < len(source_uids) and len(source_uids) == nz and src_class and source_uids[k]:
                item = pydicom.Dataset()
                item.ReferencedSOPClassUID = src_class
                item.ReferencedSOPInstanceUID = source_uids[k]
                ds.SourceImageSequence = Sequence([item])
            ds.ImagePositionPatient = [_ds(v) for v in ipp]
            ds.ImageOrientationPatient = [_ds(v) for v in (*r, *c)]
            ds.PixelSpacing = [_ds(dr), _ds(dc)]
            ds.SliceThickness = _ds(volume.meta.get("slice_thickness") or dz) if like is None else _ds(dz)
            ds.SpacingBetweenSlices = _ds(dz)
            ds.SliceLocation = _ds(float(ipp @ normal))
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = ny, nx
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
            ds.RescaleType = "HU" if modality == "CT" else "US"
            ds.WindowCenter = _ds(wc[0] if isinstance(wc, list) else wc)
            ds.WindowWidth = _ds(ww[0] if isinstance(ww, list) else ww)
            ds.PixelData = np.ascontiguousarray(q[k]).astype("<i2").tobytes()
            ds.save_as(tmp / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
    return path
