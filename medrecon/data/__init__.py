"""Small data shipped with medrecon (works without ../shared/data).

* ``ct_sample.nii.gz`` -- 8 axial slices of an abdomen CT, 256 x 256, 2.148 mm
  pixels, 3 mm slices, int16 HU; derived from TCIA Pancreatic-CT-CBCT-SEG
  (CC BY 4.0; attribution in ``ct_sample.LICENSE.txt``, provenance in
  ``data_manifests/ct-pancreas-tcia.json``).

>>> from medrecon.data import ct_sample_path
>>> ct_sample_path().name
'ct_sample.nii.gz'
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ct_sample_path", "load_ct_sample"]

_HERE = Path(__file__).resolve().parent


def ct_sample_path() -> Path:
    """Path of the shipped CT sample (``medrecon/data/ct_sample.nii.gz``)."""
    return _HERE / "ct_sample.nii.gz"


def load_ct_sample():
    """The shipped CT sample as a :class:`medrecon.Volume` (8 x 256 x 256, HU, 2.148 mm pixels)."""
    from medrecon.io import load_volume

    return load_volume(ct_sample_path())
