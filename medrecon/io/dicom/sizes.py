"""How much memory reading one DICOM file takes, checked against the memory budget
(:mod:`medrecon.io.budget`) before pydicom allocates it.

* **Deflated transfer syntax** (Deflated Explicit VR Little Endian, ``1.2.840.10008.1.2.1.99``):
  everything after the file meta group is deflate-compressed, and pydicom inflates all of it
  in one call whenever the file is read -- headers only included.  A file of a few MB may
  inflate to gigabytes.  :func:`check_inflated_size` inflates the stream first, 4 MiB of
  output at a time (nothing is kept), and refuses the file as soon as the count passes the
  budget.  Files of every other transfer syntax cost one read of their file meta group.
* **Decoded pixels**: ``Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated / 8``
  bytes (:func:`pixel_bytes`), checked before decoding: a JPEG or RLE file of a few kB may
  declare 65535 x 65535 pixels in many frames.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from medrecon.io.budget import MemoryBudgetError, format_size, max_memory_bytes, require
from medrecon.io.dicom.tags import import_pydicom

__all__ = ["DEFLATED", "check_inflated_size", "pixel_bytes", "check_pixels"]

#: Deflated Explicit VR Little Endian
DEFLATED = "1.2.840.10008.1.2.1.99"
_IN_CHUNK = 1 << 16
_OUT_CHUNK = 1 << 22


def _deflated_stream_start(fp) -> bool:
    """Position ``fp`` after the file meta group; True when the transfer syntax is deflated.

    Only a file pydicom itself would parse is parsed: one with the ``DICM`` preamble, or one
    starting with a file meta element (group 0x0002) -- anything else has no file meta group,
    so no transfer syntax, and is never read as element lengths here."""
    import_pydicom()
    from pydicom import filereader

    head = fp.read(132)
    if head[128:132] == b"DICM":
        fp.seek(132)
    elif len(head) >= 4 and int.from_bytes(head[:2], "little") == 0x0002:
        fp.seek(0)
    else:
        return False
    meta = filereader._read_file_meta_info(fp)
    return str(meta.get("TransferSyntaxUID", "") or "") == DEFLATED


def check_inflated_size(path: Path) -> None:
    """Refuse (:class:`~medrecon.io.budget.MemoryBudgetError`) a deflated DICOM file whose dataset
    inflates to more than the memory budget; other files pass after their file meta group is
    read.  A file whose file meta group cannot be read is left to pydicom to report."""
    try:
        fp = open(path, "rb")
    except OSError:
        return
    with fp:
        try:
            deflated = _deflated_stream_start(fp)
        except Exception:  # noqa: BLE001 - not DICOM or a broken meta group: pydicom says so itself
            return
        if not deflated:
            return
        limit = max_memory_bytes()
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while not inflater.eof:
            data = inflater.unconsumed_tail or fp.read(_IN_CHUNK)
            if not data:
                break
            try:
                total += len(inflater.decompress(data, _OUT_CHUNK))
            except zlib.error:
                return  # a corrupt stream: pydicom reports it
            if total > limit:
                raise MemoryBudgetError(
                    f"{str(path)!r} is a deflated DICOM file whose data inflates to more than the "
                    f"{format_size(limit)} memory limit (counting stopped at {format_size(total)}); if the file is "
                    "trusted, raise the limit with --max-memory (or $MEDRECON_MAX_MEMORY)")


def _int(ds: Any, keyword: str, default: int) -> int:
    try:
        v = int(getattr(ds, keyword, default) or default)
    except (TypeError, ValueError):
        return default
    return max(v, 0)


def pixel_bytes(ds: Any) -> int:
    """Bytes of the decoded pixel array a DICOM dataset declares (rows x columns x frames x
    samples x bytes per sample; 4 or 8 bytes per sample for float pixel data)."""
    if "DoubleFloatPixelData" in ds:
        per = 8
    elif "FloatPixelData" in ds:
        per = 4
    else:
        per = max((_int(ds, "BitsAllocated", 16) + 7) // 8, 1)
    return (_int(ds, "Rows", 0) * _int(ds, "Columns", 0) * max(_int(ds, "NumberOfFrames", 1), 1)
            * max(_int(ds, "SamplesPerPixel", 1), 1) * per)


def check_pixels(ds: Any, path: Path) -> None:
    """Refuse decoding pixels over the memory budget (:func:`pixel_bytes`)."""
    rows, cols, frames = _int(ds, "Rows", 0), _int(ds, "Columns", 0), max(_int(ds, "NumberOfFrames", 1), 1)
    require(pixel_bytes(ds), f"the pixel data of {path.name} ({frames} frame(s) of {rows} x {cols})")
