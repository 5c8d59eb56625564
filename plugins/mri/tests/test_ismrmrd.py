"""ISMRMRD HDF5 import: files written by the ismrmrd package (the format's reference Python
library), read by medrecon's own h5py reader; the shared GRE phantom through both formats."""

import subprocess
import sys

import numpy as np
import pytest
from medrecon_mri.fft import ifft2c_np
from medrecon_mri.importer import KSpaceImporter, crop_readout

import medrecon
from medrecon.engine import load_input
from medrecon.errors import FileFormatError

ismrmrd = pytest.importorskip("ismrmrd")

# ISMRMRD acquisition flags (ismrmrd.constants)
NOISE, CALIB, CALIB_AND_IMAGING, REVERSE = 19, 20, 21, 22


def _header(nx, ny, recon_nx, fov, *, c1=None, n_slices=1, trajectory="cartesian", nz=1):
    x = ismrmrd.xsd
    enc = x.encodingType(
        encodedSpace=x.encodingSpaceType(matrixSize=x.matrixSizeType(x=nx, y=ny, z=nz),
                                         fieldOfView_mm=x.fieldOfViewMm(x=fov[0] * nx / recon_nx, y=fov[1], z=fov[2])),
        reconSpace=x.encodingSpaceType(matrixSize=x.matrixSizeType(x=recon_nx, y=ny, z=1),
                                       fieldOfView_mm=x.fieldOfViewMm(x=fov[0], y=fov[1], z=fov[2])),
        encodingLimits=x.encodingLimitsType(
            kspace_encoding_step_1=x.limitType(minimum=0, maximum=ny - 1, center=ny // 2 if c1 is None else c1),
            slice=x.limitType(minimum=0, maximum=n_slices - 1, center=0)),
        trajectory=x.trajectoryType(trajectory))
    h = x.ismrmrdHeader(experimentalConditions=x.experimentalConditionsType(H1resonanceFrequency_Hz=123_000_000),
                        encoding=[enc])
    return x.ToXML(h)


def _acq(data, line, *, slice_=0, flags=(), center=None, repetition=0, average=0, position=(0.0, 0.0, 0.0),
         dirs=((1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0))):
    a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data, np.complex64))
    a.idx.kspace_encode_step_1 = line
    a.idx.slice = slice_
    a.idx.repetition = repetition
    a.idx.average = average
    a.center_sample = data.shape[1] // 2 if center is None else center
    for f in flags:
        a.set_flag(f)
    a.position[:] = position
    a.read_dir[:], a.phase_dir[:], a.slice_dir[:] = dirs
    return a


def _write(path, xml, acqs):
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=True) as d:
        d.write_xml_header(xml)
        for a in acqs:
            d.append_acquisition(a)


