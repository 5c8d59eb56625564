"""Prior fit (medrecon.priors.fit): determinism, the formula, separation, references, training records it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.priors import fit
from medrecon.priors.fit import (
    FIT_TIMESTEPS,
    FIT_WARN,
    FitScore,
    denoising_loss,
    fit_reference,
    fit_score,
    fit_timesteps,
)
from medrecon.testing import tiny_network_prior

S = 16


def _disks(n, s=S, seed=0):
    """Smooth CT-like slices: one disk of 0..400 HU at a random place and radius in air."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0.3 * s, 0.7 * s, 2)
        r = rng.uniform(0.15 * s, 0.35 * s)
        out.append(np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, rng.uniform(0, 400), -1000.0))
    return np.stack(out).astype(np.float32)


def _noise(n, s=S, seed=5):
    return np.random.default_rng(seed).uniform(-1000, 2000, (n, s, s)).astype(np.float32)


def _checkerboard(n, s=S):
    yy, xx = np.mgrid[:s, :s]
    return np.repeat(np.where((yy // 2 + xx // 2) % 2 == 0, 1000.0, -1000.0)[None], n, 0).astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CT prior trained for 40 steps on disks (about 6 s on one CPU thread), 20 validation slices."""
    from medrecon.priors.data import SliceStack, write_stack
    from medrecon.priors.train import train_prior

    tmp = tmp_path_factory.mktemp("fit")

    def stack(name, data):
        n = len(data)
        return write_stack(SliceStack(data, "ct", 2.0, np.full(n, -1000.0), np.full(n, 2000.0),
                                      {"intensity": {"kind": "window"}}), tmp / f"{name}.npy")

    val = _disks(20, seed=1)
    report = train_prior([stack("train", _disks(64, seed=0))], tmp / "prior", val_data=[stack("val", val)],
                         steps=40, batch_size=8, lr=2e-3, warmup=5, ema_decay=0.9, device="cpu", channels="tiny",
                         val_every=0, ckpt_every=0, n_samples=0, progress=False)
    return tmp / "prior", report, val


def test_timesteps_rule():
    assert fit_timesteps(1000) == FIT_TIMESTEPS
    assert fit_timesteps(500) == (150, 250, 350)
    assert fit_timesteps(2) == (1,)
    assert all(0 <= t < 7 for t in fit_timesteps(7))


def test_deterministic_and_batch_independent():
    prior = tiny_network_prior(S)
    x = _disks(5) + _noise(5) * 0.05
    a = denoising_loss(prior, x)
    assert a.shape == (5, len(FIT_TIMESTEPS)) and a.dtype == np.float64 and np.all(a > 0)
    np.testing.assert_array_equal(a, denoising_loss(prior, x))
    for batch in (1, 2, 5):
        np.testing.assert_allclose(denoising_loss(prior, x, batch=batch), a, rtol=1e-6)
    np.testing.assert_allclose(denoising_loss(prior, x[::-1].copy()), a[::-1], rtol=1e-6)  # order
    np.testing.assert_allclose(denoising_loss(prior, torch.from_numpy(x[2])), a[2:3], rtol=1e-6)  # one slice
    assert not np.allclose(denoising_loss(prior, x, seed=1), a)
    ref = fit_reference(prior, x)
    assert ref == fit_reference(prior, x) and ref["n_slices"] == 5 and ref["draws"] == 2 and ref["seed"] == 0
    np.testing.assert_allclose(ref["loss"], a.mean(0))
    json.dumps(ref)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_formula_in_epsilon_parameterisation(prediction):
    prior = tiny_network_prior(S, seed=3)
    prior.config["prediction"] = prediction
    x = torch.from_numpy(_disks(2, seed=4))
    t = 150
    with torch.no_grad():
        x0 = prior.to_net(x)
        e = torch.randn((S, S), generator=fit._noise_generator(0, 0, t))
        a = prior.alphas_cumprod[t].item()
        xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * e
        expect = ((prior.eps(xt[:, None], torch.full((2,), t))[:, 0] - e) ** 2).mean((1, 2))
    got = denoising_loss(prior, x, timesteps=[t], draws=1)
    np.testing.assert_allclose(got[:, 0], expect.numpy(), rtol=1e-5)


def test_exact_gaussian_prior_separates():
    """With the exact (closed-form) prior, its own samples score ~1 and white noise far higher."""
    from medrecon.priors.gaussian import GaussianPrior, smooth_covariance

    gp = GaussianPrior(torch.zeros(S, S), smooth_covariance(S, S, length=2.0, std=0.5))
    g = torch.Generator().manual_seed(0)
    gp.config = {"fit_reference": fit_reference(gp, gp.sample(16, g).float())}
    own = fit_score(gp, gp.sample(8, g).float())
    white = fit_score(gp, torch.randn(8, S, S, generator=g) * 0.5)
    assert own.reference == "config" and 0.8 < own.score < 1.25 and not own.warn
    assert white.score > 1.3 and white.warn


def test_training_records_fit_reference(trained):
    folder, report, _ = trained
    ref = json.loads((folder / "config.json").read_text())["fit_reference"]
    assert ref["timesteps"] == list(FIT_TIMESTEPS) and len(ref["loss"]) == len(FIT_TIMESTEPS)
    assert ref["n_slices"] == 16 and ref["draws"] == 2 and all(v > 0 for v in ref["loss"])  # 20 val slices, capped
    assert report["fit_reference"] == ref
    assert not list(folder.glob(".config.json.tmp*"))


def test_training_without_val_data_holds_back_slices(tmp_path):
    from medrecon.priors.data import SliceStack, write_stack
    from medrecon.priors.train import train_prior

    data = _disks(4)
    tr = write_stack(SliceStack(data, "ct", 2.0, np.full(4, -1000.0), np.full(4, 2000.0),
                                {"intensity": {"kind": "window"}}), tmp_path / "t.npy")
    train_prior([tr], tmp_path / "p", steps=1, batch_size=2, device="cpu", channels="tiny", n_samples=0,
                progress=False, val_every=0, ckpt_every=0)
    ref = json.loads((tmp_path / "p" / "config.json").read_text())["fit_reference"]
    assert ref["n_slices"] == 1 and ref["timesteps"] == list(FIT_TIMESTEPS)


def test_trained_prior_separates_familiar_from_unfamiliar(trained):
    from medrecon.priors.model import load_prior

    prior = load_prior(trained[0])
    val = fit_score(prior, trained[2])  # the validation slices (the reference used 16 of these 20)
    new = fit_score(prior, _disks(8, seed=2))
    noise, checker = fit_score(prior, _noise(8)), fit_score(prior, _checkerboard(4))
    assert val.reference == "config" and 0.8 < val.score < 1.25
    assert new.score < 1.3 and not new.warn
    for bad in (noise, checker):
        assert bad.score > 1.25 * new.score and bad.score > FIT_WARN
        assert min(bad.per_slice) > max(new.per_slice)
    d = noise.to_dict()
    assert json.loads(json.dumps(d))["score"] == noise.score and d["warn_above"] == FIT_WARN
    assert "approximate" not in noise.sentence() and noise.sentence().startswith(f"prior fit {noise.score:.2f} (")


def test_fallback_and_missing_reference(trained):
    from medrecon.priors.model import load_prior

    prior = load_prior(trained[0])
    x = _disks(3, seed=2)
    exact = fit_score(prior, x)
    other_t = fit_score(prior, x, timesteps=[100, 400])  # the stored reference is for other timesteps
    prior.config.pop("fit_reference")
    approx = fit_score(prior, x)
    for f in (other_t, approx):
        assert isinstance(f, FitScore) and f.reference == "final_val_loss (approximate)"
        assert "approximate" in f.sentence() and "approximate" in f.to_dict()["sentence"]
    assert approx.per_slice != exact.per_slice and approx.timesteps == list(FIT_TIMESTEPS)
    prior.config["training"].pop("final_val_loss")
    with pytest.raises(InputError, match="no fit_reference and no training.final_val_loss"):
        fit_score(prior, x)


def test_bad_inputs_and_unbound_mr():
    prior = tiny_network_prior(S)
    with pytest.raises(InputError, match="shaped"):
        denoising_loss(prior, np.zeros((1, 1, S, S), np.float32))
    bad = _disks(1)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        denoising_loss(prior, bad)
    with pytest.raises(InputError, match="timesteps"):
        denoising_loss(prior, _disks(1), timesteps=[1000])
    with pytest.raises(InputError, match="draws"):
        denoising_loss(prior, _disks(1), draws=0)
    mr = tiny_network_prior(S, modality="mr", pixel_size_mm=None)
    x = np.random.default_rng(0).uniform(0, 500, (2, S, S)).astype(np.float32)
    with pytest.raises(InputError, match="for_volume"):
        denoising_loss(mr, x)
    assert denoising_loss(mr.for_volume(x), x).shape == (2, len(FIT_TIMESTEPS))


def _measure(images):
    import medrecon

    vol = medrecon.Volume(images, np.diag([2.0, 2.0, 2.0, 1.0]), {"modality": "CT", "units": "HU"})
    return medrecon.simulate(vol, "ct.parallel", {"n_views": 32}, noise_std=0.002, relative=True)


def test_reconstruct_records_the_prior_fit_and_warns_on_unfamiliar_data(trained):
    """The engine scores the study (a quick TV reconstruction) before a diffusion run: recorded per
    slice in the output metadata; a study unlike the training data raises a PriorFitWarning."""
    import warnings

    import medrecon
    from medrecon.engine.prior_fit import PriorFitWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        own = medrecon.reconstruct(_measure(_disks(3, seed=7)), "dds", str(trained[0]), steps=3, progress=False)
    rec = own.meta["reconstruction"]["prior_fit"]
    assert set(rec["per_slice"]) == {"0", "1", "2"} and rec["reference"] == "config"
    assert rec["score"] < FIT_WARN and not rec["warned"]
    assert not [w for w in caught if issubclass(w.category, PriorFitWarning)]
    with pytest.warns(PriorFitWarning, match="unlike the data the prior was trained on"):
        bad = medrecon.reconstruct(_measure(_checkerboard(2)), "dds", str(trained[0]), steps=3, progress=False)
    assert bad.meta["reconstruction"]["prior_fit"]["warned"]
    assert bad.meta["reconstruction"]["prior_fit"]["score"] > rec["score"]
    # a prior-free sampler is not scored
    tv = medrecon.reconstruct(_measure(_disks(1)), "tv", progress=False)
    assert "prior_fit" not in tv.meta["reconstruction"]


def test_data_finer_than_the_prior_are_scored_at_the_priors_own_scale(trained):
    """Familiar anatomy on a grid twice as fine as the prior's (the engine runs the prior at its
    own scale, prior_scale "auto") scores like the same anatomy on the prior's grid, and the
    score is the base prior's on the TV image area-averaged onto that grid (the reference was
    measured on the prior's grid; on the fine grid a real T1 brain scored 10.4 instead of 1.36)."""
    import medrecon
    from medrecon.engine.prior_fit import score_batch
    from medrecon.priors.model import DiffusionPrior
    from medrecon.priors.rescaled import RescaledPrior
    from medrecon.samplers.tv import TV

    disks = _disks(2, seed=7)
    fine = np.repeat(np.repeat(disks, 2, axis=1), 2, axis=2)  # the same disks at 1 mm pixels
    vol = medrecon.Volume(fine, np.diag([1.0, 1.0, 2.0, 1.0]), {"modality": "CT", "units": "HU"})
    m = medrecon.simulate(vol, "ct.parallel", {"n_views": 64}, noise_std=0.002, relative=True)
    got = medrecon.reconstruct(m, "dds", str(trained[0]), steps=3, progress=False).meta["reconstruction"]
    assert got["prior_scale"]["factor"] == 2.0
    own = medrecon.reconstruct(_measure(disks), "dds", str(trained[0]), steps=3, progress=False)
    ref = own.meta["reconstruction"]["prior_fit"]["score"]
    assert got["prior_fit"]["score"] < FIT_WARN and abs(got["prior_fit"]["score"] - ref) < 0.5 * ref
    # the same number by hand
    base = DiffusionPrior.load(trained[0])
    y, op = torch.as_tensor(m.y), m.operator()
    record = {}
    score_batch(RescaledPrior(base, 2.0), y, op, [0, 1], record)
    tv = TV(lam_rel=TV.tunable[2], iters=100).sample(y, op)
    by_hand = fit_score(base, RescaledPrior(base, 2.0).to_own_scale(tv).numpy()).per_slice
    np.testing.assert_allclose([record["per_slice"]["0"], record["per_slice"]["1"]], by_hand, atol=1e-4)


def test_cli_reconstruct_warns_and_evaluate_reports_the_fit(trained, tmp_path):
    """Real CLI processes: a study unlike the prior's data prints the warning as one line, the
    output records the fit, and ``medrecon evaluate`` reports it."""
    import subprocess
    import sys

    import medrecon

    images = _checkerboard(2)
    m = _measure(images)
    medrecon.save_measurement(m, tmp_path / "m.h5")
    medrecon.save_volume(medrecon.Volume(images, np.diag([2.0, 2.0, 2.0, 1.0]), {"modality": "CT", "units": "HU"}),
                         tmp_path / "ref.nii.gz")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "medrecon.cli.main", *map(str, args)], capture_output=True,
                              text=True, timeout=300)

    p = cli("reconstruct", tmp_path / "m.h5", "--sampler", "dds", "--prior", trained[0], "--steps", 3,
            "-o", tmp_path / "r.nii.gz")
    assert p.returncode == 0, p.stderr
    assert "unlike the data the prior was trained on" in p.stderr and "Traceback" not in p.stderr
    p = cli("evaluate", tmp_path / "r.nii.gz", "--reference", tmp_path / "ref.nii.gz")
    assert p.returncode == 0, p.stderr
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("prior fit:")]
    assert line and float(line[0].split()[2]) > FIT_WARN


def test_the_warning_is_given_only_where_the_threshold_was_calibrated():
    """CT: calibrated on real series, warns above FIT_WARN; MR: recorded, not judged (it did not separate)."""
    import warnings

    from medrecon.engine.prior_fit import PriorFitWarning, summarise

    with pytest.warns(PriorFitWarning):
        ct = summarise({"modality": "ct", "reference": "config", "per_slice": {"0": 2.0, "1": 2.2}})
    assert ct["warned"] and ct["warn_above"] == FIT_WARN
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorFitWarning)
        mr = summarise({"modality": "mr", "reference": "config", "per_slice": {"0": 2.0}})
    assert not mr["warned"] and mr["warn_above"] is None and mr["score"] == 2.0
    assert summarise({"per_slice": {}}) is None
