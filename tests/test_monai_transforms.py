"""medrecon.monai: MONAI dictionary transforms that load, simulate and reconstruct, keeping the affine."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import medrecon
from medrecon.errors import InputError

monai = pytest.importorskip("monai")
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd  # noqa: E402

from medrecon.monai import (  # noqa: E402
    LoadMeasurementd,
    LoadVolumed,
    Reconstructd,
    SimulateMeasurementd,
    to_metatensor,
    to_volume,
)

SIM = dict(noise_std=0.005, relative=True, slices=(3, 5), seed=3)
TV = dict(steps=10, params={"lam_rel": 0.01})


def _zyx(t) -> np.ndarray:
    """MetaTensor (1, X, Y, Z) -> medrecon's (Z, Y, X) array."""
    assert t.ndim == 4 and t.shape[0] == 1
    return t[0].numpy().transpose(2, 1, 0)


def test_compose_loads_simulates_and_reconstructs_the_shipped_sample_like_the_api():
    pipeline = Compose([
        LoadVolumed("image"),
        SimulateMeasurementd("image", "ct.parallel", {"n_views": 16}, **SIM),
        Reconstructd("image_measurement", sampler="tv", **TV, output_keys="recon"),
    ])
    out = pipeline({"image": str(medrecon.data.ct_sample_path())})

    vol = medrecon.data.load_ct_sample()
    m = medrecon.simulate(vol, "ct.parallel", {"n_views": 16}, **SIM)
    rec = medrecon.reconstruct(m, "tv", **TV, progress=False)

    # the loaded image: medrecon's volume transposed, the same affine, medrecon's metadata kept
    img = out["image"]
    assert isinstance(img, MetaTensor) and tuple(img.shape) == (1, 256, 256, 8)
    assert np.array_equal(_zyx(img), vol.data)
    assert np.array_equal(img.affine.numpy(), vol.affine)
    assert img.meta["medrecon"]["units"] == "HU" and img.meta["medrecon"]["dicom"]["StudyInstanceUID"]
    # the measurement and the reconstruction are those of the API, bit for bit
    assert np.array_equal(out["image_measurement"].y, m.y)
    r = out["recon"]
    assert isinstance(r, MetaTensor) and tuple(r.shape) == (1, 256, 256, 2)
    assert np.array_equal(_zyx(r), rec.data)
    # slices 3:5 sit where they sat in the series: the affine is the slab's, 3 slices of 3 mm up
    assert np.array_equal(r.affine.numpy(), vol.slab(3, 5).affine)
    assert r.affine[2, 3].item() == pytest.approx(vol.affine[2, 3] + 9.0)
    assert r.meta["space"] == "RAS" and r.meta["medrecon"]["reconstruction"]["sampler"]["name"] == "tv"
    # the reconstruction is close to the truth (TV on 16 views: well below the image's HU range)
    err = np.sqrt(np.mean((rec.data - vol.data[3:5]) ** 2))
    assert err < 0.2 * np.ptp(vol.data[3:5])


def test_monai_loadimaged_output_feeds_the_transforms():
    """MONAI's own NIfTI loader gives (X, Y, Z) or (1, X, Y, Z) with the RAS affine medrecon uses."""
    path = str(medrecon.data.ct_sample_path())
    vol = medrecon.data.load_ct_sample()
    m = medrecon.simulate(vol, "ct.parallel", {"n_views": 12}, **SIM)
    fbp = medrecon.reconstruct(m, "classical", progress=False)
    for channel_first in (True, False):
        steps = [LoadImaged("image", image_only=True)] + ([EnsureChannelFirstd("image")] if channel_first else [])
        steps += [SimulateMeasurementd("image", "ct.parallel", {"n_views": 12}, **SIM, meta={"units": "HU"}),
                  Reconstructd("image_measurement", sampler="classical")]
        out = Compose(steps)({"image": path})
        assert np.array_equal(out["image_measurement"].y, m.y)
        assert np.array_equal(out["image_measurement"].affine, m.affine)
        assert out["image_measurement"].units == "HU"
        assert np.array_equal(_zyx(out["image_measurement_recon"]), fbp.data)
        assert np.array_equal(out["image_measurement_recon"].affine.numpy(), m.affine)


