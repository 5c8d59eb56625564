"""Training data of the US priors (medrecon_us.simulate) and the ``us`` modality of medrecon.priors:
mu-law intensity map, slice stacks, and ``medrecon train-prior`` on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from medrecon_us import simulate as sim
from medrecon_us.intensity import mulaw, mulaw_inv

from medrecon.errors import InputError
from medrecon.priors.data import read_stack, write_stack
from medrecon.priors.model import DiffusionPrior, default_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_mulaw_is_an_exact_odd_increasing_bijection():
    v = np.concatenate([np.linspace(-5, 5, 1001), [0.0, 1e-6, -1e-6]])
    u = mulaw(v)
    assert np.allclose(mulaw_inv(u), v, rtol=1e-12, atol=1e-15)
    assert np.all(np.diff(mulaw(np.linspace(-5, 5, 1001))) > 0)
    assert np.allclose(mulaw(-v), -u) and mulaw(np.array([1.0]))[0] == pytest.approx(1.0)
    # companding expands small values: 1 % of full scale maps to 23 % of the network range
    assert mulaw(np.array([0.01]))[0] == pytest.approx(np.log1p(2.55) / np.log1p(255))
    t = torch.linspace(-3, 3, 101, dtype=torch.float64)
    assert torch.allclose(mulaw_inv(mulaw(t)), t, atol=1e-13)


def test_us_prior_intensity_map():
    p = DiffusionPrior(default_config("us", image_size=16, preset="tiny"))
    assert p.config["intensity"] == {"kind": "mulaw", "mu": 255.0, "p_scale": 99.9, "units": "arbitrary"}
    x = torch.randn(3, 16, 16, dtype=torch.float64) * 40
    with pytest.raises(InputError, match="US prior needs the data's intensity range"):
        p.to_net(x)
    b = p.for_volume(x.numpy())
    s = float(np.percentile(np.abs(x.numpy()), 99.9))
    assert b._lo == pytest.approx(-s) and b._hi == pytest.approx(s)
    u = b.to_net(x)
    assert torch.allclose(u, mulaw(x / s)) and torch.allclose(b.from_net(u), x, rtol=1e-10)
    assert float(u.abs().max()) < 1.2  # the scale keeps the data near [-1, 1]
    per_slice = p.with_intensity(torch.tensor([-1.0, -10.0, -100.0]), torch.tensor([1.0, 10.0, 100.0]))
    x32 = x.float()
    assert torch.allclose(per_slice.from_net(per_slice.to_net(x32)), x32, rtol=1e-4, atol=1e-5)


def test_tissue_and_haze_are_what_the_docstring_says():
    rng = np.random.default_rng(1)
    tissue, grids = sim.simulate_tissue(2, 64, rng)
    assert tissue.shape == (2, 64, 64) and np.isfinite(tissue).all()
    dz, dx = sim.image_grid()
    assert dz == pytest.approx(0.0385) and dx == pytest.approx(0.149)
    assert grids[0]["z_mm"][1] - grids[0]["z_mm"][0] == pytest.approx(63 * dz)

    def axial_peak_mhz(im):  # centre frequency of the depth spectrum, as a two-way time frequency
        spec = (np.abs(np.fft.rfft(im - im.mean(0), axis=0)) ** 2).mean(1)
        f = np.fft.rfftfreq(im.shape[0], d=2 * dz * 1e-3 / 1540.0)
        return float((spec * f).sum() / spec.sum()) / 1e6

    def lateral_corr(im):  # correlation of columns 10 px (1.5 mm) apart
        a, b = im[:, :-10].ravel(), im[:, 10:].ravel()
        return float(np.corrcoef(a, b)[0, 1])

    haze = sim.haze_image((64, 64), rng, lateral_mm=2.0, decay_mm=3.0)
    assert np.sqrt(np.mean(haze**2)) == pytest.approx(1.0)
    # both live in the pulse's band around 5 MHz ...
    assert 3.5 < axial_peak_mhz(tissue[0]) < 6.5 and 3.5 < axial_peak_mhz(haze) < 6.5
    # ... but haze is laterally smooth where speckle decorrelates beyond a resolution cell
    # (measured: haze 0.89, speckle 0.14 and 0.06)
    assert lateral_corr(haze) > 0.8 and abs(lateral_corr(tissue[0])) < 0.3
    # and it decays with depth: top quarter stronger than the bottom quarter
    assert np.mean(haze[:16] ** 2) > 4 * np.mean(haze[-16:] ** 2)


def test_training_stacks_roundtrip_and_train(tmp_path):
    """Stacks written by the simulator are read by medrecon.priors unchanged, and train-prior
    trains a ``us`` prior on them (a few steps; the shipped priors are trained the same way)."""
    from medrecon.priors.train import train_prior

    summary = sim.write_training_stacks(tmp_path / "data", n=3, size=32, seed=0, n_val=1)
    assert set(summary["files"]) == {"tissue", "haze", "tissue_val", "haze_val"}
    t, h = read_stack(tmp_path / "data" / "tissue.npy"), read_stack(tmp_path / "data" / "haze.npy")
    assert t.modality == h.modality == "us" and t.data.shape == (3, 32, 32)
    assert np.array_equal(t.lo, h.lo) and np.allclose(t.hi, -t.lo)  # one scale per pair: that of x + h
    s = np.array([np.percentile(np.abs(t.data[k] + h.data[k]), 99.9) for k in range(3)])
    assert np.allclose(t.hi, s, rtol=2e-3)  # (float16 storage)
    u = t.to_net()
    assert np.allclose(u, mulaw(t.data / t.hi[:, None, None]), atol=1e-5)
    side = json.loads((tmp_path / "data" / "tissue.json").read_text())
    assert side["intensity"]["kind"] == "mulaw" and len(side["intensity"]["lo"]) == 3
    again = write_stack(t, tmp_path / "copy.npy")
    assert np.allclose(read_stack(again).to_net(), u, atol=1e-6)

    report = train_prior([tmp_path / "data" / "tissue.npy"], tmp_path / "prior", channels="tiny", steps=3,
                         batch_size=2, patch=16, val_every=0, ckpt_every=0, n_samples=2, sample_steps=2,
                         device="cpu", progress=False)
    assert report["modality"] == "us" and report["steps"] == 3
    p = DiffusionPrior.load(tmp_path / "prior")
    assert p.modality == "us" and p.config["intensity"]["kind"] == "mulaw" and p.config["intensity"]["mu"] == 255.0


def test_bad_input():
    with pytest.raises(InputError, match="density"):
        sim.tissue_reflectivity((8, 8), np.random.default_rng(0), density=0)
    with pytest.raises(InputError, match="all zero"):
        sim.robust_scale(np.zeros((4, 4)))
    with pytest.raises(InputError, match="shaped"):
        sim.rf_stack(np.zeros((2, 4, 5)), None, 0.1)
