"""Our ESPIRiT (numpy) against SigPy's EspiritCalib and against the true coil maps."""

import numpy as np
import pytest
from medrecon_mri import espirit
from medrecon_mri.coils import rss, synthetic_coil_maps
from medrecon_mri.espirit import espirit_maps, min_calib
from medrecon_mri.fft import fft2c_np
from medrecon_mri.masks import calibration_region, make_mask
from scipy.ndimage import binary_erosion

from medrecon.errors import InputError

N = 128


@pytest.fixture(scope="module")
def data():
    """Phantom with smooth phase, 8 coils with a smooth bias and per-coil gains (not normalised), noise,
    a 1D random mask with a centred 20-line ACS."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    yy, xx = np.mgrid[:N, :N] / N - 0.5
    x = resize(shepp_logan_phantom(), (N, N), anti_aliasing=True) * np.exp(1j * (1.0 * yy + 0.5 * xx))
    bias = 0.7 + 0.6 * np.exp(-((yy - 0.1) ** 2 + (xx + 0.2) ** 2) / 0.2)
    gains = np.exp(np.linspace(-0.5, 0.5, 8)) * np.exp(1j * np.linspace(0, 2, 8))
    S = synthetic_coil_maps((N, N), 8) * bias[None] * gains[:, None, None]
    rng = np.random.default_rng(0)
    k = fft2c_np(S * x[None])
    k = k + 2e-4 * np.abs(k).max() * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    mask = make_mask((N, N), {"kind": "random", "acceleration": 4, "center_fraction": 0.16, "seed": 0})
    k = (k * mask[None]).astype(np.complex64)
    inside = binary_erosion(np.abs(x) > 0.05, iterations=2)
    return k, mask, S / rss(S)[None], inside


def _corr(a, b):
    """Per pixel ``|<a, b>| / (|a| |b|)`` over the coils (phase-invariant)."""
    return np.abs((np.conj(a) * b).sum(0)) / np.maximum(rss(a) * rss(b), 1e-30)


def test_matches_sigpy_on_the_same_calibration_block(data):
    app = pytest.importorskip("sigpy.mri.app")
    k, mask, _, inside = data
    _, cs = calibration_region(mask)
    W = 2 * min(N // 2 - cs.start, cs.stop - N // 2)  # the widest even block inside the ACS
    assert 16 <= W <= 24
    sq = slice(N // 2 - W // 2, N // 2 - W // 2 + W)  # SigPy's centred W x W block (sp.resize)
    assert cs.start <= sq.start and sq.stop <= cs.stop
    ours, eig = espirit_maps(k, sq, sq, kernel=6, thresh=0.02, crop=0.95)
    theirs, their_eig = app.EspiritCalib(k, calib_width=W, kernel_width=6, thresh=0.02, crop=0.95,
                                         output_eigenvalue=True, show_pbar=False).run()
    both = inside & (rss(ours) > 0) & (rss(np.asarray(theirs)) > 0)
    assert both.sum() > 0.95 * inside.sum()
    corr = _corr(ours, np.asarray(theirs))[both]
    assert corr.mean() > 0.99 and np.percentile(corr, 5) > 0.98, (corr.mean(), corr.min())
    np.testing.assert_allclose(eig[inside], np.asarray(their_eig)[0][inside], atol=1e-3)


def test_maps_span_the_true_ones_with_a_rectangular_acs(data):
    k, mask, truth, inside = data
    rs, cs = calibration_region(mask)  # all rows x the ACS columns (only the central 48 rows are used)
    assert rs == slice(0, N)
    maps, eig = espirit_maps(k, rs, cs)
    assert maps.shape == k.shape and maps.dtype == np.complex64 and eig.dtype == np.float32
    assert np.all(eig[inside] > 0.95) and eig.max() <= 1 + 1e-4
    np.testing.assert_allclose(rss(maps)[inside], 1.0, atol=1e-4)
    assert np.all(rss(maps)[eig <= 0.95] == 0)  # cropped
    proj = _corr(maps, truth)[inside]  # |<s, s_true>| / |s_true|, both of unit norm
    assert proj.mean() > 0.995 and proj.min() > 0.95, (proj.mean(), proj.min())
    # the per-pixel phase follows the virtual body coil: smooth inside the object
    dphase = np.angle(maps[:, 1:, :] * np.conj(maps[:, :-1, :]))[:, inside[1:] & inside[:-1]]
    assert np.median(np.abs(dphase)) < 0.1


def test_blocks_and_branches_give_the_same_maps(data, monkeypatch):
    k, mask, _, inside = data
    rs, cs = calibration_region(mask)
    ref, ref_eig = espirit_maps(k, rs, cs)
    monkeypatch.setattr(espirit, "_BLOCK_BYTES", 8 * 8 * 8 * N * 5)  # 5 rows per block
    maps, eig = espirit_maps(k, rs, cs)
    np.testing.assert_allclose(eig, ref_eig, atol=1e-4)
    assert _corr(maps, ref)[inside].min() > 0.999
    # the signal subspace from the Gram matrix of either side is the SVD's (rows of V^H above the threshold)
    A = espirit._calibration_matrix(k[:, 40:88, cs].astype(complex), 6)
    for rows in (A, A[:200]):  # more, then fewer patches than unknowns (8 * 6 * 6 = 288)
        _, sv, vh = np.linalg.svd(rows, full_matrices=False)
        ref = vh[sv > 0.02 * sv[0]]
        V = espirit._signal_subspace(rows, 0.02)
        assert V.shape == ref.shape and len(V) > 10
        np.testing.assert_allclose(np.linalg.svd(V @ ref.conj().T, compute_uv=False), 1.0, atol=1e-8)
        patch = rows[3]  # the patches lie (nearly) in the subspace they span
        assert np.linalg.norm(V.conj() @ patch) > 0.99 * np.linalg.norm(patch)


def test_errors(data):
    k, *_ = data
    c = slice(N // 2 - 4, N // 2 + 4)
    assert min_calib(6) == 10
    with pytest.raises(InputError, match=r"too small.*at least 10 .*coil_method=lowres.*calib="):
        espirit_maps(k, slice(0, N), c)
    maps, _ = espirit_maps(k, slice(0, N), c, kernel=4)  # 8 lines suffice for a 4 x 4 kernel
    assert rss(maps).max() > 0
    bad = k.copy()
    bad[3, 5, 7] = np.nan
    with pytest.raises(InputError, match="NaN"):
        espirit_maps(bad, slice(0, N), slice(54, 74))
    with pytest.raises(InputError, match="coils, ny, nx"):
        espirit_maps(k[0], slice(0, N), slice(54, 74))