def test_every_voxel_keeps_its_place_in_space_through_a_monai_reorientation():
    """The conventions agree: after MONAI reorients (permutes and flips axes, rewriting the affine),
    each value sits at the same RAS point in medrecon's Volume as before."""
    rng = np.random.default_rng(0)
    z, y, x = 3, 4, 5
    data = rng.permutation(z * y * x).reshape(z, y, x).astype(np.float32)  # unique values
    rot = np.array([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0], [0.0, 0.8, -0.6]])  # oblique, det -1 -> flips too
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    vol = medrecon.Volume(data, affine, {"units": "HU"})
    t = to_metatensor(vol)
    for codes in ("RAS", "LPI", "SAR"):
        back = to_volume(Orientationd("image", axcodes=codes, labels=None)({"image": t})["image"])
        assert sorted(back.shape) == sorted(vol.shape) and back.meta["units"] == "HU"
        for value in (0.0, 17.0, float(z * y * x - 1)):
            k0, j0, i0 = np.argwhere(vol.data == value)[0]
            k1, j1, i1 = np.argwhere(back.data == value)[0]
            np.testing.assert_allclose(back.voxel_to_world([i1, j1, k1]), vol.voxel_to_world([i0, j0, k0]),
                                       atol=1e-4)


def test_round_trip_and_lps_metatensors():
    vol = medrecon.data.load_ct_sample().slab(0, 2)
    back = to_volume(to_metatensor(vol))
    assert np.array_equal(back.data, vol.data) and np.array_equal(back.affine, vol.affine)
    assert back.meta == vol.meta
    diag = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0], dtype=torch.float64))
    lps = MetaTensor(torch.zeros(1, 4, 3, 2), affine=diag, meta={"space": "LPS"})
    np.testing.assert_array_equal(to_volume(lps).affine, np.diag([-2.0, -3.0, 4.0, 1.0]))
    assert to_volume(vol) is vol  # a Volume passes through


def test_load_measurementd_reads_a_measurement_file(tmp_path):
    vol = medrecon.data.load_ct_sample()
    m = medrecon.simulate(vol, "ct.parallel", {"n_views": 8}, slices=(0, 1))
    medrecon.save_measurement(m, tmp_path / "m.h5")
    out = Compose([LoadMeasurementd("meas"), Reconstructd("meas", sampler="classical", output_keys="image")])(
        {"meas": str(tmp_path / "m.h5")})
    assert np.array_equal(out["meas"].y, m.y)
    assert np.array_equal(out["image"].affine.numpy(), m.affine)


def test_bad_inputs_are_one_medrecon_sentence(tmp_path):
    with pytest.raises(InputError, match="MetaTensor or a medrecon Volume"):
        SimulateMeasurementd("image", "ct.parallel")({"image": np.zeros((4, 4, 2))})
    with pytest.raises(InputError, match="one channel"):
        SimulateMeasurementd("image", "ct.parallel")({"image": MetaTensor(torch.zeros(2, 4, 4, 2))})
    with pytest.raises(InputError, match="3D image"):
        to_volume(MetaTensor(torch.zeros(4, 4)))
    with pytest.raises(InputError, match="needs a path"):
        LoadVolumed("image")({"image": 3})
    with pytest.raises(InputError, match="one key per input key"):
        Reconstructd(["a", "b"], output_keys="c")
    with pytest.raises(medrecon.MedreconError):
        LoadVolumed("image")({"image": str(tmp_path / "missing.nii.gz")})
    with pytest.raises(medrecon.MedreconError):
        LoadMeasurementd("m")({"m": str(tmp_path / "missing.h5")})


def test_import_medrecon_does_not_import_monai():
    code = "import sys, medrecon; medrecon.Volume; medrecon.load_volume; print('monai' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "False"
