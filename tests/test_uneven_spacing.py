"""Unevenly spaced DICOM series: refused by default with a sentence naming ``--allow-uneven``; with it
(``load_volume(..., allow_uneven=True)`` / ``--allow-uneven``) resampled to even spacing along the
normal, linear in position, the first slice kept, the affine's direction kept, the change recorded."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medrecon
from medrecon.errors import InputError
from medrecon.io.dicom import GeometryWarning, UnevenSpacingError

DRIVER = Path(__file__).resolve().parent / "cli_driver.py"
#: slice positions (mm along the normal): 3 steps of 2 mm, one of 5 mm (a missing slice), 2 of 3 mm
ZS = np.cumsum([0.0, 2, 2, 2, 5, 3, 3])
PS = (0.7, 0.5)  # PixelSpacing (row, column) mm


def _profile(z):
    """Slice value as a function of position: smooth but not linear (so interpolation has an error)."""
    return 100.0 * np.sin(z / 6.0) + 10.0 * z


def _series(folder: Path, zs=ZS, shift_x=0.0) -> Path:
    """A real DICOM series (written by medrecon, positions then edited with pydicom) with slices at
    ``zs`` mm along the normal; slice ``k``'s pixels are ``_profile(zs[k])`` plus an in-plane ramp.
    ``shift_x`` mm per mm of z tilts the line of slices (a gantry tilt)."""
    ramp = np.arange(8)[None, :] + 0.0 * np.arange(6)[:, None]
    data = np.stack([np.round(_profile(z)) + ramp for z in zs]).astype(np.float32)
    vol = medrecon.Volume(data, np.diag([PS[1], PS[0], 1.0, 1.0]), {"modality": "CT", "units": "HU"})
    out = medrecon.save_volume(vol, folder)
    for f in sorted(out.iterdir()):
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        ds.ImagePositionPatient = [-3.0 - shift_x * float(zs[k]), -4.0, float(zs[k]) + 20.0]  # LPS
        ds.save_as(f)
    return out


def test_refused_without_the_option_and_the_sentence_names_it(tmp_path):
    folder = _series(tmp_path / "s")
    with pytest.raises(UnevenSpacingError) as exc:
        medrecon.load_volume(folder)
    msg = str(exc.value)
    assert "3 steps of 2.000 mm, 1 of 5.000 mm, then 2 of 3.000 mm" in msg
    assert "--allow-uneven" in msg and "allow_uneven=True" in msg and "\n" not in msg


def test_read_with_allow_uneven_resamples_to_the_median_step(tmp_path):
    folder = _series(tmp_path / "s")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = medrecon.load_volume(folder, allow_uneven=True)
    med = float(np.median(np.diff(ZS)))  # 2.5 mm
    n = int(np.floor((ZS[-1] - ZS[0]) / med + 1e-6)) + 1  # 17 mm / 2.5 mm -> 7 slices
    assert vol.shape == (n, 6, 8)
    # affine: the first slice where it was read (LPS (-3, -4, 20) -> RAS (3, 4, 20)), the in-plane
    # columns unchanged, the slice column the even step along the normal
    np.testing.assert_allclose(vol.affine[:3, 3], [3.0, 4.0, 20.0], atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, :2], np.array([[PS[1], 0], [0, PS[0]], [0, 0]]), atol=1e-9)
    np.testing.assert_allclose(vol.affine[:3, 2], [0.0, 0.0, med], atol=1e-9)
    assert vol.spacing[0] == pytest.approx(med) and vol.meta["slice_spacing"] == pytest.approx(med)
    rec = vol.meta["resampled_slices"]
    assert rec["from_n"] == 7 and rec["to_n"] == n and rec["to_spacing_mm"] == pytest.approx(med)
    assert rec["from_positions_mm"] == pytest.approx(list(ZS - ZS[0]))
    assert "1 of 5.000 mm" in rec["steps"] and "linear" in rec["method"]
    msgs = [str(w.message) for w in caught if issubclass(w.category, GeometryWarning)]
    assert any("resampled 7 slices to 7 evenly spaced by 2.5 mm" in m for m in msgs), msgs
    # values: at every new position, the linear interpolation in position of the two read slices
    # around it; where a new position is a read one, the read slice itself
    targets = ZS[0] + med * np.arange(n)
    read = np.round(_profile(ZS))
    expected = np.interp(targets, ZS, read)
    np.testing.assert_allclose(vol.data[:, 0, 0], expected, rtol=0, atol=1e-3)
    for t, v in zip(targets, vol.data[:, 0, 0], strict=True):
        if np.isclose(ZS, t).any():
            assert v == pytest.approx(read[np.isclose(ZS, t)][0], abs=1e-3)
    # against the smooth profile itself: within the linear interpolation error, max |f''| h^2 / 8
    h = np.max(np.diff(ZS))
    bound = (100.0 / 36.0) * h ** 2 / 8 + 0.5 + 1e-3  # + 0.5: the values were rounded to integers
    assert np.max(np.abs(vol.data[:, 0, 0] - _profile(targets))) <= bound
    np.testing.assert_allclose(vol.data[:, :, 1] - vol.data[:, :, 0], 1.0, atol=1e-3)  # the in-plane ramp kept


def test_explicit_step_an_even_series_and_bad_values(tmp_path):
    folder = _series(tmp_path / "s")
    vol = medrecon.load_volume(folder, allow_uneven=1.0)
    assert vol.shape[0] == 18 and vol.spacing[0] == pytest.approx(1.0)
    with pytest.raises(InputError, match="positive slice step"):
        medrecon.load_volume(folder, allow_uneven=-2.0)
    even = _series(tmp_path / "even", zs=np.arange(5) * 3.0)
    vol = medrecon.load_volume(even, allow_uneven=True)  # nothing to do: read as without the option
    assert vol.shape[0] == 5 and "resampled_slices" not in vol.meta and vol.spacing[0] == pytest.approx(3.0)
    assert len(vol.meta["source_sop_instance_uids"]) == 5


def test_gantry_tilt_stays_a_shear(tmp_path):
    """Uneven and tilted (the line of slices leans 0.2 mm in x per mm in z): named in the refusal; read
    with the option, the slice column follows the line (a sheared affine) with the even step along
    the normal, and the tilt is reported as for an evenly spaced tilted series."""
    folder = _series(tmp_path / "t", shift_x=0.2)
    with pytest.raises(UnevenSpacingError, match="gantry tilt of 11.31 degrees.*--allow-uneven"):
        medrecon.load_volume(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = medrecon.load_volume(folder, allow_uneven=True)
    med = 2.5
    np.testing.assert_allclose(vol.affine[:3, 2], [0.2 * med, 0.0, med], atol=1e-9)  # LPS -0.2 -> RAS +0.2
    assert vol.meta["gantry_tilt_deg"] == pytest.approx(np.degrees(np.arctan(0.2)), abs=1e-3)
    assert any("gantry tilt" in str(w.message) for w in caught)


def test_grid_frame_offsets(tmp_path):
    """A multi-frame RT Dose placed by GridFrameOffsetVector with a missing frame position."""
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    off = [0.0, 5.0, 10.0, 15.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 65.0, 70.0, 75.0]
    ds.GridFrameOffsetVector = off
    ds.save_as(tmp_path / "dose.dcm")
    with pytest.raises(UnevenSpacingError, match="--allow-uneven"):
        medrecon.load_volume(tmp_path / "dose.dcm")
    vol = medrecon.load_volume(tmp_path / "dose.dcm", allow_uneven=True)
    assert vol.shape[0] == 16 and vol.spacing[0] == pytest.approx(5.0)
    frames = medrecon.load_volume(get_testdata_file("rtdose.dcm")).data  # the same frames, evenly read
    np.testing.assert_allclose(vol.data[:4], frames[:4], rtol=1e-6)
    np.testing.assert_allclose(vol.data[4], (frames[3] + frames[4]) / 2, rtol=1e-5, atol=1e-6)  # 20 mm: midway
    np.testing.assert_allclose(vol.data[5:], frames[4:], rtol=1e-6)


def test_cli_convert_info_and_refusal(tmp_path):
    folder = _series(tmp_path / "s")
    cases = [
        {"id": "refused", "argv": ["convert", str(folder), str(tmp_path / "no.nii.gz")], "cwd": str(tmp_path)},
        {"id": "convert", "argv": ["convert", str(folder), str(tmp_path / "even.nii.gz"), "--allow-uneven"],
         "cwd": str(tmp_path)},
        {"id": "info", "argv": ["info", str(folder)], "cwd": str(tmp_path)},
        {"id": "info-even", "argv": ["info", str(folder), "--allow-uneven"], "cwd": str(tmp_path)},
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "cases.json"), str(tmp_path / "res.json")],
                   check=True, timeout=300)
    res = json.loads((tmp_path / "res.json").read_text())
    r = res["refused"]
    assert r["rc"] == 2 and len(r["stderr"].strip().splitlines()) == 1, r
    assert "unevenly spaced" in r["stderr"] and "--allow-uneven" in r["stderr"]
    assert not (tmp_path / "no.nii.gz").exists()
    r = res["convert"]
    assert r["rc"] == 0, r["stderr"]
    assert "resampled 7 slices to 7 evenly spaced by 2.5 mm" in r["stderr"] and "7 x 6 x 8" in r["stdout"]
    out = medrecon.load_volume(tmp_path / "even.nii.gz")
    ref = medrecon.load_volume(folder, allow_uneven=True)
    assert out.shape == ref.shape and out.meta["resampled_slices"]["to_n"] == 7
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(out.data, ref.data, atol=1e-3)
    assert res["info"]["rc"] == 0 and "geometry: slices are unevenly spaced" in res["info"]["stdout"]
    r = res["info-even"]
    assert r["rc"] == 0 and "voxel size: dz=2.5" in r["stdout"] and "resampled" in r["stderr"], r
