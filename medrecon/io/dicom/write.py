"""Writing a :class:`~medrecon.volume.Volume` as a new derived DICOM series."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError
from medrecon.io.atomic import atomic_dir, check_target
from medrecon.io.dicom.series import scan_series, select_series
from medrecon.io.dicom.tags import (
    CT_IMAGE_STORAGE,
    KEEP_TAGS,
    MR_IMAGE_STORAGE,
    SECONDARY_CAPTURE,
    import_pydicom,
    tag_values,
)
from medrecon.volume import LPS_TO_RAS, Volume

__all__ = ["write_dicom_series"]


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
    """``x`` as a DICOM decimal string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(x))


def meta_from_like(like: Any) -> dict:
    """The meta dict a derived series takes its patient / study tags from (see ``like=``)."""
    if like is None:
        return {}
    if isinstance(like, Volume):
        return like.meta
    if isinstance(like, dict):
        return like
    if isinstance(like, (str, os.PathLike)):
        series = scan_series(like)
        info = series[0] if len(series) == 1 else select_series(series, None, repr(str(like)))
        tags = tag_values(info.headers[0], keep_empty_lists=True)
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
    pydicom = import_pydicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    path = Path(path)
    check_target(path, overwrite)
    src = meta_from_like(like) if like is not None else volume.meta
    tags = dict(src.get("dicom") or {})
    modality = src.get("modality") or volume.meta.get("modality") or tags.get("Modality") or "OT"

    lps = LPS_TO_RAS @ volume.affine  # RAS -> LPS: the flip is its own inverse
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
