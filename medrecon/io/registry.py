"""Which reader reads a path, which writer writes it: two lists, tried in order.

:data:`READERS` and :data:`WRITERS` hold one entry per format.  Each entry says which
paths it accepts (by name only: cheap, never raises) and how to read / write them; the
first entry that accepts a path handles it.  The DICOM entries come last and accept
every path (a folder, a ``.dcm`` file, or any other file tried as DICOM).  A new format
is one entry inserted before them::

    from medrecon.io import READERS, VolumeReader

    READERS.insert(0, VolumeReader("mha", lambda p: p.name.lower().endswith(".mha"), read_mha))

:func:`load_volume` / :func:`save_volume` (also ``medrecon.load_volume`` /
``medrecon.save_volume``) dispatch through these lists.  The volume itself
(:mod:`medrecon.volume`) knows nothing of readers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError, InputError
from medrecon.io import dicom, nifti
from medrecon.io.webclient import is_dicomweb_url
from medrecon.volume import Volume

__all__ = ["VolumeReader", "VolumeWriter", "READERS", "WRITERS", "reader_for", "writer_for", "output_format",
           "volume_format", "load_volume", "save_volume"]


@dataclass(frozen=True)
class VolumeReader:
    """One format :func:`load_volume` reads.

    ``accepts(path)`` tells from the path's name whether the format is this one;
    ``read(path, series=None)`` returns a :class:`Volume` or raises a
    :class:`~medrecon.errors.MedreconError` (``series`` picks one of several series in
    a folder; formats without series refuse one).  ``options``: the further keyword
    options ``read`` takes (``"allow_uneven"``: resample unevenly spaced slices); a reader
    that lacks one is called without it.
    """

    name: str
    accepts: Callable[[Path], bool]
    read: Callable[..., Volume]
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class VolumeWriter:
    """One format :func:`save_volume` writes.

    ``accepts(path)`` tells from the path's name whether the format is this one;
    ``write(volume, path, overwrite=False, like=None)`` writes and returns the path
    written (``like``: where tags are taken from; formats without tags ignore it).
    """

    name: str
    accepts: Callable[[Path], bool]
    write: Callable[..., Path]


# ----------------------------------------------------------------- names
def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _is_hdf5(path: Path) -> bool:
    return path.name.lower().endswith((".h5", ".hdf5"))


def _anything(path: Path) -> bool:
    return True


def _is_dicomweb(path: Path) -> bool:
    return is_dicomweb_url(path)  # dicomweb:// (a path object keeps it as dicomweb:/HOST/...)


# --------------------------------------------------------------- readers
def _read_nifti(path: Path, series: str | int | None = None) -> Volume:
    if path.is_dir():
        raise FileFormatError(f"{str(path)!r} is a folder, not a NIfTI file")
    if series is not None:
        raise InputError(f"--series (series={series!r}) picks a series in a DICOM folder; {str(path)!r} is a NIfTI "
                         "file holding one volume")
    return nifti.read_nifti(path)


def _refuse_measurement(path: Path, series: str | int | None = None) -> Volume:
    raise FileFormatError(f"{str(path)!r} is a measurement file, not a volume; use load_measurement")


# --------------------------------------------------------------- writers
def _write_nifti(volume: Volume, path: Path, overwrite: bool = False, like: Any = None) -> Path:
    return nifti.write_nifti(volume, path, overwrite=overwrite)


def _refuse_measurement_output(volume: Volume, path: Path, overwrite: bool = False, like: Any = None) -> Path:
    raise InputError(f"{str(path)!r} names an HDF5 file; use save_measurement for measurements")


def _read_dicomweb(path: Any, series: str | int | None = None) -> Volume:
    from medrecon.io.dicomweb import read_dicomweb

    return read_dicomweb(path, series=series)


def _write_dicomweb(volume: Volume, path: Any, overwrite: bool = False, like: Any = None) -> str:
    from medrecon.io.dicomweb import store_volume

    return store_volume(volume, path, overwrite=overwrite, like=like)


def _write_dicom(volume: Volume, path: Path, overwrite: bool = False, like: Any = None) -> Path:
    if path.suffix.lower() not in ("", ".dcm", ".dicom") and not path.is_dir():
        raise InputError(
            f"cannot tell the output format of {str(path)!r}: use .nii / .nii.gz for NIfTI "
            "or a folder name (no extension) for a DICOM series"
        )
    return dicom.write_dicom_series(volume, path, overwrite=overwrite, like=like)


READERS: list[VolumeReader] = [
    VolumeReader("dicomweb", _is_dicomweb, _read_dicomweb),  # dicomweb[s]://HOST/PATH?study=UID&series=UID
    VolumeReader("nifti", _is_nifti, _read_nifti),
    VolumeReader("measurement", _is_hdf5, _refuse_measurement),
    VolumeReader("dicom", _anything, dicom.read_dicom, ("allow_uneven",)),  # last: a folder, .dcm, any other file
]

WRITERS: list[VolumeWriter] = [
    VolumeWriter("dicomweb", _is_dicomweb, _write_dicomweb),  # STOW-RS: returns the series' URL
    VolumeWriter("nifti", _is_nifti, _write_nifti),
    VolumeWriter("measurement", _is_hdf5, _refuse_measurement_output),
    VolumeWriter("dicom", _anything, _write_dicom),  # last: a folder name for a derived series
]


def reader_for(path: str | os.PathLike) -> VolumeReader:
    """The first entry of :data:`READERS` that accepts ``path``."""
    p = Path(path)
    for reader in READERS:
        if reader.accepts(p):
            return reader
    raise FileFormatError(f"no reader accepts {str(p)!r}")


def writer_for(path: str | os.PathLike) -> VolumeWriter:
    """The first entry of :data:`WRITERS` that accepts ``path``."""
    p = Path(path)
    for writer in WRITERS:
        if writer.accepts(p):
            return writer
    raise InputError(f"no writer accepts {str(p)!r}")


def output_format(path: str | os.PathLike) -> str:
    """The format a run writes to ``path``, told from its name alone: ``"nifti"`` for ``.nii`` /
    ``.nii.gz``, ``"dicom"`` for a name without extension (or ``.dcm`` / ``.dicom``, or an existing
    folder); an :class:`InputError` for anything else (``r.png``), before any work.

    >>> output_format("out/recon.nii.gz"), output_format("out/series")
    ('nifti', 'dicom')

    A ``dicomweb://`` / ``dicomwebs://`` URL is ``"dicomweb"`` (a derived series stored with STOW-RS).
    """
    if is_dicomweb_url(path):
        return "dicomweb"
    p = Path(os.fspath(path).rstrip("/\\"))
    if p.name.lower().endswith((".nii", ".nii.gz")):
        return "nifti"
    if p.suffix.lower() in ("", ".dcm", ".dicom") or p.is_dir():
        return "dicom"
    raise InputError(f"cannot tell the output format of {str(p)!r}: use .nii / .nii.gz for NIfTI or a folder name "
                     "(no extension) for a DICOM series")


def volume_format(path: str | os.PathLike) -> str:
    """``"nifti"`` for ``.nii`` / ``.nii.gz``, ``"measurement"`` for ``.h5`` / ``.hdf5``,
    ``"dicom"`` for a folder, a ``.dcm`` file or any other file (tried as DICOM): the name
    of the reader :func:`load_volume` would use."""
    return reader_for(path).name


def load_volume(path: str | os.PathLike, series: str | int | None = None,
                allow_uneven: bool | float = False) -> Volume:
    """Read a DICOM series folder (searched recursively), a DICOM file, or a NIfTI file.

    Parameters
    ----------
    path : str or Path
        A folder of DICOM files, one DICOM file, or ``.nii`` / ``.nii.gz``; or a DICOMweb series,
        ``dicomweb://HOST[:PORT]/PATH?study=UID&series=UID`` (``dicomwebs://`` for HTTPS;
        :mod:`medrecon.io.dicomweb`).
    series : str or int, optional
        For a folder holding several series: the index in the listing, the
        SeriesInstanceUID (with ``#n`` for one orientation / matrix group of a
        series that mixes them) or the SeriesDescription.  Without it a folder
        with several series raises :class:`InputError` listing them.
    allow_uneven : bool or float
        A DICOM series whose slices are unevenly spaced (a missing slice, variable spacing)
        raises :class:`~medrecon.io.dicom.UnevenSpacingError` unless this is set: True
        resamples it to the median step, a number to that step (mm), by linear
        interpolation in position along the normal; the first slice keeps its position and
        ``meta["resampled_slices"]`` records the change (a :class:`GeometryWarning` says so).
        NIfTI volumes are evenly spaced by construction; DICOMweb does not take it yet.

    Returns
    -------
    Volume
        ``data`` float32 ``(Z, Y, X)`` in physical units (RescaleSlope /
        RescaleIntercept applied per slice), ``affine`` RAS+ mm for voxel
        ``(i=column, j=row, k=slice)``.

    Example::

        vol = medrecon.load_volume("scans/ct_series/")      # DICOM folder
        vol = medrecon.load_volume("brain.nii.gz")
    """
    if is_dicomweb_url(path):  # dicomweb[s]://HOST/PATH?study=UID&series=UID: medrecon.io.dicomweb
        return reader_for(path).read(os.fspath(path), series=series)
    p = Path(path)
    if not p.exists():
        raise FileFormatError(f"no such file or folder: {str(p)!r}")
    reader = reader_for(p)
    extra = {"allow_uneven": allow_uneven} if allow_uneven is not False and "allow_uneven" in reader.options else {}
    return reader.read(p, series=series, **extra)


def save_volume(volume: Volume, path: str | os.PathLike, overwrite: bool = False, like: Any = None) -> Path:
    """Write ``volume`` as NIfTI (``.nii`` / ``.nii.gz``) or as a derived DICOM series folder.

    Parameters
    ----------
    volume : Volume
    path : str or Path
        ``*.nii`` / ``*.nii.gz`` -> NIfTI-1 (float32, or int16 when every value is an
        integer in int16 range; sform = qform = ``volume.affine``, codes 1 =
        scanner; ``volume.meta`` kept in a JSON header extension).  Any other name
        -> a folder of DICOM files ``IM0001.dcm`` ...: a new derived series (new
        SeriesInstanceUID and SOPInstanceUIDs, ImageType DERIVED\\SECONDARY,
        geometry from the affine, values as int16 with one RescaleSlope /
        RescaleIntercept for the series so that the error is at most slope / 2).
        ``dicomweb://HOST[:PORT]/PATH[?study=UID]`` -> the same derived series stored on a
        DICOMweb server with STOW-RS (:func:`medrecon.io.dicomweb.store_volume`); the
        series' URL is returned instead of a path.
    overwrite : bool
        Replace an existing output.  Without it an existing path raises InputError.
    like : Volume, dict, str or Path, optional
        Where the DICOM writer takes patient / study / frame-of-reference tags
        from: another Volume, a ``meta`` dict (e.g. ``Measurement.reference_meta``)
        or a DICOM file / folder.  Default: ``volume.meta``.  Ignored for NIfTI.

    The output is written to a temporary sibling and renamed into place.
    Returns the path written.
    """
    if not isinstance(volume, Volume):
        raise InputError(f"save_volume needs a Volume, got {type(volume).__name__}")
    if not np.all(np.isfinite(volume.data)):
        raise InputError("the volume holds NaN or infinite values; they cannot be written")
    if is_dicomweb_url(path):  # STOW-RS to a DICOMweb server: medrecon.io.dicomweb.store_volume
        return writer_for(path).write(volume, os.fspath(path), overwrite=overwrite, like=like)
    p = Path(path)
    return writer_for(p).write(volume, p, overwrite=overwrite, like=like)
