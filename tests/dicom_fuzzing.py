"""The DICOM fuzzing kit shared by ``tests/test_dicom_fuzz.py`` and ``benchmarks/dicom_fuzz.py``.

One input is a *recipe* (a JSON-able dict) drawn from a seeded ``numpy`` generator by
:func:`make_recipe`; :func:`build_input` writes it as real files and :func:`run_case` reads
them with :func:`medrecon.load_volume` under a per-input time limit and classifies the
outcome.  The same seed always gives the same files (pydicom's bundled test files are the
starting points), so any outcome can be replayed from its seed alone
(``benchmarks/dicom_fuzz.py --replay SEED``).

Inputs
------
* **one file** (``kind="file"``): CT_small, MR_small in five transfer syntaxes (explicit /
  implicit little endian, big endian, RLE, JPEG-LS, JPEG 2000), JPEG2000.dcm and rtdose
  (multi-frame, GridFrameOffsetVector);
* **a series folder** (``kind="series"``): 2-6 slices of CT_small or MR_small placed at
  evenly spaced ImagePositionPatient along the normal, then *series operations*: a missing
  slice, duplicate positions or SOPInstanceUIDs, jittered / uneven / tilted positions, one
  slice with another orientation, matrix size, pixel spacing, SeriesInstanceUID, modality,
  frame count or transfer syntax (mixed syntaxes: every MR slice may come from another
  encoding of the same image, or be re-written deflated), slices in sub-folders, junk files
  (text, empty, preamble-only) beside the slices.

On top of either, *tag operations* delete or change the tags the reader depends on
(positions, orientation, spacing, Rows / Columns, Bits*, PixelRepresentation,
SamplesPerPixel, Photometric, Rescale*, NumberOfFrames, GridFrameOffsetVector, UIDs,
TransferSyntaxUID, the PixelData length), writing junk values raw through the element's VR
('abc' in a DS), and *byte operations* overwrite bytes of, or truncate, one written file.

The contract (:func:`run_case`): every input gives a valid Volume (3D float32 of at least
one voxel, finite 4x4 affine with an invertible 3x3 part, a dict ``meta``) or raises a
:class:`medrecon.errors.MedreconError` with a non-empty one-paragraph message; never
another exception, never an invalid volume, never longer than the time limit.

This lives in ``tests/`` (importable there like ``tests/cli_driver.py``) rather than in the
package: it is a test generator tied to pydicom's test files, not an API plugin authors
build on (the public conformance kit, :mod:`medrecon.testing`, is about operators).
"""

from __future__ import annotations

import copy
import io
import shutil
import signal
import struct
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FILE_SEEDS", "SERIES_BASES", "MR_VARIANTS", "make_recipe", "build_input", "run_case",
           "volume_problem", "Outcome", "FuzzTimeout", "seed_datasets"]

#: single-file starting points (all bundled with pydicom, nothing is downloaded)
FILE_SEEDS = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
              "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
              "JPEG2000.dcm", "rtdose.dcm"]
#: the same 64 x 64 MR image in several transfer syntaxes (a series may mix them)
MR_VARIANTS = ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
               "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
SERIES_BASES = ["CT_small.dcm", "MR_small.dcm"]
SERIES_OPS = ["missing", "dup_position", "dup_sop", "jitter", "uneven", "tilt", "orientation", "flip_normal",
              "size", "spacing", "other_series", "modality", "frames", "mixed_ts", "deflate", "subfolder",
              "junk_file", "rescale"]
#: operations on the frames of an enhanced multi-frame file (functional group sequences)
FRAME_OPS = ["missing_group", "dup_position", "jitter", "uneven", "orientation", "no_position", "junk_position",
             "no_shared", "no_spacing", "frames_mismatch", "rescale", "junk_rescale", "empty_item"]

