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
            "--param", "factor=3", "--noise", "0.5", "--seed", "2", "--slices", "1:4")
    assert r.returncode == 0, r.stderr
    m = medrecon.load_measurement(tmp_path / "m.h5")
    assert m.y.shape == (3, 12, 10) and m.noise_std == 0.5 and m.volume_shape == (3, 12, 10)
    assert m.operator_spec == {"name": "template.scale", "params": {"shape": [12, 10], "factor": 3.0}}
    assert "medrecon simulate template.scale" in m.provenance["command"]
    assert m.reference_meta["dicom"]["PatientID"] == "CLI1"
    assert 0.3 < float(np.std(m.y - 3 * vol.data[1:4])) < 0.7

    r = run("info", tmp_path / "m.h5")
    assert r.returncode == 0 and "template.scale" in r.stdout and "(3, 12, 10)" in r.stdout


@pytest.mark.parametrize("args, pattern", [
    (("convert", "{tmp}/missing", "{tmp}/o.nii"), "no such file"),
    (("convert", "{series}", "{series}"), "already exists"),
    (("info", "{tmp}/bad.h5"), "not a readable HDF5"),
    (("simulate", "template.scale", "--input", "{series}", "--output", "{tmp}/o.h5",
      "--param", "shape=[4,4]"), "shaped \\(4, 4\\)"),
    (("simulate", "no.such.op", "--input", "{series}", "--output", "{tmp}/o.h5"), "no.such.op"),
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
