"""Readers and writers of volumes: :func:`load_volume` / :func:`save_volume` and their formats.

* :mod:`medrecon.io.registry` -- :data:`READERS` / :data:`WRITERS`, the formats as two
  lists (each entry says which paths it accepts), and :func:`load_volume` /
  :func:`save_volume` (also ``medrecon.load_volume`` / ``medrecon.save_volume``).
* :mod:`medrecon.io.dicom` -- DICOM series folders (read: any transfer syntax pydicom
  can decode; write: a derived series, Explicit VR Little Endian, int16 + rescale).
* :mod:`medrecon.io.nifti` -- NIfTI-1 ``.nii`` / ``.nii.gz``.
* :mod:`medrecon.io.atomic` -- temp-then-rename helpers used by every writer.
* :mod:`medrecon.io.sniff` -- the cheap format check importers make.

Imports go one way: these modules import :mod:`medrecon.volume`, never the reverse.
Conventions shared by all of them are in :mod:`medrecon.volume` and ``docs/volumes.md``.
"""

from __future__ import annotations

from medrecon.io.registry import (
    READERS,
    WRITERS,
    VolumeReader,
    VolumeWriter,
    load_volume,
    reader_for,
    save_volume,
    volume_format,
    writer_for,
)

__all__ = ["READERS", "WRITERS", "VolumeReader", "VolumeWriter", "load_volume", "reader_for",
           "save_volume", "volume_format", "writer_for"]