def _kspace(rng, Z, C, nx, ny):
    """Smooth random complex images on the encoded grid, in k-space ``(Z, C, nx, ny)``."""
    from medrecon_mri.fft import fft2c_np

    yy, xx = np.mgrid[:nx, :ny] / max(nx, ny)
    img = np.zeros((Z, C, nx, ny), complex)
    for z in range(Z):
        for c in range(C):
            a, b, p = rng.uniform(0.5, 2, 3)
            img[z, c] = np.exp(-((yy - 0.5) ** 2 * a + (xx - 0.5) ** 2 * b) * 8) * np.exp(1j * p * (yy + xx))
            img[z, c, nx // 4:3 * nx // 4, ny // 4:3 * ny // 4] += 0.5
    return fft2c_np(img)


def test_lines_averages_flags_and_geometry(tmp_path):
    """Two slices, 3 coils, 2x readout oversampling: every line where its counters say, the
    repeated centre lines averaged, noise / calibration-only / second-repetition readouts left
    out, a reversed readout flipped back, the affine from the direction cosines."""
    rng = np.random.default_rng(0)
    Z, C, nx, ny = 2, 3, 32, 20
    k = _kspace(rng, Z, C, nx, ny)
    lines = [j for j in range(ny) if j % 2 == 0 or abs(j - ny // 2) <= 2]
    dirs = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0))  # read along P, phase along L, normal to F
    acqs = [_acq(rng.standard_normal((C, nx)) * 99, 0, flags=[NOISE])]
    expected = np.zeros_like(k)
    for z in range(Z):
        pos = (5.0, -3.0, 10.0 - 4.0 * z)
        for line in lines:
            d = k[z, :, :, line]
            if abs(line - ny // 2) <= 1:  # two averages with opposite perturbations: their mean is d
                e = rng.standard_normal(d.shape) * 0.1
                acqs += [_acq(d + e, line, slice_=z, average=0, position=pos, dirs=dirs),
                         _acq(d - e, line, slice_=z, average=1, position=pos, dirs=dirs)]
            elif line == 4:
                acqs.append(_acq(d[:, ::-1], line, slice_=z, flags=[REVERSE], position=pos, dirs=dirs))
            else:
                acqs.append(_acq(d, line, slice_=z, position=pos, dirs=dirs))
            expected[z, :, :, line] = d
        acqs.append(_acq(k[z, :, :, 1] * 50, 1, slice_=z, flags=[CALIB], position=pos, dirs=dirs))
        acqs.append(_acq(k[z, :, :, 3] * 50, 3, slice_=z, repetition=1, position=pos, dirs=dirs))
    path = tmp_path / "scan.h5"
    _write(path, _header(nx, ny, nx // 2, (100.0, 80.0, 4.0), n_slices=Z), acqs)

    assert KSpaceImporter.can_read(path)
    m = load_input(path, coil_method="lowres")
    assert m.operator_spec["name"] == "mri.sense" and m.y.shape == (Z, C, nx // 2, ny)
    want = crop_readout(expected, 2, axis=-2)
    np.testing.assert_allclose(m.y, want, atol=1e-5 * np.abs(want).max())
    mask = np.zeros(ny, bool)
    mask[lines] = True
    np.testing.assert_array_equal(np.abs(m.y).max(axis=(0, 1, 2)) > 0, mask)
    prov = m.provenance
    assert prov["ismrmrd_skipped"] == {"noise": 1, "parallel calibration": 2}
    assert prov["ismrmrd_dropped"] == {"repetition": 2} and prov["averages"] == 2
    assert prov["oversampling_removed"] == 2 and prov["orientation"] == "ISMRMRD acquisition headers"
    # pixel 100 mm / 16 along the readout (rows, +P), 80 mm / 20 along phase encode (columns, +L),
    # slice step 4 mm towards the feet; RAS+ flips L and P
    A = m.affine
    np.testing.assert_allclose(A[:3, 0], [-4.0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(A[:3, 1], [0, -6.25, 0], atol=1e-6)
    np.testing.assert_allclose(A[:3, 2], [0, 0, -4.0], atol=1e-6)
    centre = A @ np.array([ny // 2, nx // 4, 0, 1.0])  # the centre pixel of slice 0 is its position
    np.testing.assert_allclose(centre[:3], [-5.0, 3.0, 10.0], atol=1e-5)
    assert prov["slice_positions"] == pytest.approx([-10.0, -6.0])
    one = load_input(path, slice=1)  # one slice keeps its own position
    assert one.y.shape == (1, C, nx // 2, ny)
    np.testing.assert_allclose((one.affine @ np.array([ny // 2, nx // 4, 0, 1.0]))[:3], [-5.0, 3.0, 6.0], atol=1e-5)


def test_partial_fourier_and_asymmetric_echo(tmp_path):
    """Lines numbered from the first acquired one (centre c1 in the limits) and readouts that
    start late (center_sample < half) land on the centred grid; what was not sampled is zero."""
    rng = np.random.default_rng(1)
    C, nx, ny, skip_lines, skip_samples = 2, 24, 16, 4, 6
    k = _kspace(rng, 1, C, nx, ny)[0]
    acqs = []
    for col in range(skip_lines, ny):  # partial Fourier: the first 4 lines were not acquired
        d = k[:, skip_samples:, col]  # asymmetric echo: the first 6 samples were not acquired
        acqs.append(_acq(d, col - skip_lines, center=nx // 2 - skip_samples))
    path = tmp_path / "pf.h5"
    _write(path, _header(nx, ny, nx, (96.0, 64.0, 5.0), c1=ny // 2 - skip_lines), acqs)
    m = load_input(path)
    want = k.copy()
    want[:, :skip_samples] = 0
    want[:, :, :skip_lines] = 0
    np.testing.assert_allclose(m.y[0], want, atol=1e-5 * np.abs(k).max())
    # the unacquired readout rows and lines are outside the operator's mask, not "measured zeros"
    mask = m.operator().mask.numpy().astype(bool)
    assert not mask[:skip_samples].any() and not mask[:, :skip_lines].any()
    assert mask[skip_samples:, skip_lines:].all()
    assert m.provenance["acceleration"] == pytest.approx(nx * ny / ((nx - skip_samples) * (ny - skip_lines)))


def test_single_coil_and_the_cli(tmp_path):
    rng = np.random.default_rng(2)
    nx, ny = 32, 32
    k = _kspace(rng, 1, 1, nx, ny)[0]
    path = tmp_path / "single.h5"
    _write(path, _header(nx, ny, nx, (64.0, 64.0, 3.0)), [_acq(k[:, :, c], c) for c in range(ny)])
    m = load_input(path)
    assert m.operator_spec["name"] == "mri.cartesian" and m.y.shape == (1, nx, ny)
    out = tmp_path / "x.nii.gz"
    r = subprocess.run([sys.executable, "-m", "medrecon.cli.main", "reconstruct", str(path), "-o", str(out),
                        "-s", "classical", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    x = medrecon.load_volume(out).data[0]
    np.testing.assert_allclose(x, np.abs(ifft2c_np(k[0])), atol=1e-4 * np.abs(ifft2c_np(k[0])).max())


@pytest.mark.parametrize("case", ["radial", "3d", "channels", "outside", "no-imaging"])
def test_bad_files_get_one_sentence(tmp_path, case):
    rng = np.random.default_rng(3)
    nx, ny = 16, 16
    k = _kspace(rng, 1, 2, nx, ny)[0]
    acqs = [_acq(k[:, :, c], c) for c in range(ny)]
    xml = _header(nx, ny, nx, (64.0, 64.0, 3.0))
    if case == "radial":
        xml = _header(nx, ny, nx, (64.0, 64.0, 3.0), trajectory="radial")
    elif case == "3d":
        xml = _header(nx, ny, nx, (64.0, 64.0, 3.0), nz=8)
    elif case == "channels":
        acqs.append(_acq(k[:1, :, 0], 0))
    elif case == "outside":
        acqs.append(_acq(k[:, :, 0], ny + 3))
    else:
        acqs = [_acq(k[:, :, 0], 0, flags=[NOISE])]
    path = tmp_path / f"{case}.h5"
    _write(path, xml, acqs)
    with pytest.raises(FileFormatError) as e:
        load_input(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path.name) in msg
    r = subprocess.run([sys.executable, "-m", "medrecon.cli.main", "import", str(path), "-o",
                        str(tmp_path / "m.h5")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.shared_data
def test_gre_phantom_through_ismrmrd_matches_the_numpy_export(shared_data, tmp_path):
    """The shared GRE k-space (160 lines x 2 coils x 320 samples), written as ISMRMRD with the
    protocol's 200 mm field of view and 2x readout oversampling, imports to the same
    measurement as the .npy export: same k-space, same coil maps, 1.25 mm pixels."""
    npy = shared_data / "mri-kspace-gre-phantom" / "gre_kspace_lin_cha_col.npy"
    if not npy.is_file():
        pytest.skip("the GRE phantom k-space is not present")
    raw = np.load(npy)  # (lin, cha, col)
    ny, C, nx = raw.shape
    path = tmp_path / "gre.h5"
    _write(path, _header(nx, ny, nx // 2, (200.0, 200.0, 4.0)),
           [_acq(raw[line], line) for line in range(ny)])
    m, ref = load_input(path), load_input(npy)
    np.testing.assert_array_equal(m.y, ref.y)
    np.testing.assert_array_equal(m.arrays["coil_maps"], ref.arrays["coil_maps"])
    assert np.allclose(np.linalg.norm(m.affine[:3, :2], axis=0), [1.25, 1.25])


def test_discarded_samples_count_in_acquisition_order(tmp_path):
    """discard_pre of a reversed readout drops the samples acquired first: the last rows once flipped."""
    rng = np.random.default_rng(4)
    C, nx, ny = 2, 16, 8
    k = _kspace(rng, 1, C, nx, ny)[0]
    acqs = []
    for c in range(ny):
        a = _acq(k[:, ::-1, c], c, flags=[REVERSE]) if c == 3 else _acq(k[:, :, c], c)
        if c == 3:
            a.discard_pre = 2
        acqs.append(a)
    path = tmp_path / "discard.h5"
    _write(path, _header(nx, ny, nx, (64.0, 32.0, 3.0)), acqs)
    y = load_input(path).y[0]
    np.testing.assert_allclose(y[:, :nx - 2, 3], k[:, :nx - 2, 3], atol=1e-5 * np.abs(k).max())
    assert np.abs(y[:, nx - 2:, 3]).max() == 0
