"""Measurement files (HDF5, schema measurement/1) and simulate()."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import medrecon
from medrecon.errors import FileFormatError, InputError
from medrecon.measurement import SCHEMA

SPEC = {"name": "template.scale", "params": {"shape": [4, 5], "factor": 2.0}}


def _m(y=None, **kw):
    y = np.arange(40, dtype=np.float32).reshape(2, 4, 5) if y is None else y
    args = dict(y=y, operator_spec=SPEC, noise_std=0.5, volume_shape=(2, 4, 5),
                affine=np.diag([0.5, 0.5, 3.0, 1.0]), units="HU",
                provenance={"source": "/x", "series_uid": "1.2"}, reference_meta={"modality": "CT"})
    args.update(kw)
    return medrecon.Measurement(**args)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_round_trip(tmp_path, dtype):
    m = _m(y=(np.arange(40).reshape(2, 4, 5) * (1 + 1j if dtype == np.complex64 else 1)).astype(dtype))
    path = medrecon.save_measurement(m, tmp_path / "m.h5")
    back = medrecon.load_measurement(path)
    np.testing.assert_array_equal(back.y, m.y)
    assert back.y.dtype == dtype
    assert back.operator_spec == SPEC and back.noise_std == 0.5 and back.volume_shape == (2, 4, 5)
    np.testing.assert_array_equal(back.affine, m.affine)
    assert back.units == "HU" and back.reference_meta == {"modality": "CT"}
    assert back.provenance["series_uid"] == "1.2" and "medrecon_version" in back.provenance
    with h5py.File(path) as f:
        assert f.attrs["medrecon_schema"] == SCHEMA == "measurement/1"
    op = back.operator()
    assert op.spec() == SPEC


def test_overwrite_and_atomic(tmp_path):
    p = medrecon.save_measurement(_m(), tmp_path / "m.h5")
    with pytest.raises(InputError, match="already exists"):
        medrecon.save_measurement(_m(), p)
    medrecon.save_measurement(_m(noise_std=1.0), p, overwrite=True)
    assert medrecon.load_measurement(p).noise_std == 1.0
    assert [q.name for q in tmp_path.iterdir()] == ["m.h5"]


def test_bad_files(tmp_path):
    p = medrecon.save_measurement(_m(y=np.random.default_rng(0).normal(size=(64, 32, 32)).astype(np.float32)),
                                  tmp_path / "m.h5")
    data = p.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated|corrupt|not a readable"):
        medrecon.load_measurement(tmp_path / "trunc.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(FileFormatError, match="not a readable HDF5"):
        medrecon.load_measurement(tmp_path / "text.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(FileFormatError, match="not a medrecon measurement"):
        medrecon.load_measurement(tmp_path / "foreign.h5")
    with h5py.File(p, "a") as f:
        f.attrs["medrecon_schema"] = "measurement/2"
    with pytest.raises(FileFormatError, match="measurement/2, newer.*upgrade medrecon"):
        medrecon.load_measurement(p)
    with pytest.raises(FileFormatError, match="no such"):
        medrecon.load_measurement(tmp_path / "missing.h5")


def test_invalid_fields():
    with pytest.raises(InputError, match="operator_spec"):
        _m(operator_spec={"params": {}})
    with pytest.raises(InputError, match="noise_std"):
        _m(noise_std=-1)
    with pytest.raises(InputError, match="4x4"):
        _m(affine=np.eye(3))


# ---------------------------------------------------------------- simulate
def _volume(z=5, ny=8, nx=6):
    data = np.random.default_rng(1).normal(size=(z, ny, nx)).astype(np.float32)
    return medrecon.Volume(data, np.diag([0.5, 0.6, 2.0, 1.0]), {"units": "HU", "modality": "CT",
                                                                 "source": "/src", "series_uid": "9.9"})


def test_simulate_fills_shape_and_does_not_modify_input():
    vol = _volume()
    before = vol.data.copy()
    m = medrecon.simulate(vol, "template.scale", {"factor": 3.0})
    np.testing.assert_array_equal(vol.data, before)
    np.testing.assert_allclose(m.y, 3.0 * before)
    assert m.operator_spec["params"]["shape"] == [8, 6] and m.noise_std == 0.0
    assert m.volume_shape == (5, 8, 6) and m.units == "HU"
    assert m.provenance["source"] == "/src" and m.provenance["series_uid"] == "9.9"
    assert m.reference_meta["modality"] == "CT"


def test_simulate_noise_is_per_slice_seeded():
    vol = _volume()
    a = medrecon.simulate(vol, "template.scale", {"factor": 1.0}, noise_std=0.1, seed=4, batch_size=1)
    b = medrecon.simulate(vol, "template.scale", {"factor": 1.0}, noise_std=0.1, seed=4, batch_size=16)
    np.testing.assert_array_equal(a.y, b.y)
    c = medrecon.simulate(vol, "template.scale", {"factor": 1.0}, noise_std=0.1, seed=4, slices="2:4")
    np.testing.assert_array_equal(c.y, a.y[2:4])
    assert c.volume_shape == (2, 8, 6)
    np.testing.assert_allclose(c.affine[:3, 3], vol.affine[:3, 3] + 2 * vol.affine[:3, 2])
    n = a.y - vol.data
    assert 0.08 < n.std() < 0.12
    d = medrecon.simulate(vol, "template.scale", {"factor": 1.0}, noise_std=0.1, seed=5)
    assert not np.array_equal(a.y, d.y)


def test_simulate_relative_noise():
    vol = _volume(z=20, ny=16, nx=16)
    m = medrecon.simulate(vol, "template.scale", {"factor": 2.0}, noise_std=0.05, relative=True)
    rms = np.sqrt(np.mean((2.0 * vol.data.astype(np.float64)) ** 2))
    assert m.noise_std == pytest.approx(0.05 * rms, rel=1e-5)
    assert m.provenance["noise_mode"] == "relative"


def test_simulate_refuses_bad_input():
    vol = _volume()
    vol.data[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        medrecon.simulate(vol, "template.scale", {})
    with pytest.raises(InputError, match="shaped \\(4, 4\\).*8x6"):
        medrecon.simulate(_volume(), "template.scale", {"shape": [4, 4]})
    with pytest.raises(InputError, match="noise"):
        medrecon.simulate(_volume(), "template.scale", {}, noise_std=-1)
    with pytest.raises(InputError, match="empty"):
        medrecon.simulate(_volume(), "template.scale", {}, slices="3:3")


def test_simulate_round_trip_rebuilds_operator(tmp_path):
    import torch

    vol = _volume()
    m = medrecon.simulate(vol, "template.scale", {"factor": 2.0}, noise_std=0.0)
    back = medrecon.load_measurement(medrecon.save_measurement(m, tmp_path / "m.h5"))
    op = back.operator()
    x = op.classical(torch.from_numpy(back.y))
    np.testing.assert_allclose(x.numpy(), vol.data, rtol=1e-6)


def test_simulate_ct_parallel_if_installed():
    from medrecon import registry

    try:
        registry.load("medrecon.operators", "ct.parallel")
    except Exception:  # noqa: BLE001
        pytest.skip("ct.parallel is not available")
    vol = _volume(z=3, ny=16, nx=16)
    with pytest.raises(medrecon.InputError, match="needs square pixels"):  # 0.6 x 0.5 mm: never a silent 1 mm
        medrecon.simulate(vol, "ct.parallel", {"n_views": 8})
    square = medrecon.Volume(vol.data, np.diag([0.5, 0.5, 2.0, 1.0]), vol.meta)
    m = medrecon.simulate(square, "ct.parallel", {"n_views": 8})
    assert m.y.shape[0] == 3 and m.operator_spec["name"] == "ct.parallel"
    assert m.operator_spec["params"]["pixel_size"] == 0.5
    assert medrecon.operator_from_spec(m.operator_spec).domain_shape == (16, 16)


def test_importing_the_module_does_not_shadow_the_function():
    import importlib

    importlib.import_module("medrecon.simulation")
    importlib.import_module("medrecon.measurement")
    importlib.import_module("medrecon.volume")
    assert callable(medrecon.simulate) and callable(medrecon.load_volume)
    assert isinstance(medrecon.Measurement, type) and isinstance(medrecon.Volume, type)


def test_large_spec_and_meta_round_trip(tmp_path):
    # HDF5 attributes hold at most 64 kB; a long angle list or a mask in the spec must still fit
    spec = {"name": "template.scale", "params": {"shape": [4, 5], "factor": 2.0,
                                                 "angles": [float(a) for a in np.linspace(0, 180, 20000)]}}
    ref = {"source_sop_instance_uids": [f"1.2.3.{k}" for k in range(5000)]}
    m = _m(operator_spec=spec, reference_meta=ref)
    back = medrecon.load_measurement(medrecon.save_measurement(m, tmp_path / "big.h5"))
    assert back.operator_spec == spec and back.reference_meta == ref


def test_measurement_arrays_reach_the_operator_explicitly(tmp_path):
    """Coil maps stored in the file are passed to the operator (``arrays=``), not found through a
    global: without them a spec that refers to an array is one clear error."""
    from medrecon import registry
    from medrecon.errors import InputError

    try:
        registry.load("medrecon.operators", "mri.sense")
        from medrecon_mri.arrays import array_sha256
        from medrecon_mri.coils import synthetic_coil_maps
    except Exception:  # noqa: BLE001
        pytest.skip("mri.sense is not available")
    maps = synthetic_coil_maps((8, 6), 2)
    ref = {"array": "coil_maps", "sha256": array_sha256(maps)}
    op = medrecon.get_operator("mri.sense", shape=[8, 6], coil_maps=ref, arrays={"coil_maps": maps})
    m = medrecon.Measurement(y=np.zeros((1, 2, 8, 6), np.complex64), operator_spec=op.spec(), volume_shape=(1, 8, 6),
                             arrays={"coil_maps": maps})
    back = medrecon.load_measurement(medrecon.save_measurement(m, tmp_path / "m.h5"))
    assert np.array_equal(back.operator().coil_maps.numpy(), op.coil_maps.numpy())
    assert np.array_equal(medrecon.operator_from_spec(back.operator_spec, arrays=back.arrays).coil_maps.numpy(),
                          op.coil_maps.numpy())
    with pytest.raises(InputError, match="measurement array 'coil_maps'"):
        medrecon.operator_from_spec(back.operator_spec)
    import medrecon.measurement as mm

    assert not hasattr(mm, "operator_arrays")  # no context variable any more
