"""Readers and writers of volumes: :func:`load_volume` / :func:`save_volume` and their formats.

* :mod:`medrecon.io.registry` -- :data:`READERS` / :data:`WRITERS`, the formats as two
  lists (each entry says which paths it accepts), and :func:`load_volume` /
  :func:`save_volume` (also ``medrecon.load_volume`` / ``medrecon.save_volume``).
* :mod:`medrecon.io.dicom` -- DICOM series folders (read: any transfer syntax pydicom
  can decode; write: a derived series, Explicit VR Little Endian, int16 + rescale).
* :mod:`medrecon.io.nifti` -- NIfTI-1 ``.nii`` / ``.nii.gz``.
* :mod:`medrecon.io.atomic` -- temp-then-rename helpers used by every writer.
* :mod:`medrecon.io.sniff` -- the cheap format check importers make.
* :mod:`medrecon.io.budget` -- the memory budget every reader checks before it allocates
  (``--max-memory``, ``$MEDRECON_MAX_MEMORY``).
* :mod:`medrecon.io.hdf5` -- opening HDF5 files from elsewhere: no external links, external
  storage or virtual datasets; dataset sizes checked against the budget.
* :mod:`medrecon.io.arrayfiles` -- arrays an operator spec references by file: confined to
  the measurement's folder, read within the budget.

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
