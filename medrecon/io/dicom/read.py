"""Reading one DICOM series (single-frame files, enhanced multi-frame, Siemens mosaic,
GridFrameOffsetVector) as a :class:`~medrecon.volume.Volume`."""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError, MedreconError
from medrecon.io.budget import array_bytes, require
from medrecon.io.dicom.geometry import Geometry, GeometryWarning, slice_geometry
from medrecon.io.dicom.pixels import checked_rescale, read_pixels, rescale_into
from medrecon.io.dicom.series import SeriesInfo, scan_series, select_series
from medrecon.io.dicom.tags import tag_values
from medrecon.volume import LPS_TO_RAS, Volume

__all__ = ["read_dicom"]


def _floats(v: Any, n: int, what: str, path: Path) -> np.ndarray:
    """Header value ``v`` as ``n`` finite float64 numbers, or a FileFormatError naming ``what``."""
    try:
        a = np.array([float(e) for e in v], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{path}: {what} is not a list of numbers ({v!r})") from exc
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise FileFormatError(f"{path}: {what} should hold {n} finite numbers, got {v!r}")
    return a


def _meta(ds0, info: SeriesInfo, files: list[Path], root: Path, geo: Geometry, spacing, slopes) -> dict:
    """The ``Volume.meta`` of a series read from ``root`` (see :class:`~medrecon.volume.Volume`)."""
    modality = str(getattr(ds0, "Modality", "") or "") or None
    rescale_type = str(getattr(ds0, "RescaleType", "") or "")
    if modality == "CT":
        units = "HU" if rescale_type in ("", "HU") else rescale_type
    else:
        units = rescale_type or "arbitrary"
    tags = tag_values(ds0)
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


def _require_volume(n_slices: int, info: SeriesInfo, root: Path) -> None:
    """Refuse a float32 volume of ``n_slices`` x Rows x Columns over the memory budget."""
    require(array_bytes((n_slices, info.rows, info.columns), 4),
            f"the series {info.key} in {str(root)!r} ({n_slices} x {info.rows} x {info.columns} float32)")


# what pydicom / numpy raise on header values they cannot convert or that contradict
# each other (a wrong VR, a short list, a bad sequence); read_dicom turns them into
# one-sentence FileFormatErrors
_HEADER_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError,
                  ZeroDivisionError, NotImplementedError, struct.error, EOFError)


def read_dicom(path: str | os.PathLike, series: str | int | None = None,
               allow_uneven: bool | float = False) -> Volume:
    """Read one series of a DICOM folder (or one DICOM file); see :mod:`medrecon.io.dicom`.

    ``allow_uneven``: an unevenly spaced series is resampled to even spacing (True: the median
    step; a number: that step in mm) instead of refused; see :func:`_make_even`."""
    try:
        return _read_dicom(path, series, allow_uneven)
    except MedreconError:
        raise
    except _HEADER_ERRORS as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise FileFormatError(
            f"{str(path)!r}: invalid or inconsistent DICOM header ({type(exc).__name__}: {detail[:200]})") from exc


def _make_even(vol: Volume, geo: Geometry) -> Volume:
    """``vol`` (slices in ``geo.order``) resampled to even spacing when ``geo.uneven`` says so.

    Slice ``m`` of the result lies at ``d_0 + m s`` along the normal (``s`` the new spacing, ``d_0``
    the first slice's position), linearly interpolated in position between the two read slices
    around it (:func:`medrecon.io.resample.resample_slices`); the affine (built by
    :func:`slice_geometry`) keeps the first slice's origin and the direction, with step ``s``.
    A :class:`GeometryWarning` names the steps and the new spacing; ``meta["resampled_slices"]``
    records them (``from_positions_mm``: the read positions along the normal, relative to the
    first; ``to_spacing_mm``; ``from_n`` / ``to_n``; ``method``).  Per-slice meta (SOP instance
    UIDs) no longer matches the slices and is dropped.
    """
    if geo.uneven is None:
        return vol
    from medrecon.io.resample import resample_slices

    u = geo.uneven
    d = np.asarray(u["normal_mm"], dtype=np.float64)
    data, targets = resample_slices(vol.data, d, float(u["spacing_mm"]))
    warnings.warn(
        f"slices were unevenly spaced ({u['runs']}): resampled {d.size} slices to {targets.size} evenly spaced "
        f"by {u['spacing_mm']:.4g} mm (linear interpolation in position; --allow-uneven)",
        GeometryWarning, stacklevel=4)
    meta = vol.meta
    meta["resampled_slices"] = {
        "from_n": int(d.size), "to_n": int(targets.size), "steps": u["runs"],
        "from_positions_mm": [round(float(v - d[0]), 6) for v in d],
        "median_step_mm": float(u["median_step_mm"]), "to_spacing_mm": float(u["spacing_mm"]),
        "method": "linear interpolation in position along the slice normal",
    }
    meta["source_sop_instance_uids"] = []
    return Volume(data, geo.affine, meta)