TS_CHOICES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.100", "1.2.3.4.5.6", "", "garbage",
]
_JUNK_STR = ["", "abc", "1\\2", " ", "-", "1e999", "0x10", "NaN"]
_FLOAT_SPECIAL = [0.0, -1.0, 1e30, -1e-30, 65535.0, float("nan"), float("inf"), float("-inf")]
# keyword -> (value kind, parameter): "num" a DS/IS string, "list" n numbers, "int" an
# integer range, "pick" one of a list
TAG_MUTATIONS: dict[str, tuple[str, Any]] = {
    "ImagePositionPatient": ("list", 3),
    "ImageOrientationPatient": ("list", 6),
    "PixelSpacing": ("list", 2),
    "SliceThickness": ("num", None),
    "SpacingBetweenSlices": ("num", None),
    "Rows": ("int", (0, 70000)),
    "Columns": ("int", (0, 70000)),
    "BitsAllocated": ("pick", [0, 1, 7, 8, 12, 16, 24, 32, 64, 65535]),
    "BitsStored": ("int", (0, 70)),
    "HighBit": ("int", (0, 70)),
    "PixelRepresentation": ("int", (0, 3)),
    "SamplesPerPixel": ("int", (0, 4)),
    "PhotometricInterpretation": ("pick", ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL",
                                           "", "XYZ"]),
    "RescaleSlope": ("num", None),
    "RescaleIntercept": ("num", None),
    "NumberOfFrames": ("pick", ["0", "1", "2", "15", "16", "-1", "x", "1000000"]),
    "GridFrameOffsetVector": ("list", 15),
    "SeriesInstanceUID": ("pick", ["", "1.2.3", "x" * 64]),
    "SOPInstanceUID": ("pick", ["", "1.2.3", "x" * 64]),
    "Modality": ("pick", ["CT", "MR", "RTDOSE", "", "OT"]),
    "ImageType": ("pick", ["ORIGINAL\\PRIMARY\\MOSAIC", "DERIVED", ""]),
}
_TAG_KWS = sorted(TAG_MUTATIONS) + ["TransferSyntaxUID", "PixelData"]


# ---------------------------------------------------------------------------- recipes

def _num_str(rng: np.random.Generator) -> str:
    if rng.random() < 0.25:
        return str(rng.choice(_JUNK_STR))
    if rng.random() < 0.4:
        v = float(rng.choice(_FLOAT_SPECIAL))
    else:
        v = float(rng.normal() * 10.0 ** int(rng.integers(-40, 40)))
    return repr(v)[:16]


def _value(rng: np.random.Generator, kw: str) -> Any:
    how, p = TAG_MUTATIONS[kw]
    if how == "num":
        return _num_str(rng)
    if how == "list":
        n = p if rng.random() < 0.5 else int(rng.integers(0, p + 3))
        if rng.random() < 0.5:  # plausible numbers: deeper paths of the reader
            return [repr(round(float(v), 3)) for v in rng.normal(0.0, 1.0 if kw != "ImagePositionPatient" else 100.0,
                                                                   size=n)]
        return [_num_str(rng) for _ in range(n)]
    if how == "int":
        return int(rng.integers(p[0], p[1] + 1))
    return p[int(rng.integers(len(p)))]


