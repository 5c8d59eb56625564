"""Sampling masks: achieved acceleration, fully sampled centre, determinism by seed."""

import numpy as np
import pytest
from medrecon_mri.masks import calibration_region, make_mask, mask_info, resolve_mask

from medrecon.errors import InputError

SHAPE = (96, 160)
ONE_D = ("random", "equispaced", "equispaced_fraction", "gaussian")


def spec(kind, R, seed=0, cf=0.08, **kw):
    return {"kind": kind, "acceleration": R, "center_fraction": cf, "seed": seed, **kw}


@pytest.mark.parametrize("kind", ONE_D + ("poisson",))
@pytest.mark.parametrize("R", [4, 8])
def test_centre_is_fully_sampled_and_seed_is_deterministic(kind, R):
    shape = (48, 64) if kind == "poisson" else SHAPE
    a = make_mask(shape, spec(kind, R, seed=3))
    b = make_mask(shape, spec(kind, R, seed=3))
    assert a.dtype == bool and a.shape == shape and np.array_equal(a, b)
    info = mask_info(a)
    if kind == "poisson":
        rows, cols = info["calibration"]
        assert rows >= round(0.08 * shape[0]) and cols >= round(0.08 * shape[1])
    else:
        n_low = round(0.08 * SHAPE[1])
        pad = (SHAPE[1] - n_low + 1) // 2
        assert a[:, pad:pad + n_low].all() and a[:, SHAPE[1] // 2].all()
        assert (a == a[:1]).all()  # whole phase-encode columns
        assert info["calibration"][0] == SHAPE[0] and info["calibration"][1] >= n_low
    if kind != "equispaced":  # a random offset can coincide with the seed's
        others = [make_mask(shape, spec(kind, R, seed=s)) for s in (4, 5)]
        assert any(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("R", [4, 8])
def test_acceleration_is_reached(R):
    # random: N/R in expectation (fastMRI semantics): the mean over seeds is close
    accs = [mask_info(make_mask(SHAPE, spec("random", R, seed=s)))["sampled_fraction"] for s in range(40)]
    assert np.mean(accs) == pytest.approx(1 / R, rel=0.06)
    # gaussian hits N/R exactly, equispaced_fraction and poisson within a few percent
    assert mask_info(make_mask(SHAPE, spec("gaussian", R)))["acceleration"] == pytest.approx(R, rel=0.01)
    assert mask_info(make_mask(SHAPE, spec("equispaced_fraction", R)))["acceleration"] == pytest.approx(R, rel=0.08)
    assert mask_info(make_mask((48, 64), spec("poisson", R)))["acceleration"] == pytest.approx(R, rel=0.03)
    # equispaced: offset::R plus the centre, so below R but above R / 2 here
    eq = mask_info(make_mask(SHAPE, spec("equispaced", R)))["acceleration"]
    assert R / 2 < eq < R


def test_equispaced_offset_and_spacing():
    m = make_mask((4, 40), spec("equispaced", 4, cf=0.0, offset=1))[0]
    assert np.flatnonzero(m).tolist() == list(range(1, 40, 4))


def test_gaussian_density_falls_off():
    m = np.mean([make_mask((2, 200), spec("gaussian", 4, seed=s, cf=0.04))[0] for s in range(30)], axis=0)
    assert m[90:110].mean() > 2 * np.concatenate([m[:30], m[170:]]).mean()


def test_poisson_points_keep_their_distance():
    m = make_mask((48, 48), spec("poisson", 4, cf=0.0, seed=2, vd=0.0))
    ys, xs = np.nonzero(m)
    d = np.hypot(ys[:, None] - ys[None], xs[:, None] - xs[None]) + np.eye(len(ys)) * 99
    assert d.min() >= 1.0 and np.median(d.min(axis=1)) > 1.4


def test_explicit_masks_and_errors():
    assert resolve_mask((4, 6), None).all()
    cols = resolve_mask((4, 6), [1, 0, 1, 0, 1, 1])
    assert cols.shape == (4, 6) and cols[:, 1].sum() == 0
    with pytest.raises(InputError, match="0 and 1"):
        resolve_mask((2, 2), [[0, 2], [1, 1]])
    with pytest.raises(InputError, match="center_fraction"):
        make_mask((8, 8), spec("random", 8, cf=0.5))
    with pytest.raises(InputError, match="no option"):
        make_mask((8, 8), spec("random", 2, sigma=0.3))
    with pytest.raises(InputError, match="integer acceleration"):
        make_mask((8, 8), spec("equispaced", 2.5))
    rs, cs = calibration_region(make_mask((32, 32), spec("poisson", 4, calib=[8, 6])))
    assert rs.stop - rs.start >= 8 and cs.stop - cs.start >= 6


@pytest.mark.parametrize("R", [2, 3, 4, 6, 8])
def test_uniform_poisson_hits_the_acceleration_and_keeps_its_spacing(R):
    """vd = 0: the count jumps with the radius; the closest mask above the target is thinned."""
    m = make_mask((48, 48), spec("poisson", R, cf=0.0, seed=2, vd=0.0))
    assert m.size / m.sum() == pytest.approx(R, rel=0.01)
    ys, xs = np.nonzero(m)
    d = np.hypot(ys[:, None] - ys[None], xs[:, None] - xs[None]) + np.eye(len(ys)) * 99
    assert d.min() >= 1.0


@pytest.mark.parametrize("bad, match", [
    (dict(kind="poisson", acceleration=8, calib=[24, 24]), "calibration region"),
    (dict(kind="poisson", acceleration=4, vd=-1), "vd"),
    (dict(kind="poisson", acceleration=4, tol="0.1"), "tol"),
    (dict(kind="poisson", acceleration=4, calib=[8]), "calib"),
    (dict(kind="random", acceleration=4, seed=-1), "seed"),
    (dict(kind="random", acceleration=4, seed="3"), "seed"),
    (dict(kind="random", acceleration="4"), "acceleration"),
    (dict(kind="equispaced", acceleration=4, offset="1"), "offset"),
    (dict(kind="gaussian", acceleration=4, sigma="0.3"), "sigma"),
])
def test_bad_mask_options_are_one_sentence(bad, match):
    with pytest.raises(InputError, match=match) as e:
        make_mask((48, 48), bad)
    assert "\n" not in str(e.value)


def test_a_2d_calibration_is_measured_by_area():
    """R = 16 with a 5 x 5 calibration (0.6 % of the points) is a valid Poisson-disc mask
    (the 1D rule center_fraction x R <= 1 does not apply in 2D)."""
    m = make_mask((64, 64), spec("poisson", 16, cf=0.08, seed=0))
    assert m.size / m.sum() == pytest.approx(16, rel=0.03)
    with pytest.raises(InputError):
        make_mask((0, 8), spec("random", 2))
