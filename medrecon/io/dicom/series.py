"""Finding DICOM series: scan a folder's headers (no pixels), group them into series, pick one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError, InputError
from medrecon.io.dicom.sizes import check_inflated_size
from medrecon.io.dicom.tags import DICOMDIR_SOP, import_pydicom

__all__ = ["SeriesInfo", "scan_series", "select_series", "sniff_dicom"]


@dataclass
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


def sniff_dicom(path: Path) -> bool:
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
    pydicom = import_pydicom()
    from pydicom.errors import InvalidDicomError

    root = Path(path)
    if not root.exists():
        raise FileFormatError(f"no such file or folder: {str(root)!r}")
    groups: dict[tuple, list[tuple[Path, Any]]] = {}
    n_files = 0
    for f in _iter_files(root):
        n_files += 1
        check_inflated_size(f)  # a deflated file is inflated whole by pydicom, even for its header
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            # no 128-byte preamble + "DICM": old ACR-NEMA style files; try without it
            try:
                if not sniff_dicom(f):
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

