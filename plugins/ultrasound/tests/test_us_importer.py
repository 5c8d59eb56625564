"""``us.rf``: Verasonics-style MAT (v5 and v7.3) and zea-style HDF5 RF files written here, read back
into measurements; a point scatterer simulated by us.planewave survives the file layouts (the
beamformed image peaks where it was); bad files exit 2 through the real CLI; RFdata1.mat when present."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from medrecon_us.importer import RFImporter, default_grid, write_rf_hdf5

from medrecon.errors import FileFormatError, InputError
from medrecon.measurement import load_measurement

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FS, F0, C, PITCH = 20e6, 5e6, 1540.0, 0.3e-3
ANGLES = np.radians([-2.0, 0.0, 2.0])
N_EL, N_S = 16, 256
POINT_MM = (6.0, 0.6)  # (depth, lateral)


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "medrecon.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _grid():
    return {"shape": [66, 41], "z_mm": [3.0, 8.0], "x_mm": [-3.0, 3.0]}


@pytest.fixture(scope="module")
def point_rf():
    """RF (n_tx, n_el, n_s) of one point scatterer, simulated by us.planewave (tx_reference center)."""
    import medrecon

    g = _grid()
    op = medrecon.get_operator("us.planewave", **g, n_elements=N_EL, pitch_mm=PITCH * 1e3,
                               angles_deg=np.degrees(ANGLES).tolist(), c=C, fs_hz=FS, n_samples=N_S, f0_hz=F0)
    x = torch.zeros(1, *g["shape"], dtype=torch.float64)
    nz, nx = g["shape"]
    j = round((POINT_MM[0] - 3.0) / 5.0 * (nz - 1))
    i = round((POINT_MM[1] + 3.0) / 6.0 * (nx - 1))
    x[0, j, i] = 1.0
    return op(x)[0].numpy()


def _write_mat(path, rf_tx_el_s, *, angles=ANGLES, c=C, fs=FS, pitch=PITCH, dtype=np.int16, extra=None,
               rf_name="RF", param_name="param"):
    """Verasonics layout: samples x elements x transmits (x frames), integer with an offset."""
    a = np.asarray(rf_tx_el_s).transpose(2, 1, 0)  # (tx, el, s) -> (s, el, tx)
    scale = 1000.0 / np.abs(a).max()
    offset = 128 if dtype == np.uint8 else 0
    if dtype == np.uint8:
        scale = 100.0 / np.abs(a).max()
    q = np.round(a * scale + offset).astype(dtype)
    param = {"c": float(c), "fs": float(fs), "TXangle": np.asarray(angles, float).reshape(1, -1),
             "pitch": float(pitch), **(extra or {})}
    scipy.io.savemat(path, {rf_name: q, param_name: param})
    return q


def _write_mat73(path, q, param):
    """A MATLAB v7.3 file: HDF5 with a 512-byte MAT header, arrays stored transposed (column-major)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("RF", data=np.ascontiguousarray(q.T))
        g = f.create_group("P")
        for k, v in param.items():
            g.create_dataset(k, data=np.atleast_2d(np.asarray(v, float)).T)
    head = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2026 HDF5 schema 1.00 ."
    head = head.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(head)


def _peak(img):
    j, i = np.unravel_index(np.argmax(np.abs(img)), img.shape)
    return j, i


