"""ct.cone: conformance kit, exact line integrals of a ball, the parallel-beam limit, FDK, errors,
and the end-to-end path simulate -> reconstruct (Python API and the real CLI)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import medrecon
from medrecon.errors import InputError
from medrecon.testing import check_operator, dot_product_error


def ball(shape, voxel_size, centre, radius, value=1.0, ss=4):
    """A partial-volume ball (each voxel holds the fraction of its ``ss^3`` sub-samples inside),
    in the coordinates of :mod:`medrecon_ct.cone`; ``centre`` is (X, Y, Z) in mm."""
    nz, ny, nx = shape
    dz, dy, dx = voxel_size
    o = (np.arange(ss) + 0.5) / ss - 0.5
    Z = ((np.arange(nz)[:, None] + o).reshape(-1) - (nz - 1) / 2) * dz
    Y = (((ny - 1) / 2 - np.arange(ny))[:, None] + o).reshape(-1) * dy
    X = ((np.arange(nx)[:, None] + o).reshape(-1) - (nx - 1) / 2) * dx
    inside = ((X[None, None] - centre[0]) ** 2 + (Y[None, :, None] - centre[1]) ** 2
              + (Z[:, None, None] - centre[2]) ** 2) <= radius**2
    return value * inside.reshape(nz, ss, ny, ss, nx, ss).mean((1, 3, 5))


def ellipsoid_phantom(n):
    """A small 3D Shepp-Logan-like phantom of ellipsoids (values in [0, 1]) on an n^3 grid of 1 mm voxels."""
    c = (np.arange(n) - (n - 1) / 2) / (n / 2)  # normalised coordinates in [-1, 1]
    Z, Y, X = np.meshgrid(c, -c, c, indexing="ij")
    vol = np.zeros((n, n, n))
    # (value, centre x y z, semi-axes a b c)
    for v, cx, cy, cz, a, b, cc in [(1.0, 0, 0, 0, 0.69, 0.85, 0.75), (-0.7, 0, -0.02, 0, 0.56, 0.72, 0.62),
                                    (0.3, 0.22, 0, 0.1, 0.12, 0.3, 0.25), (0.3, -0.22, 0, -0.1, 0.15, 0.35, 0.25),
                                    (0.4, 0, 0.35, 0, 0.2, 0.2, 0.2), (0.2, 0, -0.5, 0.2, 0.1, 0.08, 0.1)]:
        vol += v * ((((X - cx) / a) ** 2 + ((Y - cy) / b) ** 2 + ((Z - cz) / cc) ** 2) <= 1)
    return vol


# ------------------------------------------------------------------ contract
@pytest.mark.parametrize(
    "params",
    [
        dict(shape=8, n_views=5),
        dict(shape=[6, 10, 8], n_views=4, voxel_size=[1.5, 0.8, 1.0], det_offset=[0.4, -0.6],
             source_to_center=30.0, source_to_detector=55.0),
        dict(shape=[7, 8, 8], angles=[0.0, 33.0, 90.0], det_shape=[9, 11], det_spacing=[1.7, 1.3], det_offset=0.5),
        dict(shape=8, n_views=6, arc=[0, 120], max_points=500),  # limited angle, many small chunks
    ],
)
def test_conformance(params):
    op = medrecon.get_operator("ct.cone", **params)
    assert type(op).__module__ == "medrecon_ct.cone" and op.per_slice is False
    report = check_operator(op)
    assert report.passed, report.table()
    err = dot_product_error(op, torch.float64)
    print(f"ct.cone {params}: dot-product error {err:.1e}")
    assert err <= 1e-10


def test_chunking_does_not_change_the_result():
    x = torch.rand(2, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    A = medrecon.get_operator("ct.cone", shape=8, n_views=5).with_precision(True)
    C = medrecon.get_operator("ct.cone", shape=8, n_views=5, max_points=300).with_precision(True)
    y = A(x)
    torch.testing.assert_close(C(x), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(C.adjoint(y), A.adjoint(y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(A(x[1:]), y[1:], rtol=1e-12, atol=1e-12)  # batch rows are independent


def test_defaults_and_spec():
    A = medrecon.get_operator("ct.cone", shape=16)
    assert A.range_shape[0] == 360 and A.R == 32.0 and A.D == 64.0
    np.testing.assert_allclose(A.angles.numpy(), np.arange(360.0))
    assert A.det_spacing == (2.0, 2.0)
    # the detector sees the whole circumscribed cylinder (radius r, half height h) from every view
    r, h = 8 * math.sqrt(2), 8.0
    n_rows, n_cols = A.det_shape
    assert n_cols * 2.0 >= 2 * 64 * math.tan(math.asin(r / 32)) and n_rows * 2.0 >= 2 * 64 * h / (32 - r)
    spec = json.loads(json.dumps(A.spec()))
    assert spec["name"] == "ct.cone" and spec["params"]["shape"] == 16
    assert medrecon.operator_from_spec(spec).range_shape == A.range_shape


# ------------------------------------------------------------------ physics
def _ray(A, view, row, col):
    """Source and unit direction of one detector pixel, from the documented geometry (independent
    of the operator's own ray code)."""
    th = math.radians(float(A.angles[view]))
    d, eu, ev = np.array([-math.sin(th), math.cos(th), 0]), np.array([math.cos(th), math.sin(th), 0]), np.eye(3)[2]
    (n_rows, n_cols), (sr, sc), (orow, ocol) = A.det_shape, A.det_spacing, A.det_offset
    u = (col - (n_cols - 1) / 2) * sc + ocol
    v = (row - (n_rows - 1) / 2) * sr + orow
    S = -A.R * d
    w = A.D * d + u * eu + v * ev
    return S, w / np.linalg.norm(w)


def test_ball_line_integrals_are_chord_lengths():
    """A uniform ball (value mu, radius r) integrates to mu * 2 sqrt(r^2 - delta^2) along a ray at
    distance delta from its centre.

    Tolerance: the projector integrates the trilinear interpolant of the voxelised ball (partial
    volume, 1 mm voxels), whose surface is smeared over about one voxel, with the midpoint rule
    at h = 0.5 mm.  A flat smeared edge integrates exactly; the 10 mm ball's curvature and the
    kinks of the interpolant at voxel boundaries move each chord end by a small fraction of a
    voxel, so we allow 0.3 mm (0.3 voxel) in total on chords that stay >= 3 mm inside the
    surface (delta <= 7 mm, chord >= 14.3 mm: <= 2.1 %), and 1 % on rays through the centre
    (measured: ~0.25 mm and ~0.7 %).  Rays that pass > 2 mm outside the ball see nothing.
    """
    shape, vs, mu, r = (28, 32, 30), (1.0, 1.0, 1.0), 0.02, 10.0
    centre = np.array([3.0, -2.0, 4.0])  # off-centre (X, Y, Z): checks orientation conventions too
    A = medrecon.get_operator("ct.cone", shape=list(shape), angles=[0.0, 37.0, 90.0, 200.0, 311.0],
                              source_to_center=60.0, source_to_detector=110.0).with_precision(True)
    y = A(torch.from_numpy(ball(shape, vs, centre, r, mu))[None])[0].numpy()
    n_rows, n_cols = A.det_shape
    inner, central, outside = [], [], []
    for v in range(A.range_shape[0]):
        for row in range(0, n_rows, 2):
            for col in range(0, n_cols, 2):
                S, w = _ray(A, v, row, col)
                delta = np.linalg.norm((centre - S) - np.dot(centre - S, w) * w)
                chord = 2 * math.sqrt(max(r * r - delta * delta, 0.0))
                err = abs(y[v, row, col] / mu - chord)  # mm of chord
                if delta <= 7.0:
                    inner.append(err)
                if delta <= 1.0:
                    central.append(err / chord)
                if delta > r + 2.0:
                    outside.append(abs(y[v, row, col]))
    print(f"ball line integrals: {len(inner)} rays with delta <= 7 mm, worst error {max(inner):.3f} mm; "
          f"{len(central)} central rays, worst relative error {max(central):.2e}")
    assert len(inner) > 100 and len(central) >= 5 and len(outside) > 100
    assert max(inner) < 0.3 and max(central) < 0.01 and max(outside) < 1e-12


def test_central_slice_approaches_parallel_beam():
    """R, D -> infinity: the central detector row of a z-uniform volume is ct.parallel's sinogram of
    its slice (same angles, same detector pitch at the isocentre).  The projectors discretise
    differently (Joseph vs. sampled trilinear), so they agree to ~1 %, not to rounding."""
    n, ps = 24, 0.8
    sl = ellipsoid_phantom(n)[n // 2] + 0.1 * ball((1, n, n), (1, ps, ps), (2.0, -3.0, 0.0), 4.0)[0]
    vol = torch.from_numpy(np.repeat(sl[None], 4, 0))[None]  # (1, 4, n, n), equal slices
    angles = [0.0, 30.0, 75.0, 120.0, 160.0]
    P = medrecon.get_operator("ct.parallel", shape=n, angles=angles, pixel_size=ps).with_precision(True)
    R = 1e6
    C = medrecon.get_operator("ct.cone", shape=[4, n, n], voxel_size=ps, angles=angles, source_to_center=R,
                              source_to_detector=2 * R, det_shape=[3, P.range_shape[1]],
                              det_spacing=2 * ps).with_precision(True)
    yp = P(torch.from_numpy(sl)[None])[0]
    yc = C(vol)[0, :, 1]  # the central row (v = 0)
    rel = float(torch.linalg.vector_norm(yc - yp) / torch.linalg.vector_norm(yp))
    print(f"cone (R = 1e6 mm) central row vs ct.parallel: relative difference {rel:.2e}")
    assert rel < 0.02


def test_fdk_uniform_ball_and_phantom():
    # a uniform ball reconstructs to its value in the central slice (scaling of FDK)
    n = 32
    A = medrecon.get_operator("ct.cone", shape=n, n_views=24).with_precision(True)
    mu, r = 0.02, 10.0
    xb = torch.from_numpy(ball((n, n, n), (1, 1, 1), (0, 0, 0), r, mu))[None]
    rec = A.classical(A(xb))[0].numpy()
    c = (np.arange(n) - (n - 1) / 2)
    inner = (c[:, None] ** 2 + c[None] ** 2) <= (0.6 * r) ** 2
    central = float(rec[n // 2 - 1 : n // 2 + 1][:, inner].mean())
    print(f"FDK of a uniform ball: central-slice interior mean {central / mu:.4f} x its value")
    assert abs(central - mu) / mu < 0.02
    # a 3D ellipsoid phantom: high correlation, reasonable PSNR (24 views of a 32^3 volume)
    truth = ellipsoid_phantom(n)
    x = torch.from_numpy(truth)[None]
    rec = A.classical(A(x))[0].numpy()
    corr = float(np.corrcoef(rec.ravel(), truth.ravel())[0, 1])
    mse = float(np.mean((rec - truth) ** 2))
    psnr = 10 * math.log10(1.0 / mse)
    print(f"FDK of the ellipsoid phantom (32^3, 24 views): correlation {corr:.3f}, PSNR {psnr:.1f} dB")
    assert corr > 0.9 and psnr > 18.0
    # the filter can be chosen per call
    smooth = A.classical(A(x), filter="hann")[0].numpy()
    assert np.corrcoef(smooth.ravel(), truth.ravel())[0, 1] > 0.8  # smoother, still close


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "params, match",
    [
        (dict(shape=[8, 8]), "shape must be a volume size n or \\[nz, ny, nx\\]"),
        (dict(shape=[8, 0, 8]), "shape must be"),
        (dict(shape=8, voxel_size=-1), "voxel_size must be positive"),
        (dict(shape=8, voxel_size=[1, 1]), "voxel_size must be a number or a list of 3 numbers"),
        (dict(shape=8, voxel_size=float("nan")), "voxel_size must be finite"),
        (dict(shape=8, source_to_center=5.0), "inside the volume"),
        (dict(shape=8, source_to_center=-5.0), "source_to_center must be positive"),
        (dict(shape=8, source_to_center=20.0, source_to_detector=25.0), "detector lies outside the volume"),
        (dict(shape=8, det_shape=[0, 5]), "det_shape must be a positive integer"),
        (dict(shape=8, det_shape=[4, 5, 6]), "det_shape must be"),
        (dict(shape=8, det_spacing=[1.0, 0.0]), "det_spacing must be positive"),
        (dict(shape=8, det_offset=[0.0, float("inf")]), "det_offset must be finite"),
        (dict(shape=8, n_views=0), "n_views must be at least 1"),
        (dict(shape=8, angles=[0, float("nan")]), "angles must be finite"),
        (dict(shape=8, filter="hamm"), "did you mean 'hamming'"),
        (dict(shape=8, max_points=0), "max_points must be a positive integer"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(InputError, match=match) as exc:
        medrecon.get_operator("ct.cone", **params)
    msg = str(exc.value)
    assert "\n" not in msg and msg.count(". ") == 0


def test_bad_inputs():
    A = medrecon.get_operator("ct.cone", shape=8, n_views=3)
    with pytest.raises(InputError, match="expects a image batch shaped"):
        A(torch.zeros(8, 8, 8))
    with pytest.raises(InputError, match="real image"):
        A(torch.zeros(1, 8, 8, 8, dtype=torch.complex64))
    y = A(torch.ones(1, 8, 8, 8))
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        A.classical(y)


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def small_volume():
    """A 12 x 16 x 16 ellipsoid phantom in 1/mm with anisotropic voxels and a non-trivial affine."""
    data = (ellipsoid_phantom(16)[:12] * 0.02).astype(np.float32)
    aff = np.array([[-0.9, 0, 0, 40], [0, -0.9, 0, 30], [0, 0, 1.5, -10], [0, 0, 0, 1.0]])
    return medrecon.Volume(data, aff, {"units": "1/mm", "modality": "CT"})


def test_simulate_and_reconstruct_3d(small_volume):
    vol = small_volume
    m = medrecon.simulate(vol, "ct.cone", {"n_views": 16}, noise_std=0.01, relative=True, seed=3)
    A = m.operator()
    assert m.operator_spec["params"]["shape"] == [12, 16, 16]
    assert m.operator_spec["params"]["voxel_size"] == [1.5, 0.9, 0.9]  # from the volume's spacing
    assert m.y.shape == A.range_shape and m.volume_shape == (12, 16, 16)  # one 3D measurement
    clean = A(torch.from_numpy(vol.data)[None])[0].numpy()
    rel_noise = np.std(m.y - clean) / np.sqrt(np.mean(clean**2))
    assert 0.007 < rel_noise < 0.013
    again = medrecon.simulate(vol, "ct.cone", {"n_views": 16}, noise_std=0.01, relative=True, seed=3)
    np.testing.assert_array_equal(again.y, m.y)  # the noise is reproducible from the seed
    fdk = medrecon.reconstruct(m, "classical")
    assert fdk.shape == vol.shape
    np.testing.assert_allclose(fdk.affine, vol.affine)
    tv = medrecon.reconstruct(m, "tv", params={"dims": 3}, steps=20)
    assert tv.shape == vol.shape
    np.testing.assert_allclose(tv.affine, vol.affine)
    c_fdk = np.corrcoef(fdk.data.ravel(), vol.data.ravel())[0, 1]
    c_tv = np.corrcoef(tv.data.ravel(), vol.data.ravel())[0, 1]
    print(f"simulate -> reconstruct (16 views, 12x16x16): correlation FDK {c_fdk:.3f}, TV 3D (20 steps) {c_tv:.3f}")
    assert c_fdk > 0.8 and c_tv > 0.8
    # a slab: the operator is built for the slab and the measurement's affine describes it
    slab = medrecon.simulate(vol, "ct.cone", {"n_views": 8}, slices="2:10")
    assert slab.operator_spec["params"]["shape"] == [8, 16, 16] and slab.volume_shape == (8, 16, 16)
    np.testing.assert_allclose(slab.affine, vol.slab(2, 10).affine)
    # a given shape that is not the volume's is a one-sentence error
    with pytest.raises(InputError, match="is 3D and takes volumes shaped"):
        medrecon.simulate(vol, "ct.cone", {"n_views": 8, "shape": 16})


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MEDRECON_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "medrecon.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_simulate_and_reconstruct(small_volume, tmp_path):
    vin = medrecon.save_volume(small_volume, tmp_path / "vol.nii.gz")
    r = _cli("simulate", "ct.cone", "-i", vin, "-o", tmp_path / "m.h5", "-p", "n_views=16", "-p", "filter=hann",
             "--noise", "0.005")
    assert r.returncode == 0, r.stderr
    m = medrecon.load_measurement(tmp_path / "m.h5")
    assert m.y.shape[0] == 16 and m.y.ndim == 3 and m.operator_spec["name"] == "ct.cone"
    r = _cli("reconstruct", tmp_path / "m.h5", "--sampler", "classical", "-o", tmp_path / "r.nii.gz",
             "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    rec = medrecon.load_volume(tmp_path / "r.nii.gz")
    assert rec.shape == small_volume.shape
    np.testing.assert_allclose(rec.affine, small_volume.affine, atol=1e-4)
    assert np.corrcoef(rec.data.ravel(), small_volume.data.ravel())[0, 1] > 0.75
    r = _cli("simulate", "ct.cone", "-i", vin, "-o", tmp_path / "bad.h5", "-p", "source_to_center=3")
    assert r.returncode == 2 and "inside the volume" in r.stderr and "Traceback" not in r.stderr