def make_recipe(seed: int) -> dict:
    """The input number ``seed`` (a JSON-able dict; the same seed always gives the same dict)."""
    rng = np.random.default_rng([int(seed), 0xD1C0])
    r: dict[str, Any] = {"seed": int(seed)}
    u = rng.random()
    if u < 0.4:
        r.update(kind="file", base=str(rng.choice(FILE_SEEDS)), n_slices=1, series_ops=[])
    elif u < 0.55:
        nf = int(rng.integers(2, 6))
        ops = [[str(rng.choice(FRAME_OPS)), int(rng.integers(0, nf)), round(float(rng.uniform(-1.0, 1.0)), 4), None]
               for _ in range(int(rng.choice([0, 1, 1, 2, 3])))]
        r.update(kind="enhanced", base="CT_small.dcm", n_slices=1, n_frames=nf, series_ops=ops,
                 step_mm=round(float(rng.choice([0.5, 1.0, 2.5, 5.0])), 3))
    else:
        n = int(rng.integers(2, 7))
        ops = []
        for _ in range(int(rng.choice([0, 1, 1, 1, 2, 2, 3]))):
            op = str(rng.choice(SERIES_OPS))
            k = int(rng.integers(0, n))
            ops.append([op, k, round(float(rng.uniform(-1.0, 1.0)), 4),
                        str(rng.choice(MR_VARIANTS)) if op == "mixed_ts" else None])
        r.update(kind="series", base=str(rng.choice(SERIES_BASES)), n_slices=n, series_ops=ops,
                 step_mm=round(float(rng.choice([0.5, 1.0, 2.5, 5.0])), 3))
    r["allow_uneven"] = bool(r["kind"] != "file" and rng.random() < 0.3)
    n = r["n_slices"]
    n_tag = int(rng.choice([0, 0, 1, 1, 2, 3, 4])) if r["kind"] != "file" else int(rng.integers(0, 5))
    tags = []
    for _ in range(n_tag):
        kw = str(rng.choice(_TAG_KWS))
        k = int(rng.integers(0, n))
        if rng.random() < 0.3:
            tags.append([k, kw, "delete", None])
        elif kw == "TransferSyntaxUID":
            tags.append([k, kw, "change", str(rng.choice(TS_CHOICES))])
        elif kw == "PixelData":
            tags.append([k, kw, "change", round(float(rng.uniform(0.0, 1.5)), 4)])  # new length, a fraction
        else:
            tags.append([k, kw, "change", _value(rng, kw)])
    r["tag_ops"] = tags
    r["byte_ops"] = [[int(rng.integers(0, n)), round(float(rng.random()), 6), int(rng.integers(0, 256))]
                     for _ in range(int(rng.choice([0, 0, 0, 1, 2, 3])))]
    r["truncate"] = [int(rng.integers(0, n)), round(float(rng.random()), 6)] if rng.random() < 0.15 else None
    # old ACR-NEMA style files: no 128-byte preamble / "DICM", or no file meta group at all
    r["preamble"] = str(rng.choice(["keep"] * 8 + ["strip", "strip_meta"]))
    return r


# ---------------------------------------------------------------------------- writing

