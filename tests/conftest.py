"""Fixtures shared by several test modules."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

#: the CLI study: slices, pixels per side, parallel-beam views
STUDY_Z, STUDY_N, STUDY_VIEWS = 3, 32, 10


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """A folder with ``truth.nii.gz`` (3 Shepp-Logan slices of 32 x 32 HU, 1 mm pixels, 2.5 mm
    slices) and ``m.h5``, its 10-view parallel-beam measurement with 1 % noise, written by a real
    ``medrecon simulate`` process.  Tests may add files to it but must not change these two."""
    import nibabel as nib
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    d = tmp_path_factory.mktemp("study")
    ph = resize(shepp_logan_phantom(), (STUDY_N, STUDY_N), anti_aliasing=True)
    vol = np.stack([ph * (1 + 0.05 * k) for k in range(STUDY_Z)]) * 1000 - 1000  # HU, air outside
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0).astype(np.float32), np.diag([1.0, 1.0, 2.5, 1.0])),
             d / "truth.nii.gz")
    p = subprocess.run([sys.executable, "-m", "medrecon.cli.main", "simulate", "ct.parallel", "-i",
                        str(d / "truth.nii.gz"), "-o", str(d / "m.h5"), "-p", f"n_views={STUDY_VIEWS}", "--noise",
                        "0.01", "--relative-noise", "--seed", "1"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return d
