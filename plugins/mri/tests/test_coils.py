"""Coil sensitivity estimation from the calibration region, on synthetic birdcage maps."""

import numpy as np
import pytest
from medrecon_mri.coils import estimate_coil_maps, rss, synthetic_coil_maps
from medrecon_mri.fft import fft2c_np
from medrecon_mri.masks import make_mask
from scipy.ndimage import binary_erosion

from medrecon.errors import InputError


def _setup(x, n_coils=8, R=4):
    S = synthetic_coil_maps(x.shape, n_coils)
    mask = make_mask(x.shape, {"kind": "random", "acceleration": R, "center_fraction": 0.12, "seed": 0})
    return S, fft2c_np(S * x[None]) * mask[None], mask


def _magnitude_corr(est, true, region):
    return [float(np.corrcoef(np.abs(e[region]), np.abs(t[region]))[0, 1]) for e, t in zip(est, true, strict=False)]


def test_synthetic_maps_are_normalised_and_smooth():
    S = synthetic_coil_maps((32, 40), 6)
    assert S.shape == (6, 32, 40) and S.dtype == np.complex64
    np.testing.assert_allclose(rss(S), 1.0, atol=1e-5)
    assert np.abs(np.diff(S, axis=-1)).max() < 0.3


@pytest.mark.parametrize("method", ["lowres", "walsh"])
def test_estimated_maps_match_the_true_ones_inside_the_object(sl64c, method):
    S, k, mask = _setup(sl64c)
    est = estimate_coil_maps(k, mask, method=method)
    inside = binary_erosion(np.abs(sl64c) > 0.05, iterations=2)
    corr = _magnitude_corr(est, S, inside)
    assert min(corr) >= 0.95, corr
    # up to a common phase: est_c = S_c exp(i theta) with theta the same for every coil
    rel = est * np.conj(S)
    common = np.angle(rel.sum(0))
    resid = np.angle(rel * np.exp(-1j * common)[None])[:, inside]
    assert np.median(np.abs(resid)) < 0.15  # low-resolution maps: larger errors only at sharp edges
    # the implied image sum_c conj(S_c) m_c is close to real and non-negative (phase absorbed)
    np.testing.assert_allclose(rss(est)[inside], 1.0, atol=1e-4)


def test_espirit_through_sigpy(sl64c):
    pytest.importorskip("sigpy")
    S, k, mask = _setup(sl64c)
    est = estimate_coil_maps(k, mask, method="espirit")
    inside = binary_erosion(np.abs(sl64c) > 0.05, iterations=2)
    assert min(_magnitude_corr(est, S, inside)) >= 0.95


def test_estimation_errors(sl64c):
    S, k, mask = _setup(sl64c)
    with pytest.raises(InputError, match="unknown coil map method"):
        estimate_coil_maps(k, mask, method="magic")
    with pytest.raises(InputError, match="too small"):
        estimate_coil_maps(k, mask, calib=[2, 2])
    with pytest.raises(InputError, match="coils, ny, nx"):
        estimate_coil_maps(k[0], mask)