@lru_cache(maxsize=1)
def seed_datasets() -> dict:
    """The bundled pydicom test files (name -> Dataset) that this pydicom has."""
    import pydicom
    from pydicom.data import get_testdata_file

    out = {}
    for name in sorted(set(FILE_SEEDS + MR_VARIANTS)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = get_testdata_file(name, download=False)
        if p is not None:
            out[name] = pydicom.dcmread(p)
    return out


def set_raw(ds, kw: str, value) -> None:
    """Replace the value of ``kw`` keeping its VR; strings go in raw so that junk the VR does not
    allow ('abc' in a DS) is written too; integers of a binary VR are clipped to its range."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement

    tag = tag_for_keyword(kw)
    vr = dictionary_VR(tag)
    if isinstance(value, list):
        value = "\\".join(value)
    if vr in ("US", "SS", "UL", "SL"):
        fmt = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i"}[vr]
        lo, hi = {"US": (0, 65535), "SS": (-32768, 32767), "UL": (0, 2**32 - 1), "SL": (-2**31, 2**31 - 1)}[vr]
        try:
            v = min(max(int(value), lo), hi)
        except (TypeError, ValueError):
            v = 0
        raw = struct.pack(fmt, v)
    else:
        s = str(value).encode("latin-1", "replace")
        raw = s + (b" " if len(s) % 2 else b"")
    ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)


def _apply_tag(ds, kw: str, how: str, v) -> None:
    if kw == "TransferSyntaxUID":
        if how == "delete":
            if "TransferSyntaxUID" in ds.file_meta:
                del ds.file_meta.TransferSyntaxUID
        else:
            ds.file_meta.TransferSyntaxUID = v
    elif kw == "PixelData":
        if "PixelData" not in ds:
            return
        if how == "delete":
            del ds.PixelData
        else:
            pd = ds.PixelData
            n = int(len(pd) * v)
            ds.PixelData = (pd[:n] if n <= len(pd) else pd + b"\x01" * (n - len(pd)))[: n + (n % 2)]
    elif how == "delete":
        if kw in ds:
            del ds[kw]
    else:
        set_raw(ds, kw, v)


def _place(ds, k: int, step: float, uid_prefix: str) -> None:
    """Slice ``k`` of an evenly spaced series along the normal of ds's orientation."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    p0 = np.array([float(v) for v in ds.ImagePositionPatient])
    ds.ImagePositionPatient = [round(float(v), 4) for v in p0 + k * step * normal]
    ds.SOPInstanceUID = f"{uid_prefix}.{k + 1}"
    ds.InstanceNumber = k + 1
    ds.SeriesInstanceUID = f"{uid_prefix}.0"


def _series_op(dss: list, files: list, op: str, k: int, x: float, extra, step: float, root: Path) -> None:
    """Apply one series operation to the slice datasets ``dss`` (None = dropped) / file names."""
    seeds = seed_datasets()
    ds = dss[k]
    if ds is None:
        return
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    if op == "missing":
        dss[k] = None
    elif op == "dup_position":
        other = dss[(k + 1) % len(dss)]
        if other is not None:
            ds.ImagePositionPatient = list(other.ImagePositionPatient)
    elif op == "dup_sop":
        ds.SOPInstanceUID = str(dss[0].SOPInstanceUID) if dss[0] is not None else "1.2.3"
    elif op == "jitter":
        ds.ImagePositionPatient = [round(float(v), 4) for v in ipp + x * step * np.array([0.3, -0.2, 1.0])]
    elif op == "uneven":
        for j in range(k, len(dss)):
            if dss[j] is not None:
                p = np.array([float(v) for v in dss[j].ImagePositionPatient])
                dss[j].ImagePositionPatient = [round(float(v), 4) for v in p + (1 + x) * step * normal]
    elif op == "tilt":
        for j, d in enumerate(dss):
            if d is not None:
                p = np.array([float(v) for v in d.ImagePositionPatient])
                d.ImagePositionPatient = [round(float(v), 4) for v in p + j * x * step * iop[3:]]
    elif op == "orientation":
        a = x * np.pi / 2
        r = np.array([np.cos(a), np.sin(a), 0.0])
        c = np.array([-np.sin(a), np.cos(a), 0.0]) if abs(x) > 0.5 else np.array([0.0, 0.0, -1.0])
        ds.ImageOrientationPatient = [round(float(v), 6) for v in np.concatenate([r, c])]
    elif op == "flip_normal":
        ds.ImageOrientationPatient = [round(float(v), 6) for v in np.concatenate([iop[:3], -iop[3:]])]
    elif op == "size":
        if "PixelData" in ds and str(ds.file_meta.TransferSyntaxUID) in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
            arr = ds.pixel_array[: max(1, int(ds.Rows) // 2), : max(1, int(ds.Columns) // (2 if x > 0 else 1))]
            ds.PixelData = np.ascontiguousarray(arr).tobytes()
            ds.Rows, ds.Columns = arr.shape
        else:
            ds.Rows = max(1, int(ds.Rows) // 2)
    elif op == "spacing":
        ds.PixelSpacing = [round(float(v) * (1.5 + x), 4) for v in ds.PixelSpacing]
    elif op == "other_series":
        ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.9"
    elif op == "modality":
        ds.Modality = "MR" if str(ds.Modality) == "CT" else "CT"
    elif op == "frames":
        ds.NumberOfFrames = 2 if x < 0.5 else 1
    elif op == "mixed_ts":
        if extra in seeds and int(ds.Rows) == int(seeds[extra].Rows):
            new = copy.deepcopy(seeds[extra])
            for kw in ("ImagePositionPatient", "ImageOrientationPatient", "SOPInstanceUID", "InstanceNumber",
                       "SeriesInstanceUID", "PixelSpacing"):
                if kw in ds:
                    setattr(new, kw, copy.deepcopy(getattr(ds, kw)))
            dss[k] = new
    elif op == "deflate":
        if str(ds.file_meta.TransferSyntaxUID) in ("1.2.840.10008.1.2.1",):
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    elif op == "subfolder":
        files[k] = f"sub{k}/{files[k]}"
    elif op == "junk_file":
        kind = int(abs(x) * 3) % 3
        (root / f"zz_junk{k}").write_bytes([b"not dicom at all\n", b"", b"\0" * 128 + b"DICM"][kind])
    elif op == "rescale":
        ds.RescaleSlope = round(1.0 + abs(x), 4)
        ds.RescaleIntercept = round(-1024.0 * x, 2)


def _enhanced(base, recipe: dict):
    """An enhanced multi-frame image built from ``base``: ``n_frames`` copies of its pixels, the
    orientation and pixel spacing in the shared functional groups, one PlanePositionSequence and
    PixelValueTransformationSequence per frame; then the recipe's frame operations."""
    from pydicom.dataset import Dataset

    ds = copy.deepcopy(base)
    nf, step = recipe["n_frames"], recipe["step_mm"]
    iop = [float(v) for v in ds.ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    p0 = np.array([float(v) for v in ds.ImagePositionPatient])

    def item(**kw):
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    shared = item(PixelMeasuresSequence=[item(PixelSpacing=list(ds.PixelSpacing), SliceThickness=step)],
                  PlaneOrientationSequence=[item(ImageOrientationPatient=iop)])
    per = [item(PlanePositionSequence=[item(ImagePositionPatient=[round(float(v), 4) for v in p0 + k * step * normal])],
                PixelValueTransformationSequence=[item(RescaleSlope=1.0, RescaleIntercept=-1024.0, RescaleType="HU")])
           for k in range(nf)]
    for op, k, x, _ in recipe["series_ops"]:
        fr = per[k] if k < len(per) else None
        try:  # an earlier operation may have removed what this one changes
            if op == "missing_group" and fr is not None:
                per.pop(k)
            elif fr is None:
                continue
            elif op == "dup_position":
                first = per[0].PlanePositionSequence[0]
                fr.PlanePositionSequence[0].ImagePositionPatient = list(first.ImagePositionPatient)
            elif op == "jitter":
                p = np.array([float(v) for v in fr.PlanePositionSequence[0].ImagePositionPatient])
                fr.PlanePositionSequence[0].ImagePositionPatient = [round(float(v), 4) for v in p + x * step]
            elif op == "uneven":
                for g in per[k:]:
                    p = np.array([float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient])
                    p = p + (1 + x) * step * normal
                    g.PlanePositionSequence[0].ImagePositionPatient = [round(float(v), 4) for v in p]
            elif op == "orientation":
                a = x * np.pi / 2
                o = [float(np.cos(a)), float(np.sin(a)), 0.0, 0.0, 0.0, -1.0]
                fr.PlaneOrientationSequence = [item(ImageOrientationPatient=o)]
            elif op == "no_position":
                del fr.PlanePositionSequence
            elif op == "junk_position":
                set_raw(fr.PlanePositionSequence[0], "ImagePositionPatient", ["1", "x" if x > 0 else "nan", ""])
            elif op == "no_shared":
                shared = None
            elif op == "no_spacing" and shared is not None:
                del shared.PixelMeasuresSequence
            elif op == "frames_mismatch":
                nf = max(0, nf + (1 if x > 0 else -1))
            elif op == "rescale":
                fr.PixelValueTransformationSequence[0].RescaleSlope = round(1.0 + abs(x) * 1e3, 4)
            elif op == "junk_rescale":
                set_raw(fr.PixelValueTransformationSequence[0], "RescaleSlope", "inf" if x > 0 else "abc")
            elif op == "empty_item":
                fr.PlanePositionSequence = [Dataset()]
        except (AttributeError, IndexError, KeyError, ValueError, TypeError):
            continue
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        if kw in ds:
            del ds[kw]
    if shared is not None:
        ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = per
    ds.NumberOfFrames = nf
    ds.PixelData = bytes(ds.PixelData) * recipe["n_frames"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    return ds


def _strip(data: bytes, how: str) -> bytes:
    """``how="strip"``: without the preamble and ``DICM``; ``"strip_meta"``: without the file meta
    group either (its length is the value of (0002,0000), explicit VR little endian)."""
    if how == "keep" or data[128:132] != b"DICM":
        return data
    if how == "strip":
        return data[132:]
    if data[132:136] == b"\x02\x00\x00\x00" and len(data) >= 144:
        return data[144 + int.from_bytes(data[140:144], "little"):]
    return data[132:]


def _write(ds, path: Path, byte_ops: list, truncate, preamble: str = "keep") -> bool:
    import pydicom

    buf = io.BytesIO()
    try:
        pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - a dataset pydicom cannot write is not a reader input
        return False
    data = bytearray(_strip(buf.getvalue(), preamble))
    for pos, val in byte_ops:
        if data:
            data[int(pos * len(data))] = val
    if truncate is not None:
        data = data[: int(truncate * len(data))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return True


def build_input(recipe: dict, tmp: Path) -> Path | None:
    """Write the input of ``recipe`` under the empty folder ``tmp``; returns the path to read
    (a file or a folder), or None when pydicom cannot write the mutated dataset (not an input)."""
    seeds = seed_datasets()
    if recipe["base"] not in seeds:
        return None
    base = seeds[recipe["base"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the junk values written
        if recipe["kind"] == "file":
            dss, files, root = [copy.deepcopy(base)], ["one.dcm"], tmp
        elif recipe["kind"] == "enhanced":
            dss, files, root = [_enhanced(base, recipe)], ["one.dcm"], tmp
        else:
            root = tmp / "series"
            root.mkdir()
            dss, files = [], []
            for k in range(recipe["n_slices"]):
                ds = copy.deepcopy(base)
                _place(ds, k, recipe["step_mm"], f"1.2.826.0.1.3680043.8.498.{recipe['seed'] % 100000 + 1}")
                dss.append(ds)
                files.append(f"IM{k:03d}.dcm")
            for op, k, x, extra in recipe["series_ops"]:
                try:
                    _series_op(dss, files, op, k, x, extra, recipe["step_mm"], root)
                except (AttributeError, IndexError, KeyError, ValueError, TypeError):
                    continue  # an earlier operation left nothing this one can change (e.g. "size" twice)
        for k, kw, how, v in recipe["tag_ops"]:
            if dss[k] is not None:
                _apply_tag(dss[k], kw, how, v)
        for k, ds in enumerate(dss):
            if ds is None:
                continue
            byte_ops = [(p, b) for j, p, b in recipe["byte_ops"] if j == k]
            trunc = recipe["truncate"][1] if recipe["truncate"] and recipe["truncate"][0] == k else None
            if not _write(ds, root / files[k], byte_ops, trunc, recipe.get("preamble", "keep")):
                return None
    return root if recipe["kind"] == "series" else root / files[0]


# ---------------------------------------------------------------------------- reading

class FuzzTimeout(BaseException):
    """The per-input time limit passed (a BaseException: the reader's ``except Exception`` must not
    turn it into a FileFormatError)."""


def _alarm(signum, frame):
    raise FuzzTimeout


def volume_problem(vol) -> str | None:
    """What is wrong with a Volume the reader returned (None: nothing)."""
    import medrecon

    if not isinstance(vol, medrecon.Volume):
        return f"not a Volume: {type(vol).__name__}"
    d, a = vol.data, vol.affine
    if d.ndim != 3 or d.dtype != np.float32 or min(d.shape) < 1:
        return f"data {d.dtype} {d.shape}: not a 3D float32 array of at least one voxel"
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        return f"affine not a finite 4x4 matrix: {a.tolist()}"
    if not abs(np.linalg.det(a[:3, :3])) > 0:
        return "affine's 3x3 part is singular"
    if not isinstance(vol.meta, dict):
        return "meta is not a dict"
    return None


def message_problem(msg: str) -> str | None:
    """What is wrong with the message of a MedreconError (None: nothing): it must be a non-empty
    paragraph without a traceback or numpy reprs (``np.float64(1.0)``)."""
    if not msg.strip():
        return "empty message"
    if "Traceback" in msg or "\n" in msg.strip():
        return "not one paragraph"
    if "np.float" in msg or "np.int" in msg or "array(" in msg:
        return "numpy reprs in the message"
    return None


def _options(recipe: dict) -> dict:
    """Keyword arguments of load_volume for ``recipe`` (``allow_uneven`` when this medrecon has it)."""
    import inspect

    import medrecon

    if recipe.get("allow_uneven") and "allow_uneven" in inspect.signature(medrecon.load_volume).parameters:
        return {"allow_uneven": True}
    return {}


@dataclass
class Outcome:
    """What one input gave: ``kind`` is ``"volume"``, ``"medrecon_error"``, ``"other"`` (an exception
    of another class: a bug), ``"invalid_volume"`` or ``"bad_message"`` (bugs: :func:`volume_problem`,
    :func:`message_problem`), ``"timeout"`` or ``"not_written"`` (pydicom could not write it)."""

    seed: int
    kind: str
    error: str | None = None  # the exception's class name
    message: str = ""
    seconds: float = 0.0
    trace: str = ""
    recipe: dict = field(default_factory=dict)


def run_case(seed: int, timeout_s: float = 10.0, tmp_root: str | None = None, recipe: dict | None = None) -> Outcome:
    """Build input ``seed`` in a fresh temporary folder, read it with :func:`medrecon.load_volume`
    under a SIGALRM time limit of ``timeout_s`` and classify the outcome (see :class:`Outcome`)."""
    import time

    import medrecon
    from medrecon.errors import MedreconError

    recipe = recipe or make_recipe(seed)
    tmp = Path(tempfile.mkdtemp(prefix="fuzz", dir=tmp_root))
    try:
        target = build_input(recipe, tmp)
        if target is None:
            return Outcome(seed, "not_written", recipe=recipe)
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                vol = medrecon.load_volume(target, **_options(recipe))
        except FuzzTimeout:
            return Outcome(seed, "timeout", message=f"longer than {timeout_s:g} s", seconds=timeout_s, recipe=recipe)
        except MedreconError as exc:
            msg = str(exc)
            kind = "bad_message" if message_problem(msg) else "medrecon_error"
            return Outcome(seed, kind, type(exc).__name__, msg[:300], time.perf_counter() - t0, recipe=recipe)
        except Exception as exc:  # noqa: BLE001 - the bug this kit looks for
            return Outcome(seed, "other", type(exc).__name__, str(exc)[:300], time.perf_counter() - t0,
                           traceback.format_exc(), recipe)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        problem = volume_problem(vol)
        if problem:
            return Outcome(seed, "invalid_volume", None, problem, time.perf_counter() - t0, recipe=recipe)
        return Outcome(seed, "volume", seconds=time.perf_counter() - t0, recipe=recipe)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
