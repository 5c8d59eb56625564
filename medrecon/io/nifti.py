"""NIfTI-1 files (``.nii``, ``.nii.gz``) through nibabel.

A NIfTI array is indexed ``[i, j, k]`` (x fastest on disk); a :class:`Volume`
holds ``data[k, j, i]``.  Reading transposes ``(X, Y, Z) -> (Z, Y, X)``; writing
transposes back, so the affine is used unchanged in both directions.

Reading uses nibabel's choice of affine (sform when its code is set, else
qform) and applies ``scl_slope`` / ``scl_inter``.  Writing sets sform = qform =
``volume.affine`` with both codes 1 (scanner anatomical), units mm; a sheared
affine (gantry-tilted CT) is kept exactly in the sform while the qform, which
cannot hold a shear, gets nibabel's nearest rigid + zoom approximation.
``volume.meta`` is stored as JSON in a header extension (code 6, "comment",
prefixed ``medrecon-meta:``) so that NIfTI -> DICOM conversion can keep the
patient / study tags; note this carries the patient tags of the source series
into the NIfTI file.

Before nibabel reads anything past the header, the header's data shape x data type (plus
the header extensions up to ``vox_offset`` and the float32 volume made of it) is checked
against the memory budget (:mod:`medrecon.io.budget`); nibabel then decompresses exactly the
declared bytes, so a gzip "bomb" of zeros is refused before it is inflated.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np

from medrecon.errors import FileFormatError
from medrecon.io.budget import require
from medrecon.jsonable import json_default
from medrecon.volume import Volume

__all__ = ["read_nifti", "write_nifti"]

_PREFIX = b"medrecon-meta:"


def _nib():
    import nibabel

    return nibabel


def _header(p: Path):
    """The NIfTI-1/2 header of ``p`` (compressed or not), read from its first 540 bytes only:
    nothing after the header (extensions, data) is decompressed."""
    nib = _nib()
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(p)) as fh:
            raw = fh.read(540)
    except Exception as exc:  # noqa: BLE001 - gzip / bz2 / OS errors of many kinds
        raise FileFormatError(f"{str(p)!r} is not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
    n = 540 if klass is nib.Nifti2Header else 348
    if len(raw) < n or not sizes & {348, 540}:
        raise FileFormatError(f"{str(p)!r} is not a readable NIfTI file (no NIfTI-1/2 header)")
    try:  # the 4 zero bytes after the header say "no extensions": they are not read here
        return klass.from_fileobj(io.BytesIO(raw[:n] + bytes(4)), check=False)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on bad headers
        raise FileFormatError(f"{str(p)!r} has an invalid NIfTI header ({type(exc).__name__}: {exc})") from exc


def _check_size(p: Path) -> None:
    """Refuse, before anything past the header is read, a file whose header and extensions
    (``vox_offset``) plus data (shape x dtype) plus the float32 volume made of it are over the
    memory budget (:mod:`medrecon.io.budget`)."""
    hdr = _header(p)
    try:
        shape = tuple(int(s) for s in hdr.get_data_shape())
        itemsize = int(hdr.get_data_dtype().itemsize)
        offset = max(int(float(hdr["vox_offset"])), 0)
    except Exception as exc:  # noqa: BLE001 - a dim or datatype nibabel cannot interpret
        raise FileFormatError(f"{str(p)!r} has an invalid NIfTI header ({type(exc).__name__}: {exc})") from exc
    if any(s < 0 for s in shape):
        raise FileFormatError(f"{str(p)!r} has an invalid NIfTI header (negative dimension in {shape})")
    n = math.prod(shape)
    require(offset + n * itemsize + 4 * n,
            f"{str(p)!r} ({' x '.join(map(str, shape))} {hdr.get_data_dtype()}, read as float32)")


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a NIfTI-1/2 file as a Volume (see the module docstring)."""
    nib = _nib()
    p = Path(path)
    _check_size(p)
    try:
        img = nib.load(str(p))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds
        raise FileFormatError(f"{str(p)!r} is not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise FileFormatError(f"{str(p)!r} is not a NIfTI image (nibabel read it as {type(img).__name__})")
    shape = img.shape
    if len(shape) > 3:
        if int(np.prod(shape[3:])) != 1:
            raise FileFormatError(
                f"{str(p)!r} holds a {len(shape)}D image shaped {shape}; a Volume is 3D (one time point)")
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated .gz, short file
        raise FileFormatError(f"{str(p)!r} is truncated or corrupt ({type(exc).__name__}: {exc})") from exc
    if arr.dtype.kind == "c":
        raise FileFormatError(f"{str(p)!r} holds complex values; a Volume is real")
    if arr.ndim > 3:
        arr = arr.reshape(arr.shape[:3])
    while arr.ndim < 3:
        arr = arr[..., None]
    data = np.ascontiguousarray(np.asarray(arr, dtype=np.float32).transpose(2, 1, 0))
    hdr = img.header
    meta: dict = {}
    for ext in hdr.extensions:
        content = ext.get_content() if hasattr(ext, "get_content") else ext._content
        if isinstance(content, bytes) and content.startswith(_PREFIX):
            try:
                meta = json.loads(content[len(_PREFIX):].rstrip(b"\0").decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                meta = {}
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    meta.update({
        "source": str(p),
        "source_format": "nifti",
        "sform_code": int(scode),
        "qform_code": int(qcode),
    })
    meta.setdefault("modality", None)
    meta.setdefault("units", None)
    affine = img.affine
    if affine is None:
        affine = np.diag([*hdr.get_zooms()[:3], 1.0])
    return Volume(data, np.asarray(affine, dtype=np.float64), meta)


def write_nifti(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``) atomically; see the module docstring."""
    nib = _nib()
    from medrecon.io.atomic import atomic_file

    p = Path(path)
    data = volume.data
    lo, hi = float(data.min()), float(data.max())
    if np.all(data == np.round(data)) and lo >= -32768 and hi <= 32767:
        arr = data.astype(np.int16)
    else:
        arr = data
    img = nib.Nifti1Image(arr.transpose(2, 1, 0), volume.affine)
    hdr = img.header
    hdr.set_data_dtype(arr.dtype)
    img.set_sform(volume.affine, code=1)
    img.set_qform(volume.affine, code=1)
    hdr.set_xyzt_units(xyz="mm")
    hdr["descrip"] = b"medrecon"
    # no scaling: values are stored as they are
    hdr["scl_slope"] = 1.0
    hdr["scl_inter"] = 0.0
    meta = {k: v for k, v in volume.meta.items() if k not in ("source_files",)}
    payload = _PREFIX + json.dumps(meta, default=json_default).encode("utf-8")
    hdr.extensions.append(nib.nifti1.Nifti1Extension(6, payload))
    suffix = ".nii.gz" if p.name.lower().endswith(".gz") else ".nii"
    with atomic_file(p, overwrite=overwrite, suffix=suffix) as tmp:
        try:
            nib.save(img, str(tmp))
        except Exception as exc:  # noqa: BLE001
            raise FileFormatError(f"could not write {str(p)!r}: {exc}") from exc
    return p
