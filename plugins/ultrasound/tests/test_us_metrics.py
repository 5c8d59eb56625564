"""Ultrasound metrics: gCNR (masks, analytic Gaussian pair, invariance), KS statistic,
speckle size of Gaussian-filtered noise against its analytic FWHM, region masks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from medrecon_us.metrics import annulus_mask, autocorrelation, circle_mask, gcnr, ks_statistic, speckle_size
from scipy.ndimage import gaussian_filter
from scipy.special import erf

from medrecon.errors import InputError


def test_gcnr_known_values():
    assert gcnr(np.zeros(100), np.ones(100)) == pytest.approx(1.0)
    a = np.linspace(0, 1, 1000, endpoint=False)
    assert gcnr(a, a.copy(), bins=10) == pytest.approx(0.0)
    # uniform on [0, 1) vs [0.5, 1.5): half of each histogram overlaps
    assert gcnr(a, a + 0.5, bins=np.linspace(0, 1.5, 7)) == pytest.approx(0.5)
    with pytest.raises(InputError):
        gcnr([], [1.0])


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


# ------------------------------------------------------------------ evaluate_regions (volumes, mm grid)
def _us_volumes():
    """RF volumes (2 frames, depth x lateral) of speckle with an anechoic cyst: clean ('after') and
    with added haze ('before'); pixel 0.05 mm (depth) x 0.1 mm (lateral), pixel [0, 0] at 5 mm, -4 mm."""
    from medrecon.volume import Volume

    rng = np.random.default_rng(7)
    nz, nx = 120, 80
    aff = np.diag([0.1, 0.05, 1.0, 1.0])
    aff[0, 3], aff[1, 3] = -4.0, 5.0
    cyst = circle_mask((nz, nx), (8.0, 0.0), 1.0, spacing=(0.05, 0.1), origin=(5.0, -4.0))
    carrier = np.exp(1j * 2 * np.pi * np.arange(nz)[:, None] / 6.0)
    out = {"after": [], "before": []}
    for _ in range(2):
        iq = gaussian_filter(rng.standard_normal((nz, nx)), (1.5, 1.0)) + 1j * gaussian_filter(
            rng.standard_normal((nz, nx)), (1.5, 1.0))
        iq[cyst] *= 0.03
        haze = 1.5 * np.abs(iq).mean() * (rng.standard_normal((nz, nx)) + 1j * rng.standard_normal((nz, nx)))
        out["after"].append(np.real(iq * carrier))
        out["before"].append(np.real((iq + gaussian_filter(haze.real, 1) + 1j * gaussian_filter(haze.imag, 1))
                                     * carrier))
    return {k: Volume(np.stack(v).astype(np.float32), aff) for k, v in out.items()}


def test_evaluate_regions_gcnr_ks_speckle_and_figure(tmp_path):
    from medrecon_us.regions import evaluate_regions

    v = _us_volumes()
    res = evaluate_regions(v["after"], classical=v["before"], targets=["8,0,0.8"], backgrounds=[(8, 0, 1.3, 2.0)],
                           json_path=tmp_path / "m.json", png=tmp_path / "b.png", haze=v["before"])
    g_after, g_before = res["after"]["gcnr"][0], res["before"]["gcnr"][0]
    assert len(g_after["per_frame"]) == 2 and g_after["mean"] > 0.85
    assert g_before["mean"] < g_after["mean"] - 0.2  # haze fills the cyst
    ks = res["ks"][0]
    assert ks["target"]["mean"] > 0.5 and ks["background"]["mean"] < ks["target"]["mean"]
    sp = res["after"]["speckle_mm"][0]
    assert 0.05 < sp["axial"] < 1.0 and 0.05 < sp["lateral"] < 1.0
    assert res["regions"][0]["target_pixels"] > 100 and res["spacing_mm"] == pytest.approx([0.05, 0.1])
    assert json.loads((tmp_path / "m.json").read_text())["after"]["gcnr"][0]["mean"] == g_after["mean"]
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    # regions in pixels (row, column, radius: a px disc is 0.05 x 0.1 mm per pixel, so an ellipse in mm);
    # the after image against itself: KS 0
    px = evaluate_regions(v["after"], classical=v["after"], targets=[(60, 40, 8)], backgrounds=[(60, 40, 26, 36)],
                          units="px", dynamic_range_db=40)
    assert px["regions"][0]["target_pixels"] == circle_mask((120, 80), (60, 40), 8).sum()
    assert px["ks"][0]["target"]["mean"] == 0.0
    assert px["after"]["gcnr"][0]["mean"] > 0.85
    # a ground truth adds PSNR / SSIM on the B-mode
    ref = evaluate_regions(v["before"], reference=v["after"], targets=["8,0,0.8"], backgrounds=["8,0,1.3,2"])
    assert ref["reference_comparison"]["ssim"] < 1.0 and ref["reference_comparison"]["on"].startswith("B-mode")


def test_evaluate_regions_without_regions_draws_the_figure_only(tmp_path):
    from medrecon_us.regions import evaluate_regions

    v = _us_volumes()
    res = evaluate_regions(v["after"], classical=v["before"], png=tmp_path / "b.png", frame=1)
    assert res["regions"] == [] and res["after"]["gcnr"] == [] and res["ks"] == []
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="target"):
        evaluate_regions(v["after"], backgrounds=["8,0,1"])
    with pytest.raises(InputError, match="frame"):
        evaluate_regions(v["after"], frame=2)


def test_evaluate_regions_bad_input():
    from medrecon_us.regions import evaluate_regions

    from medrecon.volume import Volume

    v = _us_volumes()
    with pytest.raises(InputError, match="outside the image"):
        evaluate_regions(v["after"], targets=["30,0,1"], backgrounds=["8,0,1.3,2"])
    with pytest.raises(InputError, match="differs"):
        evaluate_regions(v["after"], classical=Volume(np.zeros((2, 10, 10))), targets=["8,0,1"],
                         backgrounds=["8,0,1.3,2"])
    with pytest.raises(InputError, match="z,x,r"):
        evaluate_regions(v["after"], targets=["8,0"], backgrounds=["8,0,1.3,2"])
    with pytest.raises(InputError, match="r_in < r_out"):
        evaluate_regions(v["after"], targets=["8,0,1"], backgrounds=["8,0,2,1.3"])
    with pytest.raises(InputError, match="background"):
        evaluate_regions(v["after"], targets=["8,0,1"], backgrounds=[])


def test_cli_evaluate_with_regions_and_bad_input(tmp_path):
    import os
    import subprocess
    import sys

    from medrecon.io import save_volume

    v = _us_volumes()
    save_volume(v["after"], tmp_path / "after.nii.gz")
    save_volume(v["before"], tmp_path / "before.nii.gz")
    (tmp_path / "regions.json").write_text(json.dumps({"units": "mm", "targets": [[8, 0, 0.8]],
                                                       "backgrounds": [[8, 0, 1.3, 2.0]]}))
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "medrecon.cli.main", "evaluate", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=300)

    proc = cli(tmp_path / "after.nii.gz", "--classical", tmp_path / "before.nii.gz", "--regions",
               tmp_path / "regions.json", "--target", "8,0,0.5", "--dynamic-range", "50",
               "--json", tmp_path / "m.json", "--png", tmp_path / "f.png")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "m.json").read_text())
    assert [r["target"] for r in res["regions"]] == [[8.0, 0.0, 0.5], [8.0, 0.0, 0.8]]  # the background is shared
    assert res["dynamic_range_db"] == 50 and res["after"]["gcnr"][1]["mean"] > 0.85
    assert "KS before vs after" in proc.stdout and "gCNR" in proc.stdout and (tmp_path / "f.png").stat().st_size
    for args, words in (([tmp_path / "after.nii.gz", "--target", "30,0,1", "--background", "8,0,1.3,2"],
                         "outside the image"),
                        ([tmp_path / "after.nii.gz"], "--reference")):
        proc = cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr


def test_gcnr_auto_bins_limit_the_small_region_bias():
    rng = np.random.default_rng(8)
    small = [gcnr(rng.rayleigh(1, 40), rng.rayleigh(1, 3000)) for _ in range(10)]
    fixed = [gcnr(rng.rayleigh(1, 40), rng.rayleigh(1, 3000), bins=256) for _ in range(10)]
    assert np.mean(small) < 0.25 < 0.6 < np.mean(fixed)
    with pytest.raises(InputError, match="auto"):
        gcnr(np.ones(4), np.zeros(4), bins="fd")