def _read_dicom(path: str | os.PathLike, series: str | int | None = None,
                allow_uneven: bool | float = False) -> Volume:
    root = Path(path)
    all_series = scan_series(root)
    info = select_series(all_series, series, repr(str(root)))
    if info.multiframe:
        return _read_multiframe(info, root, allow_uneven)
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
            raise FileFormatError(f"mixed orientations: {f.name} has ImageOrientationPatient {o.tolist()}")
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
                f"PixelSpacing changes within the series ({spacing.tolist()} vs {ps.tolist()} in {f.name})")
    ds0 = headers[0]
    fallback = None
    for kw in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            fallback = float(getattr(ds0, kw))
            break
        except (TypeError, ValueError, AttributeError):
            continue
    geo = slice_geometry(iop, spacing, np.array(ipps), names, fallback, allow_uneven)
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
    _require_volume(len(geo.order), info, root)
    data = np.empty((len(geo.order), info.rows, info.columns), dtype=np.float32)
    slopes = []
    sop_uids = []
    for k, idx in enumerate(geo.order):
        f = info.files[idx]
        arr, ds = read_pixels(f)
        if arr.shape != (info.rows, info.columns):
            raise FileFormatError(f"{f.name}: pixel array shape {arr.shape} does not match Rows x Columns")
        slope, _ = rescale_into(arr, ds, data[k], f.name)
        slopes.append(slope)
        sop_uids.append(str(getattr(ds, "SOPInstanceUID", "")))
        del arr, ds
    meta = _meta(ds0, info, [info.files[i] for i in geo.order], root, geo, spacing, slopes)
    meta["source_sop_instance_uids"] = sop_uids
    return _make_even(Volume(data, geo.affine, meta), geo)


def _read_multiframe(info: SeriesInfo, root: Path, allow_uneven: bool | float = False) -> Volume:
    """An enhanced (multi-frame) image: geometry from the functional group sequences."""
    f = info.files[0]
    _require_volume(info.n_slices, info, root)
    arr, ds = read_pixels(f)
    nf = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] != nf:
        raise FileFormatError(f"{f.name}: {arr.shape[0]} frames decoded but NumberOfFrames is {nf}")
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per = ds.PerFrameFunctionalGroupsSequence if "PerFrameFunctionalGroupsSequence" in ds else None
    if (per is None or len(per) != nf) and "GridFrameOffsetVector" in ds:
        return _read_grid_offsets(info, root, arr, ds, allow_uneven)
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
    geo = slice_geometry(iops_a[0], pss[0], np.array(ipps), [f"frame {k + 1}" for k in range(nf)], fallback,
                         allow_uneven)
    for k in range(nf):
        checked_rescale(slopes[k], inters[k], arr[k], f"{f.name} frame {k + 1}")
    data = np.stack([(arr[k].astype(np.float64) * slopes[k] + inters[k]).astype(np.float32) for k in geo.order])
    meta = _meta(ds, info, [f], root, geo, pss[0], slopes)
    meta["source_sop_instance_uids"] = [str(getattr(ds, "SOPInstanceUID", ""))]
    meta["multiframe"] = True
    return _make_even(Volume(data, geo.affine, meta), geo)


def _read_mosaic(info: SeriesInfo, root: Path) -> Volume:
    """A Siemens mosaic (slices tiled in one image), unpacked by nibabel's MosaicWrapper."""
    f = info.files[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nibabel: "DICOM readers are highly experimental"
        from nibabel.nicom import dicomwrappers
    arr, ds = read_pixels(f)  # decodes (any transfer syntax) and checks greyscale
    try:
        w = dicomwrappers.wrapper_from_data(ds)
        data = np.asarray(w.get_data(), dtype=np.float64)  # (rows, columns, slices), rescaled
        nib_aff = np.asarray(w.affine, dtype=np.float64)  # LPS, voxel (row, column, slice)
    except Exception as exc:  # noqa: BLE001 - nibabel raises several kinds on odd CSA headers
        raise FileFormatError(f"{f.name}: Siemens mosaic could not be unpacked ({exc})") from exc
    if data.ndim == 2:
        data = data[..., None]
    lps = nib_aff[:, [1, 0, 2, 3]]  # to voxel (column, row, slice)
    geo = Geometry(order=[0], affine=LPS_TO_RAS @ lps, step=lps[:3, 2], tilt_deg=0.0,
                    positions=lps[:3, 3][None])
    meta = _meta(ds, info, [f], root, geo, np.linalg.norm(nib_aff[:3, :2], axis=0), [1.0])
    meta["mosaic"] = True
    meta["source_sop_instance_uids"] = [str(getattr(ds, "SOPInstanceUID", ""))]
    return Volume(data.transpose(2, 0, 1).astype(np.float32), geo.affine, meta)


def _read_grid_offsets(info: SeriesInfo, root: Path, arr: np.ndarray, ds,
                       allow_uneven: bool | float = False) -> Volume:
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
    geo = slice_geometry(iop, ps, ipps, [f"frame {k + 1}" for k in range(len(off))], None, allow_uneven)
    scale = float(getattr(ds, "DoseGridScaling", 1.0) or 1.0)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0) * scale
    inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    slope, inter = checked_rescale(slope, inter, arr, f.name)
    data = np.stack([(arr[k].astype(np.float64) * slope + inter).astype(np.float32) for k in geo.order])
    meta = _meta(ds, info, [f], root, geo, ps, [slope])
    if "DoseUnits" in ds:
        meta["units"] = str(ds.DoseUnits)
    meta["source_sop_instance_uids"] = [str(getattr(ds, "SOPInstanceUID", ""))]
    meta["multiframe"] = True
    return _make_even(Volume(data, geo.affine, meta), geo)