# ------------------------------------------------------------------------------------------ MAT
def test_mat_import_shapes_params_offset_and_default_grid(tmp_path):
    rng = np.random.default_rng(0)
    rf = rng.standard_normal((3, N_EL, N_S))
    p = tmp_path / "rf.mat"
    q = _write_mat(p, rf, dtype=np.uint8, rf_name="RF1", param_name="param1")
    assert RFImporter.can_read(p)
    m = RFImporter().read(p)
    assert m.y.shape == (1, 3, N_EL, N_S) and m.y.dtype == np.float32
    # y[0, tx, el, s] = RF1[s, el, tx] - mean(RF1)
    np.testing.assert_allclose(m.y[0, 2, 5], q[:, 5, 2] - q.mean(), atol=1e-4)
    assert abs(float(m.y.mean())) < 1e-4
    sp = m.operator_spec["params"]
    assert m.operator_spec["name"] == "us.planewave"
    assert sp["angles_deg"] == pytest.approx([-2.0, 0.0, 2.0])
    assert sp["n_elements"] == N_EL and sp["n_samples"] == N_S and sp["pitch_mm"] == pytest.approx(0.3)
    assert sp["c"] == C and sp["fs_hz"] == FS and sp["t0_s"] == 0.0 and sp["f0_hz"] == 5e6
    assert sp["bandwidth"] == 0.6 and sp["f_number"] == 1.5
    # default grid: x across the aperture at pitch/2, z from 5 mm to c t_last / 2 at lambda/8
    nz, nx = sp["shape"]
    assert sp["x_mm"] == pytest.approx([-2.25, 2.25]) and nx == 31
    dz = (sp["z_mm"][1] - sp["z_mm"][0]) / (nz - 1)
    assert dz == pytest.approx(C / F0 / 8 * 1e3) and sp["z_mm"][0] == 5.0
    assert C * (N_S - 1) / FS / 2 * 1e3 - dz <= sp["z_mm"][1] <= C * (N_S - 1) / FS / 2 * 1e3
    assert m.volume_shape == (1, nz, nx) and m.units == "a.u."
    np.testing.assert_allclose(np.linalg.norm(m.affine[:3, :3], axis=0), [0.15, dz, 1.0])
    np.testing.assert_allclose(m.affine[:2, 3], [-2.25, 5.0])
    assert m.provenance["rf_variable"] == "RF1" and m.provenance["f0_source"] == "default 5 MHz"


def test_mat_frames_t0_fc_and_options(tmp_path):
    rng = np.random.default_rng(1)
    rf4 = rng.standard_normal((N_S, N_EL, 3, 2))  # samples x elements x transmits x frames
    q = np.round(rf4 * 300).astype(np.int16)
    p = tmp_path / "frames.mat"
    scipy.io.savemat(p, {"RFdata": q, "P": {"c": 1500.0, "fs": FS, "TXangle": ANGLES, "pitch": PITCH,
                                            "t0": 2e-6, "fc": 6e6}})
    m = RFImporter().read(p)
    assert m.y.shape == (2, 3, N_EL, N_S)
    np.testing.assert_allclose(m.y[1, 0, 3], q[:, 3, 0, 1] - q.mean(), atol=1e-3)
    sp = m.operator_spec["params"]
    assert sp["t0_s"] == pytest.approx(2e-6) and sp["f0_hz"] == 6e6 and sp["c"] == 1500.0
    m1 = RFImporter().read(p, frames=1, z_mm=[4, 9], shape=[20, 10], f_number=2.0, f0_hz=4e6, c=1540)
    assert m1.y.shape == (1, 3, N_EL, N_S)
    np.testing.assert_array_equal(m1.y[0], m.y[1])
    sp1 = m1.operator_spec["params"]
    assert sp1["shape"] == [20, 10] and sp1["z_mm"] == [4.0, 9.0] and sp1["f_number"] == 2.0
    assert sp1["f0_hz"] == 4e6 and sp1["c"] == 1540.0 and m1.provenance["frames"] == [1]
    with pytest.raises(InputError, match="frame indices"):
        RFImporter().read(p, frames=5)
    # parameters as top-level variables instead of a struct
    p2 = tmp_path / "flat.mat"
    scipy.io.savemat(p2, {"RF": q[..., 0], "c": 1500.0, "fs": FS, "TXangle": ANGLES, "pitch": PITCH})
    assert RFImporter.can_read(p2)
    m2 = RFImporter().read(p2)
    assert m2.provenance["param_variable"] == "(top level)" and m2.operator_spec["params"]["c"] == 1500.0


