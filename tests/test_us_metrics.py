"""Ultrasound metrics: gCNR (masks, analytic Gaussian pair, invariance), KS statistic,
speckle size of Gaussian-filtered noise against its analytic FWHM, region masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.special import erf

from medrecon.errors import InputError
from medrecon.metrics import annulus_mask, autocorrelation, circle_mask, gcnr, ks_statistic, speckle_size


def test_gcnr_identical_distributions_is_near_zero():
    rng = np.random.default_rng(1)
    img = rng.rayleigh(1.0, (200, 200))
    t = circle_mask(img.shape, (60, 60), 30)
    b = circle_mask(img.shape, (140, 140), 30)
    # finite samples (2800 pixels each) leave a small histogram-noise floor
    assert gcnr(img, t, b, bins=32) < 0.1
    img2 = img.copy()
    img2[t] *= 4.0  # a bright (+12 dB) target in the same speckle
    assert gcnr(img2, t, b, bins=32) > 0.6


def test_gcnr_disjoint_is_one_and_masks_select_pixels():
    img = np.zeros((20, 20))
    img[:10] = 5.0
    assert gcnr(img, img > 1, img < 1) == 1.0
    # a 2D mask applies to every frame of a stack
    assert gcnr(np.stack([img, img]), img > 1, img < 1) == 1.0


def test_gcnr_of_two_gaussians_matches_the_analytic_value():
    # N(0,1) vs N(d,1): OVL = 2 Phi(-d/2), so gCNR = erf(d / (2 sqrt 2))
    rng = np.random.default_rng(2)
    for d in (0.5, 1.0, 2.0):
        a = rng.standard_normal(200_000)
        b = rng.standard_normal(200_000) + d
        assert gcnr(a, b, bins=100) == pytest.approx(erf(d / (2 * math.sqrt(2))), abs=0.015)


def test_gcnr_invariant_to_a_monotonic_transform_with_transformed_bins():
    rng = np.random.default_rng(3)
    t = rng.rayleigh(2.0, 5000)
    b = rng.rayleigh(1.0, 5000)
    edges = np.linspace(0, max(t.max(), b.max()) * 1.0001, 80)
    g_lin = gcnr(t, b, bins=edges)
    edges_db = 20 * np.log10(np.maximum(edges, 1e-12))
    g_db = gcnr(20 * np.log10(t), 20 * np.log10(b), bins=edges_db)
    assert g_db == pytest.approx(g_lin, abs=1e-12)
    assert 0.2 < g_lin < 0.8
    # with a bin count the two agree up to discretisation
    assert gcnr(20 * np.log10(t), 20 * np.log10(b), bins=256) == pytest.approx(g_lin, abs=0.06)


def test_gcnr_bad_masks():
    img = np.ones((8, 8))
    with pytest.raises(InputError, match="does not fit"):
        gcnr(img, np.ones((4, 4), bool), np.ones((8, 8), bool))
    with pytest.raises(InputError, match="empty"):
        gcnr(img, np.zeros((8, 8), bool), np.ones((8, 8), bool))
    with pytest.raises(InputError, match="boolean"):
        gcnr(img, np.full((8, 8), 0.5), np.ones((8, 8), bool))


def test_ks_statistic_known_values_and_scipy():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(3000), rng.standard_normal(2000) + 0.3
    assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic)
    assert ks_statistic(a, a.copy()) == 0.0
    assert ks_statistic(np.zeros(5), np.ones(7)) == 1.0
    # N(0,1) vs N(d,1): D = 2 Phi(d/2) - 1 = erf(d / (2 sqrt 2)) for large samples
    big_a, big_b = rng.standard_normal(100_000), rng.standard_normal(100_000) + 1.0
    assert ks_statistic(big_a, big_b) == pytest.approx(erf(1 / (2 * math.sqrt(2))), abs=0.01)
    # invariant to a strictly increasing transform of both samples
    pa, pb = np.abs(a) + 0.1, np.abs(b) + 0.1
    assert ks_statistic(20 * np.log10(pa), 20 * np.log10(pb)) == pytest.approx(ks_statistic(pa, pb))
    with pytest.raises(InputError):
        ks_statistic([], [1.0])


def test_speckle_size_of_gaussian_filtered_noise():
    # white noise filtered by a Gaussian of std s has autocorrelation exp(-d^2 / (4 s^2)):
    # FWHM = 2 sqrt(2 ln 2) * sqrt(2) s
    rng = np.random.default_rng(5)
    sz, sx = 3.0, 1.5
    field = gaussian_filter(rng.standard_normal((400, 400)), (sz, sx), mode="wrap")
    k = 2 * math.sqrt(2 * math.log(2)) * math.sqrt(2)
    ax, lat = speckle_size(field, (0.05, 0.2))
    assert ax == pytest.approx(k * sz * 0.05, rel=0.06)
    assert lat == pytest.approx(k * sx * 0.2, rel=0.06)
    r = autocorrelation(field[:50, :60])
    assert r.shape == (99, 119) and r[49, 59] == pytest.approx(1.0)


def test_speckle_size_too_small_region_and_bad_input():
    smooth = np.outer(np.linspace(0, 1, 8), np.ones(8)) + np.outer(np.ones(8), np.linspace(0, 1, 8))
    assert speckle_size(smooth, 1.0)[0] > 5  # autocorrelation of a ramp stays high
    with pytest.raises(InputError, match="constant"):
        speckle_size(np.ones((8, 8)), 1.0)
    with pytest.raises(InputError, match="spacing"):
        speckle_size(np.random.default_rng(0).random((8, 8)), 0.0)
    with pytest.raises(InputError, match="2D"):
        speckle_size(np.ones(8), 1.0)


def test_circle_and_annulus_masks_in_pixels_and_mm():
    m = circle_mask((11, 11), (5, 5), 2)
    assert m.sum() == 13 and m[5, 5] and not m[5, 8]
    # mm: pixel [j, i] at origin + (j dz, i dx); a 1 mm disc at (z=2, x=0) mm on a 0.5 mm grid
    mm = circle_mask((9, 9), (2.0, 0.0), 1.0, spacing=(0.5, 0.5), origin=(0.0, -2.0))
    assert mm[4, 4] and mm[2, 4] and mm[6, 4] and not mm[7, 4] and mm.sum() == 13
    ring = annulus_mask((11, 11), (5, 5), 2, 4)
    assert not ring[5, 5] and ring[5, 8] and not (ring & m).any()
    with pytest.raises(InputError, match="outside"):
        circle_mask((10, 10), (50, 50), 3)
    with pytest.raises(InputError, match="r_inner"):
        annulus_mask((10, 10), (5, 5), 4, 2)
    with pytest.raises(InputError, match="radius"):
        circle_mask((10, 10), (5, 5), -1)


def test_speckle_size_with_a_mask_matches_the_full_region():
    rng = np.random.default_rng(6)
    field = gaussian_filter(rng.standard_normal((300, 300)), (2.5, 2.5), mode="wrap")
    ring = annulus_mask(field.shape, (150, 150), 40, 140)
    full = speckle_size(field, 0.1)
    ringed = speckle_size(field, 0.1, mask=ring)
    assert ringed == pytest.approx(full, rel=0.05)
    # a bright disc inside the ring is ignored by the mask, not by the plain call
    field2 = field.copy()
    field2[circle_mask(field.shape, (150, 150), 30)] += 50.0
    assert speckle_size(field2, 0.1, mask=ring) == pytest.approx(ringed, rel=1e-9)
    assert speckle_size(field2, 0.1)[0] > 2 * full[0]
