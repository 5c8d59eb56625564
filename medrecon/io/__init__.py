"""Readers and writers behind :func:`medrecon.load_volume` / :func:`medrecon.save_volume`.

* :mod:`medrecon.io.dicom` -- DICOM series folders (read: any transfer syntax pydicom
  can decode; write: a derived series, Explicit VR Little Endian, int16 + rescale).
* :mod:`medrecon.io.nifti` -- NIfTI-1 ``.nii`` / ``.nii.gz``.
* :mod:`medrecon.io.atomic` -- temp-then-rename helpers used by every writer.

Conventions shared by all of them are in :mod:`medrecon.volume` and ``docs/volumes.md``.
"""
