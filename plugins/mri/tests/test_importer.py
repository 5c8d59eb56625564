"""Raw k-space import: fastMRI-style HDF5, numpy k-space, the CLI, and the shared GRE phantom."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from medrecon_mri.coils import synthetic_coil_maps
from medrecon_mri.fft import fft2c_np
from medrecon_mri.importer import KSpaceImporter, crop_readout
from medrecon_mri.masks import make_mask

import medrecon
from medrecon.engine import load_input
from medrecon.errors import InputError
from medrecon.metrics import psnr

GRE = "mri-kspace-gre-phantom/gre_kspace_lin_cha_col.npy"


def _raw(x, n_coils=4, oversample=2):
    """Multi-coil k-space of image x placed in the middle of a readout FOV ``oversample`` times larger."""
    ny, nx = x.shape
    big = np.zeros((ny * oversample, nx), complex)
    big[(ny * oversample - ny) // 2:(ny * oversample - ny) // 2 + ny] = x
    S = synthetic_coil_maps(big.shape, n_coils)
    return fft2c_np(S * big[None]).astype(np.complex64)


def test_readout_crop_is_exact(sl64c):
    k = _raw(sl64c, n_coils=1)[0]
    np.testing.assert_allclose(np.fft.ifftshift(crop_readout(k, 1)), np.fft.ifftshift(k))
    small = crop_readout(k, 2)
    assert small.shape == (64, 64)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(small), norm="ortho"))
    assert np.abs(img).max() > 0.5 and np.corrcoef(np.abs(img).ravel(), np.abs(sl64c).ravel())[0, 1] > 0.9


def _fastmri_file(path, sl64c, *, multicoil=True, with_mask=True, slices=1):
    k = _raw(sl64c, n_coils=8 if multicoil else 1)
    mask = make_mask((128, 64), {"kind": "equispaced_fraction", "acceleration": 3, "center_fraction": 0.16,
                                 "seed": 2})[0]
    k = np.stack([k * mask] * slices)
    if not multicoil:
        k = k[:, 0]
    hdr = ("<ismrmrdHeader xmlns='http://www.ismrm.org/ISMRMRD'><encoding>"
           "<encodedSpace><matrixSize><x>128</x><y>64</y><z>1</z></matrixSize>"
           "<fieldOfView_mm><x>256</x><y>160</y><z>5</z></fieldOfView_mm></encodedSpace>"
           "<reconSpace><matrixSize><x>64</x><y>64</y><z>1</z></matrixSize></reconSpace>"
           "</encoding></ismrmrdHeader>")
    with h5py.File(path, "w") as f:
        f["kspace"] = k
        f["ismrmrd_header"] = hdr
        if with_mask:
            f["mask"] = mask.astype(np.float32)
    return mask


@pytest.mark.parametrize("multicoil, with_mask", [(True, True), (False, False)])
def test_fastmri_hdf5(tmp_path, sl64c, multicoil, with_mask):
    path = tmp_path / "file_brain.h5"
    mask = _fastmri_file(path, sl64c, multicoil=multicoil, with_mask=with_mask)
    assert KSpaceImporter.can_read(path)
    m = load_input(path)
    assert m.provenance["importer"] == "mri.kspace" and m.provenance["oversampling_removed"] == 2
    assert m.volume_shape == (1, 64, 64) and m.y.dtype == np.complex64
    assert m.operator_spec["name"] == ("mri.sense" if multicoil else "mri.cartesian")
    assert m.operator_spec["params"]["mask"] == mask.astype(int).tolist()
    assert np.allclose(np.diag(m.affine)[:3], [160 / 64, 256 / 128, 5])  # PE, readout, slice (mm)
    A = m.operator()
    x = medrecon.reconstruct(m, "classical", progress=False).data[0]
    assert np.corrcoef(x.ravel(), np.abs(sl64c).ravel())[0, 1] > 0.8
    if multicoil:
        s = A.sense(torch.from_numpy(m.y), iters=10)[0].numpy()
        inside = np.abs(sl64c) > 0.05
        assert np.corrcoef(np.abs(s[inside]), np.abs(sl64c[inside]))[0, 1] > 0.9


def test_multislice_multicoil_per_slice_maps_or_one_slice(tmp_path, sl64c):
    path = tmp_path / "multi.h5"
    _fastmri_file(path, sl64c, slices=3)
    every = load_input(path)  # per-slice maps (S, C, ny, nx); plugins/mri/tests/test_multislice_import.py
    assert every.arrays["coil_maps"].shape == (3, 8, 64, 64) and every.operator().n_slices == 3
    with pytest.raises(InputError, match="slice must be an integer"):
        load_input(path, slice=3)
    m = load_input(path, slice=1)
    assert m.y.shape == (1, 8, 64, 64) and m.provenance["slice"] == 1
    m2 = load_input(path, real_image=False, slice=-1, coil_method="walsh")
    assert m2.operator().domain_is_complex


def test_numpy_layout_and_cli(tmp_path, sl64c):
    k = _raw(sl64c, n_coils=2)  # (cha, col, lin)
    path = tmp_path / "scan_lin_cha_col.npy"
    np.save(path, np.transpose(k, (2, 0, 1)))
    out = tmp_path / "meas.h5"
    cmd = [sys.executable, "-m", "medrecon.cli.main", "import", str(path), "--output", str(out),
           "--import-option", 'undersample={"kind": "equispaced_fraction", "acceleration": 2, "seed": 0}']
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = medrecon.load_measurement(out)
    assert m.operator_spec["name"] == "mri.sense" and set(m.arrays) == {"coil_maps"}
    assert m.y.shape == (1, 2, 64, 64) and 1.7 < m.provenance["acceleration"] < 2.3
    assert m.operator().coil_maps.shape == (2, 64, 64)
    r = subprocess.run(cmd[:3] + ["reconstruct", str(path), "-o", str(tmp_path / "x.nii.gz"), "-s", "classical",
                                  "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cmd[:3] + ["import", str(tmp_path / "nothing.npy"), "-o", str(out)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "no such file" in r.stderr


@pytest.mark.shared_data
def test_gre_phantom(shared_data):
    path = shared_data / GRE
    if not path.is_file():
        pytest.skip("the GRE phantom k-space is not present")
    full = load_input(path)
    assert full.y.shape == (1, 2, 160, 160) and full.operator_spec["name"] == "mri.sense"
    A = full.operator()
    ref = A.classical(torch.from_numpy(full.y))[0].numpy()  # fully sampled RSS
    obj = ref > 0.3 * ref.max()
    assert 0.3 < obj.mean() < 0.7  # a disc filling about half the field of view
    assert ref[obj].mean() > 5 * ref[~obj].mean()  # clear contrast against the background
    m4 = load_input(path, undersample={"kind": "random", "acceleration": 4, "center_fraction": 0.08, "seed": 0})
    A4, y4 = m4.operator(), torch.from_numpy(m4.y)
    assert 3 < A4.acceleration < 5
    r = torch.from_numpy(ref)[None]
    zf = psnr(A4.classical(y4), r, clip=False)
    tv = psnr(torch.from_numpy(medrecon.reconstruct(m4, "tv", params={"lam_rel": 0.03}, steps=100,
                                                    progress=False).data), r, clip=False)
    print(f"GRE 4x (acceleration {A4.acceleration:.2f}): zero-filled {zf:.2f} dB, TV {tv:.2f} dB vs full RSS")
    assert tv > zf + 1


@pytest.mark.shared_data
def test_gre_twix_matches_the_numpy_export(shared_data):
    pytest.importorskip("twixtools")
    dat = shared_data / "mri-kspace-gre-phantom" / "gre.dat"
    if not dat.is_file():
        pytest.skip("gre.dat is not present")
    assert KSpaceImporter.can_read(dat)
    m = load_input(dat)
    ref = load_input(shared_data / GRE)
    np.testing.assert_array_equal(m.y, ref.y)
    # 200 mm FOV / 160, 4 mm slice; oriented from the protocol (test_twix_geometry.py)
    assert np.allclose(np.linalg.norm(m.affine[:3, :3], axis=0), [1.25, 1.25, 4.0])


@pytest.mark.parametrize("n, factor", [(9, 2), (13, 2), (17, 2), (13, 3), (19, 3), (16, 2), (15, 3), (20, 2)])
def test_crop_readout_keeps_the_centre_pixel(n, factor):
    from medrecon_mri.fft import fft1c_np, ifft1c_np

    img = np.zeros((n, 1))
    img[n // 2] = 1.0  # the centred FFT's centre pixel
    out = ifft1c_np(crop_readout(fft1c_np(img, 0), factor, axis=-2), 0)
    assert int(np.argmax(np.abs(out[:, 0]))) == (n // factor) // 2


def test_rows_of_an_asymmetric_echo_after_oversampling_removal():
    from medrecon_mri.importer import crop_rows

    rows = np.ones(24, bool)
    assert crop_rows(rows, 2).all() and crop_rows(rows, 1).all()
    rows[:6] = False  # the first 6 of 24 oversampled readout samples were not acquired
    got = crop_rows(rows, 2)  # 12 rows at twice the k-space step: k = -12, -10, ..., 10
    assert got.tolist() == [False] * 3 + [True] * 9
    assert crop_rows(rows, 1).tolist() == rows.tolist()


def test_centre_kspace_places_the_echo_and_line_centres():
    from medrecon_mri.importer import centre_kspace

    from medrecon.errors import FileFormatError

    rng = np.random.default_rng(0)
    k = rng.standard_normal((1, 2, 20, 12)) + 0j  # 20 samples with the echo at sample 6, 12 lines, centre line 4
    out, rows = centre_kspace(k, 6, 4, (28, 16), "test")
    assert out.shape == (1, 2, 28, 16) and out[0, 0, 14, 8] == k[0, 0, 6, 4]
    assert rows.tolist() == [False] * 8 + [True] * 20
    same, rows = centre_kspace(k, 10, 6, (20, 12), "test")  # symmetric: untouched
    assert same is k and rows.all()
    with pytest.raises(FileFormatError, match="cannot be placed"):
        centre_kspace(k, 2, 6, (20, 12), "test")


def test_3d_twix_is_refused(tmp_path, monkeypatch):
    """A 3D scan (Par > 1) is refused in one sentence, not cut to its first partition (the
    shared data has no 3D twix file: twixtools' mapped scan is stood in for)."""
    twixtools = pytest.importorskip("twixtools")

    class Scan:
        dims = ["Par", "Sli", "Lin", "Cha", "Col"]
        flags: dict = {}

        def __getitem__(self, key):
            return np.ones((8, 1, 12, 2, 16), np.complex64)

    monkeypatch.setattr(twixtools, "map_twix", lambda path, verbose=False: [{"image": Scan(), "hdr": {}}])
    p = tmp_path / "scan3d.dat"
    p.write_bytes(np.array([0, 1], "<u4").tobytes() + bytes(100))
    from medrecon.errors import FileFormatError

    with pytest.raises(FileFormatError, match="3D encodings .8 partitions"):
        load_input(p)


def test_an_explicit_layout_is_not_taken_as_oversampled(tmp_path, sl64c):
    np.save(tmp_path / "k.npy", _raw(sl64c, n_coils=2, oversample=1))  # (cha, col, lin), 64 x 64
    m = load_input(tmp_path / "k.npy", layout="cha_col_lin")
    assert m.y.shape == (1, 2, 64, 64) and m.provenance["oversampling_removed"] == 1


@pytest.mark.parametrize("opt", [dict(slice="a"), dict(oversampling=1.5), dict(oversampling="2"), dict(pixel_size=-1),
                                 dict(undersample="4x"), dict(calib=[100, 100]), dict(calib=[8]),
                                 dict(threshold="0.1")])
def test_bad_import_options_are_one_sentence(tmp_path, sl64c, opt):
    path = tmp_path / "scan_lin_cha_col.npy"
    np.save(path, np.transpose(_raw(sl64c, n_coils=2), (2, 0, 1)))
    with pytest.raises(InputError) as e:
        load_input(path, **opt)
    assert "\n" not in str(e.value)
