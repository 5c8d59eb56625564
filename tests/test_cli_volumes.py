"""End-to-end CLI: ``medrecon info / convert / simulate`` in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import medrecon


def run(*args, cwd=None):
    env = dict(os.environ)
    env.pop("MEDRECON_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "medrecon.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    data = np.round(np.random.default_rng(0).normal(size=(6, 12, 10)) * 200)
    aff = np.array([[-0.8, 0, 0, 40], [0, -0.8, 0, 30], [0, 0, 2.0, -10], [0, 0, 0, 1.0]])
    vol = medrecon.Volume(data, aff, {"modality": "CT", "units": "HU", "series_description": "synthetic",
                                      "dicom": {"PatientID": "CLI1"}})
    return medrecon.save_volume(vol, tmp / "dicom"), vol


def test_convert_info_simulate(series, tmp_path):
    folder, vol = series
    r = run("convert", folder, tmp_path / "v.nii.gz")
    assert r.returncode == 0, r.stderr
    back = medrecon.load_volume(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)

    r = run("convert", tmp_path / "v.nii.gz", tmp_path / "again")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(medrecon.load_volume(tmp_path / "again").data, vol.data)

    r = run("info", folder)
    assert r.returncode == 0, r.stderr
    assert "6 slices x 12 rows x 10 columns" in r.stdout and "HU" in r.stdout

    r = run("simulate", "template.scale", "--input", tmp_path / "v.nii.gz", "--output", tmp_path / "m.h5",
            "--param", "factor=3", "--noise", "0.5", "--absolute-noise", "--seed", "2", "--slices", "1:4")
    assert r.returncode == 0, r.stderr
    m = medrecon.load_measurement(tmp_path / "m.h5")
    assert m.y.shape == (3, 12, 10) and m.noise_std == 0.5 and m.volume_shape == (3, 12, 10)
    assert m.operator_spec["name"] == "template.scale"
    assert m.operator_spec["params"] == {"shape": [12, 10], "factor": 3.0}
    assert "medrecon simulate template.scale" in m.provenance["command"]
    assert m.reference_meta["dicom"]["PatientID"] == "CLI1"
    assert 0.3 < float(np.std(m.y - 3 * vol.data[1:4])) < 0.7

    r = run("info", tmp_path / "m.h5")
    assert r.returncode == 0 and "template.scale" in r.stdout and "(3, 12, 10)" in r.stdout


@pytest.mark.parametrize("args, pattern", [
    (("convert", "{tmp}/missing", "{tmp}/o.nii"), "no such file"),
    (("convert", "{series}", "{series}"), "would overwrite the input"),
    (("info", "{tmp}/bad.h5"), "not a readable HDF5"),
    (("simulate", "template.scale", "--input", "{series}", "--output", "{tmp}/o.h5",
      "--param", "shape=[4,4]"), "shaped \\(4, 4\\)"),
    (("simulate", "no.such.op", "--input", "{series}", "--output", "{tmp}/o.h5"), "no.such.op"),
    (("simulate", "template.scale", "--input", "{series}", "--output", "{tmp}/o.h5", "--resample", "6y5"),
     "NYxNX"),
    (("simulate", "template.scale", "--input", "{series}", "--output", "{tmp}/o.h5", "--resample", "6x5",
      "--pixel-size", "2"), "not both"),
    (("simulate", "template.scale", "--input", "{series}", "--output", "{tmp}/o.h5", "--pixel-size", "-1"),
     "positive"),
])
def test_user_errors_exit_2_with_one_line(series, tmp_path, args, pattern):
    import re

    (tmp_path / "bad.h5").write_text("not hdf5")
    folder, _ = series
    args = [a.format(tmp=tmp_path, series=folder) for a in args]
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, err
    assert err.startswith("medrecon: error:") and re.search(pattern, err), err


def test_simulate_noise_is_relative_by_default_and_resamples(series, tmp_path):
    folder, vol = series
    r = run("simulate", "template.scale", "--input", folder, "--output", tmp_path / "rel.h5",
            "--param", "factor=2", "--noise", "0.1", "--seed", "1")
    assert r.returncode == 0, r.stderr
    m = medrecon.load_measurement(tmp_path / "rel.h5")
    rms = float(np.sqrt(np.mean((2.0 * vol.data.astype(np.float64)) ** 2)))
    assert abs(m.noise_std - 0.1 * rms) < 1e-3 * rms and m.provenance["noise_mode"] == "relative"
    # the old flag is still accepted and means the same
    r = run("simulate", "template.scale", "--input", folder, "--output", tmp_path / "rel2.h5",
            "--param", "factor=2", "--noise", "0.1", "--relative-noise", "--seed", "1")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(medrecon.load_measurement(tmp_path / "rel2.h5").y, m.y)

    # in-plane resampling: 12x10 slices -> 6x5 by 2x2 block means, affine follows
    r = run("simulate", "template.scale", "--input", folder, "--output", tmp_path / "rs.h5",
            "--param", "factor=1", "--resample", "6x5")
    assert r.returncode == 0, r.stderr
    assert "12x10 -> 6x5" in r.stdout
    m = medrecon.load_measurement(tmp_path / "rs.h5")
    back = medrecon.load_volume(folder)
    blocks = back.data.reshape(6, 6, 2, 5, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(m.y, blocks, atol=1e-4)
    assert m.volume_shape == (6, 6, 5)
    # voxel (0, 0) of the new grid is the centre of the old 2x2 block (0..1, 0..1)
    np.testing.assert_allclose(m.affine[:3, 3], back.affine[:3, :3] @ [0.5, 0.5, 0] + back.affine[:3, 3],
                               atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(m.affine[:3, :3], axis=0), [1.6, 1.6, 2.0], atol=1e-4)

    r = run("simulate", "template.scale", "--input", folder, "--output", tmp_path / "ps.h5",
            "--pixel-size", "1.6")
    assert r.returncode == 0, r.stderr
    assert medrecon.load_measurement(tmp_path / "ps.h5").volume_shape == (6, 6, 5)


def test_resample_inplane_api():
    from medrecon.simulation import _axis_weights, resample_inplane

    rng = np.random.default_rng(0)
    v = medrecon.Volume(rng.normal(size=(3, 12, 9)), np.diag([0.7, 0.5, 3.0, 1.0]),
                        {"pixel_spacing": [0.5, 0.7]})
    for ny, nx in ((5, 4), (12, 9), (20, 13), (1, 1)):
        r = resample_inplane(v, (ny, nx))
        assert r.shape == (3, ny, nx)
        # the field of view is kept and the mean is preserved when shrinking
        np.testing.assert_allclose(np.array(r.spacing[1:]) * (ny, nx), (6.0, 6.3))
        if ny <= 12 and nx <= 9:
            np.testing.assert_allclose(r.data.mean(axis=(1, 2)), v.data.mean(axis=(1, 2)), atol=1e-5)
    for n_in, n_out in ((7, 3), (5, 11), (4, 4)):
        w = _axis_weights(n_in, n_out)
        np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert resample_inplane(v, pixel_size=1.0).shape == (3, 6, 6)
    assert v.shape == (3, 12, 9)
