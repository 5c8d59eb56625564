"""Multi-slice multi-coil raw k-space (fastMRI-style HDF5) imported with per-slice coil maps and
reconstructed through the real CLI: every slice reconstructs its own phantom slice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from medrecon_mri.coils import synthetic_coil_maps
from medrecon_mri.fft import fft2c_np
from medrecon_mri.masks import make_mask

import medrecon
from medrecon.engine import load_input
from medrecon.measurement import Measurement
from medrecon.testing import check_operator

Z, C, N = 4, 4, 64
CLI = str(Path(sys.executable).with_name("medrecon"))


def _slices() -> np.ndarray:
    """(Z, N, N) complex: the phantom turned by 40 degrees per slice, each with its own smooth phase."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize, rotate

    base = resize(shepp_logan_phantom(), (N, N), anti_aliasing=True)
    yy, xx = np.mgrid[:N, :N] / N
    return np.stack([rotate(base, 40 * s, preserve_range=True) * np.exp(1j * (0.8 * s * yy - 0.5 * xx + 1.2 * s))
                     for s in range(Z)])


def _maps() -> np.ndarray:
    """(Z, C, N, N): coils moved and turned from slice to slice (as a head moves in a coil array)."""
    return np.stack([np.roll(synthetic_coil_maps((N, N), C, radius=1.1 + 0.3 * s, width=0.6, phase=1.0 + 0.5 * s),
                             s, axis=0) for s in range(Z)])


def _write(path: Path, *, multicoil: bool = True) -> np.ndarray:
    """A fastMRI-style file: ``kspace`` (Z, C, readout, pe) or (Z, readout, pe), a 1D ``mask``."""
    x, maps = _slices(), _maps()
    mask = make_mask((N, N), {"kind": "equispaced_fraction", "acceleration": 2, "center_fraction": 0.16,
                              "seed": 1})[0]
    k = fft2c_np(maps * x[:, None]) if multicoil else fft2c_np(x)
    rng = np.random.default_rng(0)
    k = k + 0.002 * (rng.normal(size=k.shape) + 1j * rng.normal(size=k.shape))
    with h5py.File(path, "w") as f:
        f["kspace"] = (k * mask).astype(np.complex64)
        f["mask"] = mask.astype(np.float32)
    return np.abs(x)


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny problems: threads only contend on a shared CPU
    r = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r


def _corr(a, b, inside):
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


def _own_and_others(vol: np.ndarray, ref: np.ndarray):
    inside = ref.max(0) > 0.05
    c = np.array([[_corr(vol[k], ref[j], inside) for j in range(Z)] for k in range(Z)])
    own = np.diag(c)
    others = np.where(np.eye(Z, dtype=bool), -1, c).max(axis=1)
    return own, others


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("multislice")
    return d / "file_multi.h5", _write(d / "file_multi.h5")


def test_import_stores_per_slice_maps(tmp_path, raw):
    path, _ = raw
    out = tmp_path / "meas.h5"
    _cli("import", path, "--output", out)
    m = medrecon.load_measurement(out)
    assert m.y.shape == (Z, C, N, N) and m.volume_shape == (Z, N, N)
    assert m.arrays["coil_maps"].shape == (Z, C, N, N)
    A = m.operator()
    assert A.slice_varying and A.n_slices == Z
    true = _maps()
    for s in range(Z):  # each slice's estimated maps match that slice's true maps (up to the image phase)
        est = m.arrays["coil_maps"][s]
        inside = np.abs(_slices()[s]) > 0.05
        own = [np.corrcoef(np.abs(est[c][inside]), np.abs(true[s, c][inside]))[0, 1] for c in range(C)]
        assert min(own) > 0.95
    report = check_operator(A.for_slices([0, 3]))  # the spec round trip passes the measurement's arrays
    assert report.passed, report.table()
    one = load_input(path, slice=2)  # slice=K still selects one slice, with 3D maps
    assert one.y.shape == (1, C, N, N) and one.arrays["coil_maps"].shape == (C, N, N)
    np.testing.assert_allclose(one.arrays["coil_maps"], m.arrays["coil_maps"][2], atol=1e-6)


@pytest.mark.parametrize("sampler,extra", [("sense", ["--steps", "10"]), ("classical", []),
                                           ("tv", ["--steps", "100"])])
def test_each_slice_reconstructs_its_own_phantom_through_the_cli(tmp_path, raw, sampler, extra):
    path, ref = raw
    out = tmp_path / f"{sampler}.nii.gz"
    _cli("reconstruct", path, "-s", sampler, "-o", out, "-q", "--batch-size", "3", *extra)
    vol = medrecon.load_volume(out).data
    assert vol.shape == (Z, N, N)
    own, others = _own_and_others(vol, ref)
    print(f"{sampler}: own-slice correlation {np.round(own, 3)}, best other {np.round(others, 3)}")
    assert own.min() > 0.9 and (own - others).min() > 0.2


def test_wrong_slice_maps_fail(raw):
    """The same k-space with each slice given the next slice's maps: SENSE breaks down."""
    path, ref = raw
    m = load_input(path)
    wrong_maps = np.roll(m.arrays["coil_maps"], 1, axis=0)
    from medrecon_mri.arrays import array_sha256

    spec = {**m.operator_spec, "params": {**m.operator_spec["params"],
                                          "coil_maps": {"array": "coil_maps", "sha256": array_sha256(wrong_maps)}}}
    wrong = Measurement(y=m.y, operator_spec=spec, noise_std=0.0, volume_shape=m.volume_shape, affine=m.affine,
                        units=m.units, arrays={"coil_maps": wrong_maps})
    good = medrecon.reconstruct(m, "sense", steps=10, progress=False).data
    bad = medrecon.reconstruct(wrong, "sense", steps=10, progress=False).data
    own_good, _ = _own_and_others(good, ref)
    own_bad, _ = _own_and_others(bad, ref)
    print(f"SENSE own-slice correlation: right maps {np.round(own_good, 3)}, shifted maps {np.round(own_bad, 3)}")
    assert own_good.min() > 0.9 and own_bad.max() < own_good.min() - 0.1


def test_single_coil_real_image_gets_a_phase_per_slice(tmp_path):
    path = tmp_path / "single.h5"
    ref = _write(path, multicoil=False)
    m = load_input(path)
    assert m.operator_spec["name"] == "mri.cartesian" and m.arrays["phase"].shape == (Z, N, N)
    A = m.operator()
    assert A.slice_varying and not A.domain_is_complex
    y = torch.from_numpy(m.y[[1, 3]])
    x = A.for_slices([1, 3]).adjoint(y).numpy()  # Re(conj(P_s) F^H M y_s), each slice with its own phase
    x_wrong = A.for_slices([3, 1]).adjoint(y).numpy()  # the phases swapped
    inside = ref.max(0) > 0.05
    for j, s in enumerate((1, 3)):
        own, wrong = _corr(x[j], ref[s], inside), _corr(x_wrong[j], ref[s], inside)
        print(f"single coil slice {s}: zero-filled real part vs magnitude, own phase {own:.3f}, swapped {wrong:.3f}")
        assert own > 0.85 and own > wrong + 0.1
    vol = medrecon.reconstruct(m, "tv", steps=100, progress=False, batch_size=2).data
    own, others = _own_and_others(vol, ref)
    print(f"single coil tv: own-slice correlation {np.round(own, 3)}, best other {np.round(others, 3)}")
    assert own.min() > 0.85 and (own - others).min() > 0.2
