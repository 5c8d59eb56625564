"""Uncertainty a reader can trust (issue 25): coverage of the draws' std, its calibration, the CLI.

The machinery is proven on a problem whose posterior is known in closed form: a Gaussian prior
(:mod:`medrecon.priors.gaussian`) and a random linear operator.  The sampler there is the exact
posterior sampler ``mean + L z`` (``L L^T`` the closed-form posterior covariance), not DDS or DPS:
both are biased on this problem by construction (tests/test_gaussian_posterior.py: their Tweedie
approximations move the mean in the null space of A), so their coverage is not nominal and would
not test the machinery.  The draws go through :class:`medrecon.uncertainty.DrawMoments`, the code
the engine summarises every run's draws with.

Monte Carlo error: pixels of one problem are correlated, so the tolerance counts independent
problems only: 3 * sqrt(p (1 - p) / P) for P problems.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import medrecon
from medrecon.errors import FileFormatError, InputError
from medrecon.priors.gaussian import GaussianPrior, gaussian_posterior, smooth_covariance
from medrecon.uncertainty import (
    DrawMoments,
    calibration_factor,
    draw_factor,
    expected_coverage,
    nominal,
    run_factor,
    select_calibration,
    uncertainty_report,
    validate_calibration,
)

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.usefixtures("one_torch_thread")]

DRIVER = Path(__file__).resolve().parent / "cli_driver.py"
H = W = 4
D, M, S = H * W, 8, 0.05
P = 400  # independent problems (truth, measurement) for the coverage tests


def _exact_draws(n: int, antithetic: bool, seed: int = 0):
    """P problems: truth x ~ prior, y = A x + noise, and ``n`` exact posterior draws of each,
    summarised by DrawMoments.  Returns (mean, std, truth), each (P, H, W)."""
    g = torch.Generator().manual_seed(seed)
    prior = GaussianPrior(torch.zeros(H, W), smooth_covariance(H, W, length=1.5, std=1.0, nugget=0.05))
    mat = torch.randn(M, D, generator=g, dtype=torch.float64) * (4 / math.sqrt(D))
    truth = prior.sample(P, g)  # (P, H, W)
    y = truth.reshape(P, D) @ mat.T + S * torch.randn(P, M, generator=g, dtype=torch.float64)
    _, cov = gaussian_posterior(prior, mat, y[0], S)  # the posterior covariance does not depend on y
    L = torch.linalg.cholesky(cov + 1e-12 * torch.eye(D, dtype=torch.float64))
    pm = torch.stack([gaussian_posterior(prior, mat, y[p], S)[0].reshape(D) for p in range(P)])
    mom = DrawMoments(antithetic=antithetic)
    for _ in range(n // 2 if antithetic else n):
        e = torch.randn(P, D, generator=g, dtype=torch.float64) @ L.T
        mom.add((pm + e).reshape(P, H, W).numpy())
        if antithetic:
            mom.add((pm - e).reshape(P, H, W).numpy())
    mean, std = mom.result()
    return mean, std, truth.numpy()


def _tol(p: float) -> float:
    return 3 * math.sqrt(p * (1 - p) / P)


def test_exact_posterior_draws_cover_the_truth_as_nominal():
    """Many exact draws: coverage at 1/2/3 std is 68.3/95.4/99.7 % within Monte Carlo error, before
    any calibration; a std halved (or doubled) is far outside it, so the check can fail."""
    mean, std, truth = _exact_draws(256, antithetic=False)
    rep = uncertainty_report(mean, std, truth, samples=256)
    for k in ("1", "2", "3"):
        p = nominal(float(k))
        assert abs(rep["overall"]["coverage"][k] - p) < _tol(p), (k, rep["overall"]["coverage"])
        assert abs(rep["expected_exact"][k] - p) < 0.005  # 256 draws: the finite-N effect is negligible
    assert abs(rep["overall"]["coverage"]["2"] - nominal(2)) < _tol(nominal(2))
    assert uncertainty_report(mean, std / 2, truth)["overall"]["coverage"]["2"] < 0.75
    assert uncertainty_report(mean, std * 2, truth)["overall"]["coverage"]["1"] > 0.9
    curve = rep["overall"]["curve"]
    assert curve["k"][0] == 0 and curve["k"][-1] == 3 and len(curve["k"]) == 31
    assert max(abs(o - n) for o, n in zip(curve["observed"], curve["nominal"], strict=True)) < 0.03
    assert abs(calibration_factor(mean, std, truth)["factor"] - 1) < 0.05


def test_few_antithetic_draws_follow_student_t_and_the_factor_corrects_them():
    """4 antithetic pairs of an exact (linear) sampler: the std has N/2 = 4 degrees of freedom, so
    the coverage is Student-t's (88.4 % at 2 std), not the Gaussian 95.4 %; the calibration factor
    measured there is draw_factor(8, antithetic) and brings it to nominal."""
    mean, std, truth = _exact_draws(8, antithetic=True, seed=1)
    rep = uncertainty_report(mean, std, truth, samples=8, antithetic=True)
    for k in ("1", "2", "3"):
        e = expected_coverage(float(k), 8, antithetic=True)
        assert abs(rep["overall"]["coverage"][k] - e) < _tol(e), (k, rep["overall"]["coverage"], e)
    assert rep["overall"]["coverage"]["2"] < nominal(2) - 0.04
    f = calibration_factor(mean, std, truth)
    assert abs(f["factor"] - draw_factor(8, antithetic=True)) < 0.12, f
    assert abs(f["coverage_calibrated"] - nominal(2)) < 0.002
    # independent draws: t with n - 1 degrees of freedom and the mean's own error
    mean, std, truth = _exact_draws(8, antithetic=False, seed=2)
    e = expected_coverage(2.0, 8)
    assert abs(uncertainty_report(mean, std, truth)["overall"]["coverage"]["2"] - e) < _tol(e)


def test_report_windows_correlation_and_bad_shapes():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 32, 32))
    std = np.exp(rng.normal(size=ref.shape))
    mean = ref + std * rng.normal(size=ref.shape)
    rep = uncertainty_report(mean, std, ref, window=(-1.0, 1.0))
    assert rep["overall"]["pixels"] == int(((ref >= -1) & (ref <= 1)).sum())
    assert len(rep["per_slice"]) == 2 and rep["overall"]["spearman"] > 0.3  # std points at the error
    assert rep["overall"]["pearson"] > 0.3
    flat = uncertainty_report(mean, np.ones_like(std), ref)
    assert flat["overall"]["pearson"] is None  # a constant std says nothing about where the error is
    none = uncertainty_report(mean, std, ref, window=(10.0, 11.0))
    assert none["overall"]["pixels"] == 0 and none["overall"]["coverage"]["2"] is None
    with pytest.raises(InputError, match="one shape"):
        uncertainty_report(mean, std[:1], ref)
    with pytest.raises(InputError, match="no pixel"):
        calibration_factor(mean, std, ref, window=(10.0, 11.0))
    with pytest.raises(InputError, match="at least two draws"):
        m = DrawMoments()
        m.add(ref)
        m.result()
    json.dumps(rep)  # JSON-able as it is


def test_stored_calibration_selection_and_validation():
    e8 = {"factor": 1.5, "prior_factor": 1.5 / draw_factor(8, True), "operator": "ct.parallel", "steps": 50,
          "samples": 8, "antithetic": True}
    cfg = {"uncertainty_calibration": {"dds": [e8, dict(e8, steps=200, factor=2.0)]}}
    assert select_calibration(cfg, "dds", "ct.parallel", 50)["factor"] == 1.5
    assert select_calibration(cfg, "dds", "ct.parallel", 180)["factor"] == 2.0
    assert select_calibration(cfg, "dds", "mri.sense", 50) is None
    assert select_calibration(cfg, "dps", "ct.parallel", 50) is None
    assert select_calibration({}, "dds", "ct.parallel", 50) is None
    assert run_factor(e8, 8, True) == 1.5
    # another number of draws: the finite-N part is exchanged, what belongs to the prior is kept
    assert run_factor(e8, 64, False) == pytest.approx(1.5 / draw_factor(8, True) * draw_factor(64, False))
    validate_calibration(cfg["uncertainty_calibration"])
    for bad in ([], {"dds": {}}, {"dds": [{"factor": -1, "operator": "x"}]}, {"dds": [{"factor": 1.0}]},
                {"dds": [{"factor": float("nan"), "operator": "x"}]}):
        with pytest.raises(FileFormatError, match="uncertainty_calibration"):
            validate_calibration(bad)


# ------------------------------------------------------------------------------- the engine applies it
N = 16


@pytest.fixture(scope="module")
def meas():
    from medrecon.testing import disk_phantom

    return medrecon.simulate(disk_phantom(2, N), "ct.parallel", {"n_views": 8, "pixel_size": 0.8}, noise_std=0.5,
                             seed=3)


def test_reconstruct_applies_the_stored_factor_and_records_it(meas):
    from medrecon.testing import smooth_gaussian_prior

    prior = smooth_gaussian_prior(N)
    prior.config = {"uncertainty_calibration": {"dds": [
        {"factor": 1.7, "prior_factor": 1.7 / draw_factor(2, True), "operator": "ct.parallel", "steps": 5,
         "samples": 2, "antithetic": True}]}}
    kw = dict(steps=5, samples=2, antithetic=True, progress=False)
    raw = medrecon.reconstruct(meas, "dds", prior, calibration=False, **kw)
    cal = medrecon.reconstruct(meas, "dds", prior, **kw)
    np.testing.assert_array_equal(cal.data, raw.data)  # the mean is untouched
    np.testing.assert_allclose(cal.components["std"].data, 1.7 * raw.components["std"].data, rtol=1e-6)
    rc, rr = cal.meta["reconstruction"]["uncertainty_calibration"], raw.meta["reconstruction"]["uncertainty_calibration"]
    assert rc["applied"] is True and rc["factor"] == 1.7 and rc["stored"]["steps"] == 5
    assert rr["applied"] is False
    four = medrecon.plan(meas, "dds", prior, steps=5, samples=4, antithetic=True, progress=False)
    assert four.uncertainty_calibration["factor"] == pytest.approx(1.7 * draw_factor(4, True) / draw_factor(2, True))
    assert medrecon.RunPlan.from_json(four.to_json()) == four
    one = medrecon.plan(meas, "dds", prior, steps=5, progress=False)
    assert one.uncertainty_calibration is None  # one draw: no std to calibrate
    # not part of the settings hash: checkpoints hold the raw spread
    off = medrecon.plan(meas, "dds", prior, steps=5, samples=4, antithetic=True, progress=False, calibration=False)
    assert off.settings_hash == four.settings_hash
    with pytest.raises(InputError, match="calibration must be true or false"):
        medrecon.plan(meas, "dds", prior, steps=5, samples=2, calibration="no", progress=False)


# ------------------------------------------------------------------------------- command line
def _run_cli(w: Path, cases: list[dict]) -> dict:
    (w / "cases.json").write_text(json.dumps([{"cwd": str(w), **c} for c in cases]))
    env = dict(os.environ, OMP_NUM_THREADS="1", MEDRECON_PROGRESS="0")
    proc = subprocess.run([sys.executable, str(DRIVER), str(w / "cases.json"), str(w / "results.json")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((w / "results.json").read_text())


def _one_sentence(r: dict, *words: str) -> None:
    assert r["rc"] == 2, r
    err = r["stderr"].strip()
    assert err.startswith("medrecon: error:") and "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def test_cli_calibrate_reconstruct_evaluate(tmp_path):
    """Calibrate a prior folder on one volume and check on another, reconstruct with the stored
    factor (and without), evaluate the std against the reference; bad inputs are one sentence (a
    reconstruction without a std component, a reference of another shape or place, no reference,
    one draw, an existing calibration, a shipped prior)."""
    from medrecon.engine.settings import prior_fingerprint
    from medrecon.priors.model import DiffusionPrior
    from medrecon.testing import disk_phantom, tiny_network_prior

    w = tmp_path
    tiny_network_prior(N).save(w / "prior")
    fp = prior_fingerprint(DiffusionPrior.load(w / "prior"))
    for name, seed in (("a", 0), ("b", 1)):
        medrecon.save_volume(disk_phantom(2, N, seed=seed), w / f"{name}.nii.gz")
    medrecon.save_volume(disk_phantom(2, N + 2), w / "other.nii.gz")
    moved = disk_phantom(2, N)
    moved.affine[:3, 3] += 50.0  # the same grid 5 cm away
    medrecon.save_volume(moved, w / "moved.nii.gz")
    medrecon.save_measurement(medrecon.simulate(disk_phantom(2, N), "ct.parallel", {"n_views": 8}, noise_std=0.01,
                                                relative=True), w / "m.h5")
    cal = ["calibrate-uncertainty", "prior", "--data", "a.nii.gz", "--check", "b.nii.gz", "--operator",
           "ct.parallel", "--param", "n_views=8", "--sampler", "dds", "--steps", "4", "--samples", "2",
           "--slices", "1", "--json", "cal.json"]
    rec = ["reconstruct", "m.h5", "--sampler", "dds", "--prior", "prior", "--steps", "4", "--samples", "2",
           "--antithetic", "-q"]
    res = _run_cli(w, [
        {"id": "cal", "argv": cal},
        {"id": "again", "argv": cal[:-2]},
        {"id": "one-draw", "argv": [*cal[:-2], "--samples", "1"]},
        {"id": "shipped", "argv": ["calibrate-uncertainty", "ct-default", "--data", "a.nii.gz", "--operator",
                                   "ct.parallel"]},
        {"id": "rec", "argv": [*rec, "-o", "r.nii.gz"]},
        {"id": "raw", "argv": [*rec, "-o", "raw.nii.gz", "--no-calibration"]},
        {"id": "eval", "argv": ["evaluate", "r.nii.gz", "--reference", "a.nii.gz", "--uncertainty",
                                "--json", "u.json", "--png", "u.png"]},
        {"id": "no-std", "argv": ["evaluate", "b.nii.gz", "--reference", "a.nii.gz", "--uncertainty"]},
        {"id": "shape", "argv": ["evaluate", "r.nii.gz", "--reference", "other.nii.gz", "--uncertainty"]},
        {"id": "moved", "argv": ["evaluate", "r.nii.gz", "--reference", "moved.nii.gz", "--uncertainty"]},
        {"id": "no-ref", "argv": ["evaluate", "r.nii.gz", "--uncertainty"]},
    ])
    assert res["cal"]["rc"] == 0, res["cal"]
    assert "dds: factor" in res["cal"]["stdout"] and "check set" in res["cal"]["stdout"]
    cfg = json.loads((w / "prior" / "config.json").read_text())
    (entry,) = cfg["uncertainty_calibration"]["dds"]
    assert entry["operator"] == "ct.parallel" and entry["steps"] == 4 and entry["samples"] == 2
    assert entry["measured_on"]["data"] == ["a.nii.gz"] and entry["checked_on"]["data"] == ["b.nii.gz"]
    assert json.loads((w / "cal.json").read_text())["dds"]["factor"] == entry["factor"]
    assert prior_fingerprint(DiffusionPrior.load(w / "prior")) == fp  # weights verify; the fingerprint holds
    _one_sentence(res["again"], "--overwrite-calibration")
    _one_sentence(res["one-draw"], "two draws")
    _one_sentence(res["shipped"], "prior folder")
    assert res["rec"]["rc"] == 0 and res["raw"]["rc"] == 0, (res["rec"], res["raw"])
    assert "calibration factor" in res["rec"]["stdout"]
    r, raw = medrecon.load_volume(w / "r.nii.gz"), medrecon.load_volume(w / "raw.nii.gz")
    assert r.meta["reconstruction"]["uncertainty_calibration"]["applied"] is True
    f = r.meta["reconstruction"]["uncertainty_calibration"]["factor"]
    assert f == pytest.approx(entry["factor"])
    np.testing.assert_allclose(medrecon.load_volume(w / "r.std.nii.gz").data,
                               f * medrecon.load_volume(w / "raw.std.nii.gz").data, rtol=1e-5, atol=1e-3)
    assert raw.meta["reconstruction"]["uncertainty_calibration"]["applied"] is False
    assert res["eval"]["rc"] == 0, res["eval"]
    assert "coverage at 1 / 2 / 3 std" in res["eval"]["stdout"]
    u = json.loads((w / "u.json").read_text())
    assert set(u["overall"]["coverage"]) == {"1", "2", "3"} and u["samples"] == 2
    assert u["uncertainty_calibration"]["applied"] is True
    assert (w / "u.png").read_bytes()[:4] == b"\x89PNG"
    _one_sentence(res["no-std"], "std component", "--samples")
    _one_sentence(res["shape"], "shape", "--resample-reference")
    _one_sentence(res["moved"], "placement in space", "--resample-reference")
    _one_sentence(res["no-ref"], "--reference")


@pytest.mark.parametrize("sampler", ["dds3d", "mbir3d"])
def test_volume_samplers_give_the_std_component_the_same_way(meas, sampler, tmp_path):
    """Item 3: a volume sampler draws the whole volume once per draw, on the streams a 2D sampler's
    draws use, and the std component is the same DrawMoments summary: draw 0 is the samples=1 run,
    and the mean and std of 2 draws are those of the two volumes."""
    from medrecon.testing import smooth_gaussian_prior

    prior = smooth_gaussian_prior(N)
    kw = dict(steps=4, progress=False, seed=1)
    one = medrecon.reconstruct(meas, sampler, prior, **kw).data
    two = medrecon.reconstruct(meas, sampler, prior, samples=2, output=tmp_path / "v.nii.gz", **kw)
    assert two.meta["reconstruction"]["samples"] == 2 and set(two.components) == {"std"}
    draw1 = 2 * two.data - one
    assert np.abs(draw1 - one).max() > 1.0  # a second, different draw
    np.testing.assert_allclose(two.components["std"].data, np.abs(draw1 - one) / np.sqrt(2), rtol=1e-4, atol=1e-2)
    assert (tmp_path / "v.std.nii.gz").exists()
    anti = medrecon.reconstruct(meas, sampler, prior, samples=2, antithetic=True, **kw)
    np.testing.assert_allclose(anti.components["std"].data, np.abs(2 * anti.data - 2 * one) / 2, rtol=1e-4,
                               atol=1e-2)  # antithetic: sqrt(M2 / N)
    with pytest.raises(InputError, match="deterministic"):
        medrecon.reconstruct(meas, "tv", None, params={"dims": 3}, samples=2, progress=False)


def test_a_bad_stored_calibration_is_refused_when_the_prior_loads(tmp_path):
    from medrecon.priors.model import DiffusionPrior
    from medrecon.testing import tiny_network_prior

    tiny_network_prior(N).save(tmp_path / "p")
    cfg_path = tmp_path / "p" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["uncertainty_calibration"] = {"dds": [{"factor": 0, "operator": "ct.parallel"}]}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(FileFormatError, match="uncertainty_calibration"):
        DiffusionPrior.load(tmp_path / "p")


def test_evaluate_uncertainty_api_on_volumes(meas, tmp_path):
    from medrecon.calibration import evaluate_uncertainty
    from medrecon.testing import disk_phantom, smooth_gaussian_prior

    vol = medrecon.reconstruct(meas, "dds", smooth_gaussian_prior(N), steps=4, samples=4, antithetic=True,
                               progress=False)
    ref = disk_phantom(2, N)
    ref.affine = vol.affine.copy()
    res = evaluate_uncertainty(vol, ref, json_path=tmp_path / "u.json")
    assert res["samples"] == 4 and res["antithetic"] is True
    assert res["expected_exact"]["2"] == pytest.approx(expected_coverage(2.0, 4, antithetic=True))
    assert res["window"] == [-1000.0, 1000.0] and res["uncertainty_calibration"] is None
    assert json.loads((tmp_path / "u.json").read_text())["overall"]["pixels"] == res["overall"]["pixels"]
    with pytest.raises(InputError, match="already exists"):
        evaluate_uncertainty(vol, ref, json_path=tmp_path / "u.json")
    plain = medrecon.Volume(vol.data, vol.affine, dict(vol.meta))
    with pytest.raises(InputError, match="no std component"):
        evaluate_uncertainty(plain, ref)