def test_point_scatterer_through_mat_v5_and_v73_focuses_where_it_was(tmp_path, point_rf):
    """Layout check: a wrong axis order or angle unit would move or smear the beamformed peak."""
    p5, p73 = tmp_path / "pt.mat", tmp_path / "pt73.mat"
    q = _write_mat(p5, point_rf)
    _write_mat73(p73, q, {"c": C, "fs": FS, "TXangle": ANGLES, "pitch": PITCH})
    assert RFImporter.can_read(p73)
    g = _grid()
    for p in (p5, p73):
        m = RFImporter().read(p, **g)
        assert m.provenance["format"] == ("mat" if p == p5 else "mat-v7.3")
        img = m.operator().classical(torch.from_numpy(m.y))[0].numpy()
        j, i = _peak(img)
        z = 3.0 + j * 5.0 / 65
        x = -3.0 + i * 6.0 / 40
        assert abs(z - POINT_MM[0]) <= 5.0 / 65 + 1e-9 and abs(x - POINT_MM[1]) <= 6.0 / 40 + 1e-9


# ------------------------------------------------------------------------------------------ zea HDF5
@pytest.mark.parametrize("ref", ["first_element", "center"])
def test_hdf5_round_trip_and_tx_reference_from_t0_delays(tmp_path, point_rf, ref):
    rf = np.stack([point_rf, 0.5 * point_rf])  # 2 frames
    rf_zea = np.transpose(rf, (0, 1, 3, 2)).astype(np.float32)  # (frames, tx, ax, el)
    p = write_rf_hdf5(tmp_path / "rf.h5", rf_zea, fs_hz=FS, angles_rad=ANGLES, pitch_m=PITCH, c=C, f0_hz=F0,
                      t0_s=1e-6, tx_reference=ref)
    with h5py.File(p) as f:
        assert f["data/raw_data"].shape == (2, 3, N_S, N_EL, 1)
        assert f["scan/probe_geometry"].shape == (N_EL, 3)
    assert RFImporter.can_read(p)
    m = RFImporter().read(p, **_grid())
    np.testing.assert_array_equal(m.y, rf.astype(np.float32))  # float data: no offset removal
    sp = m.operator_spec["params"]
    assert sp["tx_reference"] == ref and sp["t0_s"] == pytest.approx(1e-6)
    assert sp["angles_deg"] == pytest.approx([-2, 0, 2], abs=1e-5) and sp["pitch_mm"] == pytest.approx(0.3)
    assert m.provenance["format"] == "zea-hdf5" and m.provenance["f0_source"] == "file"


def test_hdf5_int16_offset_removed_and_iq_refused(tmp_path):
    rng = np.random.default_rng(2)
    raw = (rng.integers(-200, 200, (1, 3, N_S, N_EL)) + 40).astype(np.int16)
    p = write_rf_hdf5(tmp_path / "i16.h5", raw, fs_hz=FS, angles_rad=ANGLES, pitch_m=PITCH)
    m = RFImporter().read(p)
    np.testing.assert_allclose(m.y[0, 1, 2], raw[0, 1, :, 2] - raw.mean(), atol=1e-3)
    with h5py.File(tmp_path / "iq.h5", "w") as f:
        f.create_dataset("data/raw_data", data=np.zeros((1, 3, N_S, N_EL, 2), np.float32))
        f.create_dataset("scan/sampling_frequency", data=FS)
    with pytest.raises(FileFormatError, match="IQ"):
        RFImporter().read(tmp_path / "iq.h5")


def test_default_grid_function():
    g = default_grid(n_elements=128, pitch_mm=0.298, c=1540, fs_hz=20e6, n_samples=2688, t0_s=0, f0_hz=5e6)
    assert g["shape"][1] == 255 and g["x_mm"] == pytest.approx([-18.923, 18.923])
    assert (g["z_mm"][1] - g["z_mm"][0]) / (g["shape"][0] - 1) == pytest.approx(0.0385)  # lambda / 8
    with pytest.raises(InputError, match="depth"):
        default_grid(n_elements=8, pitch_mm=0.3, c=1540, fs_hz=20e6, n_samples=50, t0_s=0, f0_hz=5e6)


# ------------------------------------------------------------------------------------------ bad input, real CLI
def test_bad_files_exit_2_with_one_sentence(tmp_path):
    rng = np.random.default_rng(3)
    rf = rng.standard_normal((3, N_EL, N_S))
    cases = {}
    p = tmp_path / "noparam.mat"
    scipy.io.savemat(p, {"RF": (rf * 100).astype(np.int16), "other": {"a": 1.0}})
    cases[p] = "parameter struct"
    p = tmp_path / "angles.mat"
    _write_mat(p, rf, angles=np.radians([0.0, 1.0]))
    cases[p] = "3 transmits but the parameters list 2"
    p = tmp_path / "c.mat"
    _write_mat(p, rf, c=15400.0)
    cases[p] = "sound speed"
    p = tmp_path / "fs.mat"
    _write_mat(p, rf, fs=20.0)
    cases[p] = "sampling rate"
    p = tmp_path / "nopitch.mat"
    scipy.io.savemat(p, {"RF": (rf * 100).astype(np.int16), "param": {"c": C, "fs": FS, "TXangle": ANGLES}})
    cases[p] = "lacks pitch"
    with h5py.File(tmp_path / "iq.h5", "w") as f:
        f.create_dataset("data/raw_data", data=np.zeros((1, 3, N_S, N_EL, 2), np.float32))
        f.create_group("scan")
    cases[tmp_path / "iq.h5"] = "IQ"
    # three through the real CLI (each start costs seconds), all through the API
    for k, (path, words) in enumerate(cases.items()):
        with pytest.raises((InputError, FileFormatError), match=words):
            RFImporter().read(path)
        if k % 2:
            continue
        proc = _cli("import", str(path), "--output", str(tmp_path / "out.h5"))
        assert proc.returncode == 2, (path, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert words in proc.stderr, (path, proc.stderr)
    assert not (tmp_path / "out.h5").exists()


def test_cli_import_then_reconstruct_classical(tmp_path, point_rf):
    p = tmp_path / "pt.mat"
    _write_mat(p, point_rf)
    out = tmp_path / "pt_meas.h5"
    proc = _cli("import", str(p), "--output", str(out), "--import-option", "z_mm=[3,8]",
                "--import-option", "x_mm=[-3,3]", "--import-option", "shape=[66,41]")
    assert proc.returncode == 0, proc.stderr
    assert "us.planewave" in proc.stdout and "us.rf" in proc.stdout
    m = load_measurement(out)
    assert m.y.shape == (1, 3, N_EL, N_S) and m.operator_spec["params"]["shape"] == [66, 41]
    nii = tmp_path / "pt.nii.gz"
    proc = _cli("reconstruct", str(out), "--sampler", "classical", "--output", str(nii), "--quiet")
    assert proc.returncode == 0, proc.stderr
    from medrecon.io import load_volume

    v = load_volume(nii)
    assert v.shape == (1, 66, 41) and v.spacing[1:] == pytest.approx((5 / 65, 6 / 40))
    j, i = _peak(v.data[0])
    assert abs(v.voxel_to_world([i, j, 0])[1] - POINT_MM[0]) <= 5 / 65 + 1e-6
    assert abs(v.voxel_to_world([i, j, 0])[0] - POINT_MM[1]) <= 6 / 40 + 1e-6


# ------------------------------------------------------------------------------------------ real data
@pytest.mark.shared_data
def test_rfdata1_import(shared_data):
    p = shared_data / "us-rf-planewave-wires" / "RFdata1.mat"
    m = RFImporter().read(p)
    assert m.y.shape == (1, 7, 128, 2688) and m.y.dtype == np.float32
    assert abs(float(m.y.mean())) < 1e-3
    sp = m.operator_spec["params"]
    assert sp["angles_deg"] == pytest.approx([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    assert sp["c"] == 1540.0 and sp["fs_hz"] == 20e6 and sp["pitch_mm"] == pytest.approx(0.298)
    assert sp["t0_s"] == 0.0 and sp["n_elements"] == 128 and sp["n_samples"] == 2688
    assert sp["shape"] == [2558, 255]  # 5 .. 103.4 mm at lambda/8 = 0.0385 mm, +-18.9 mm at pitch/2
    assert math.isclose(m.provenance["offset_removed"], 127.55, abs_tol=0.01)


@pytest.mark.shared_data
def test_rfdata1_reconstruct_classical_and_evaluate_cli(shared_data, tmp_path):
    """The real file straight into ``medrecon reconstruct`` (importer options shrink the grid: depth
    15..30 mm, pixel = pitch laterally), then ``medrecon evaluate`` on the wire at about (22.8, 1.8) mm."""
    p = shared_data / "us-rf-planewave-wires" / "RFdata1.mat"
    nii = tmp_path / "das.nii.gz"
    proc = _cli("reconstruct", str(p), "--sampler", "classical", "--output", str(nii), "--quiet",
                "--import-option", "z_mm=[15,30]", "--import-option", "dx_mm=0.298")
    assert proc.returncode == 0, proc.stderr
    from medrecon_us.bmode import envelope

    from medrecon.io import load_volume

    v = load_volume(nii)
    assert v.shape == (1, 390, 128)
    env = envelope(v.data[0])
    j, i = np.unravel_index(np.argmax(env), env.shape)
    z, x = v.voxel_to_world([i, j, 0])[1], v.voxel_to_world([i, j, 0])[0]
    assert abs(z - 22.8) < 0.5 and abs(x - 1.8) < 0.5, (z, x)
    proc = _cli("evaluate", str(nii), "--target", f"{z:.3f},{x:.3f},0.5", "--background", f"{z:.3f},{x:.3f},2,4",
                "--json", str(tmp_path / "m.json"), "--png", str(tmp_path / "bmode.png"))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["after"]["gcnr"][0]["mean"] > 0.8  # a bright wire against speckle (0.85 measured at lambda/8)
    assert (tmp_path / "bmode.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_regions_takes_a_raw_rf_file_as_classical(tmp_path, point_rf):
    """``--classical RAW.mat``: the raw file is imported (default grid) and delay-and-summed."""
    from medrecon_us.regions import evaluate_regions

    from medrecon.engine import reconstruct

    p = tmp_path / "pt.mat"
    _write_mat(p, point_rf)
    vol = reconstruct(str(p), sampler="classical", progress=False)
    assert vol.shape[0] == 1 and vol.spacing[1] == pytest.approx(C / F0 / 8 * 1e3)
    res = evaluate_regions(vol, classical=p, targets=[(6.0, 0.6, 0.3)], backgrounds=[(6.0, 0.6, 0.8, 1.5)])
    assert res["ks"][0]["target"]["mean"] == 0.0 and res["after"]["gcnr"][0]["mean"] > 0.5


def test_import_dehaze_option_gives_a_haze_measurement(tmp_path, point_rf):
    """``dehaze=true``: the importer beamforms every frame and returns a ``us.haze`` measurement
    whose y is the delay-and-sum image of the plain import (and whose tissue starts as that image)."""
    from medrecon.engine import reconstruct

    p = tmp_path / "pt.mat"
    _write_mat(p, point_rf)
    plain = RFImporter().read(p)
    m = RFImporter().read(p, dehaze=True)
    assert m.operator_spec["name"] == "us.haze"
    das = reconstruct(plain, sampler="classical", progress=False)
    assert m.y.shape == das.shape
    np.testing.assert_allclose(m.y, das.data, rtol=1e-4, atol=1e-4 * float(np.abs(das.data).max()))
    np.testing.assert_allclose(m.affine, plain.affine)
    with pytest.raises(InputError, match="dehaze must be true or false"):
        RFImporter().read(p, dehaze="yes")
