"""``reconstruct(..., samples=N)``: the mean and standard deviation of N posterior draws per
slice.  Checked against the draws themselves (draw 0 is the ``samples=1`` result), against
the closed-form posterior of a Gaussian prior (the mean of draws is closer to the posterior
mean than one draw), for batch independence, outputs, resume settings, and one-sentence
errors (API and a real CLI process)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import medrecon
from medrecon.engine import reconstruct
from medrecon.errors import InputError
from medrecon.priors.gaussian import gaussian_posterior
from medrecon.testing import disk_phantom, smooth_gaussian_prior

Z, N = 3, 16

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def meas():
    return medrecon.simulate(disk_phantom(Z, N), "ct.parallel", {"n_views": 8, "pixel_size": 0.8}, noise_std=0.5,
                             seed=3)


@pytest.fixture(scope="module")
def gauss_prior():
    return smooth_gaussian_prior(N)


def run(m, prior, **kw):
    kw.setdefault("progress", False)
    return reconstruct(m, "dds", prior, steps=kw.pop("steps", 10), **kw)


def test_mean_and_std_are_those_of_the_draws(meas, gauss_prior):
    one = run(meas, gauss_prior).data  # draw 0
    two = run(meas, gauss_prior, samples=2)
    assert set(two.components) == {"std"} and two.meta["reconstruction"]["samples"] == 2
    draw1 = 2 * two.data - one
    assert np.abs(draw1 - one).max() > 1.0  # a second, different draw
    np.testing.assert_allclose(two.components["std"].data, np.abs(draw1 - one) / np.sqrt(2), rtol=1e-4, atol=1e-2)
    three = run(meas, gauss_prior, samples=3)
    np.testing.assert_allclose(3 * three.data - 2 * two.data, 3 * three.data - one - draw1, atol=1e-2)
    assert (three.components["std"].data >= 0).all()


@pytest.fixture(scope="module")
def posterior_mean(meas, gauss_prior):
    """The closed-form posterior mean of each slice under the Gaussian prior."""
    op = meas.operator().with_precision(True)
    basis = torch.eye(N * N, dtype=torch.float64).reshape(N * N, N, N)
    mat = op(basis).reshape(N * N, -1).T
    return np.stack([gaussian_posterior(gauss_prior, mat, torch.from_numpy(meas.y[k]).double(), meas.noise_std)[0]
                     .numpy() for k in range(Z)])


def test_antithetic_pairs_cancel_the_scatter(meas, gauss_prior, posterior_mean):
    """With a Gaussian prior DDS is nearly affine in its noise: the mean of an antithetic pair
    (draw 1 on the negated noise of draw 0) is almost free of the sampler's scatter, so it
    hardly depends on the seed, unlike the mean of two independent draws, and it lies closer
    to the posterior mean (what is left is the sampler's bias: 4.54e6 for seeds 0-5 within
    0.1 %, against 4.7e6-5.6e6 for independent pairs)."""
    pm = posterior_mean
    one = run(meas, gauss_prior, steps=20).data
    two = [run(meas, gauss_prior, steps=20, samples=2, seed=s) for s in (0, 1)]
    anti = [run(meas, gauss_prior, steps=20, samples=2, antithetic=True, seed=s) for s in (0, 1)]
    assert anti[0].meta["reconstruction"]["antithetic"] is True
    twin = 2 * anti[0].data - one  # draw 0 is the samples=1 draw; draw 1 is its antithetic twin
    assert np.abs(twin - (2 * two[0].data - one)).max() > 1.0  # not the independent draw 1
    spread_two = np.linalg.norm(two[0].data - two[1].data)
    spread_anti = np.linalg.norm(anti[0].data - anti[1].data)
    assert spread_anti < 0.05 * spread_two, (spread_anti, spread_two)  # measured 0.003
    e2, ea = (float(np.linalg.norm(x.data - pm) ** 2) for x in (two[0], anti[0]))
    assert ea < e2
    # the std of a pair (divisor N: its mean is nearly exact) estimates the posterior spread as
    # 8 independent draws do: sum std^2 ratio 0.94 / 1.13 / 0.98 for seeds 0 / 1 / 2
    v8 = float((run(meas, gauss_prior, steps=20, samples=8).components["std"].data.astype(float) ** 2).sum())
    va = float((anti[0].components["std"].data.astype(float) ** 2).sum())
    assert 0.7 < va / v8 < 1.4, (va, v8)
    with pytest.raises(InputError, match="even"):
        run(meas, gauss_prior, samples=3, antithetic=True)
    with pytest.raises(InputError, match="antithetic"):
        run(meas, gauss_prior, samples=2, antithetic="yes")


def test_the_mean_of_draws_is_closer_to_the_gaussian_posterior_mean(meas, gauss_prior, posterior_mean):
    """With a Gaussian prior the posterior mean is known.  A draw x_d = mu + b + v_d (mu the
    posterior mean, b the sampler's bias, v_d its scatter) has E||x_d - mu||^2 = ||b||^2 + V;
    the mean of K draws ||b||^2 + V / K.  So averaging 8 draws must remove about 7/8 of V,
    which the std map estimates (V ~ sum std^2; with few effective dimensions the ratio
    scatters: measured 1.16 here, 0.50-1.38 for seeds 1-5)."""
    pm = posterior_mean
    one = run(meas, gauss_prior, steps=20).data
    eight = run(meas, gauss_prior, steps=20, samples=8)
    e1, e8 = np.linalg.norm(one - pm) ** 2, np.linalg.norm(eight.data - pm) ** 2
    v = float((eight.components["std"].data.astype(np.float64) ** 2).sum())
    assert e8 < e1
    assert 0.3 < (e1 - e8) / (7 / 8 * v) < 3.0, (e1, e8, v)  # 0.50-1.38 over seeds 1-5


def test_batches_do_not_change_the_draws(meas, gauss_prior):
    a = run(meas, gauss_prior, samples=3, batch_size=1)
    b = run(meas, gauss_prior, samples=3, batch_size=3)
    np.testing.assert_allclose(a.data, b.data, atol=1e-3)
    np.testing.assert_allclose(a.components["std"].data, b.components["std"].data, atol=1e-3)


@pytest.fixture(scope="module")
def tiny_net_prior():
    from medrecon.priors.model import DiffusionPrior, default_config

    torch.manual_seed(0)
    return DiffusionPrior(default_config("ct", image_size=N, pixel_size_mm=0.8, preset="tiny"))


@pytest.mark.parametrize("sampler, params", [("dds", {}), ("dps", {"zeta": 1.0}), ("reddiff", {})])
def test_draws_side_by_side_are_the_draws_one_after_another(meas, tiny_net_prior, sampler, params):
    """``draw_batch``: a slice's draws share one sampler batch (the slices repeated, each copy
    on its draw's stream).  Groups of 3 + 1 and of 4 give the sequential result, antithetic
    pairs included, with a real network (convolutions, group norms) in the loop."""
    kw = dict(steps=4, samples=4, progress=False, batch_size=2, params=params)
    base = reconstruct(meas, sampler, tiny_net_prior, **kw)
    scale = float(np.abs(base.data).max())
    assert float(base.components["std"].data.max()) > 1e-3 * scale  # the draws differ
    for db in (3, 4):
        got = reconstruct(meas, sampler, tiny_net_prior, draw_batch=db, **kw)
        np.testing.assert_allclose(got.data, base.data, rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(got.components["std"].data, base.components["std"].data, rtol=0,
                                   atol=1e-4 * scale)
    anti = reconstruct(meas, sampler, tiny_net_prior, antithetic=True, **kw)
    got = reconstruct(meas, sampler, tiny_net_prior, antithetic=True, draw_batch=2, **kw)
    np.testing.assert_allclose(got.data, anti.data, rtol=0, atol=1e-4 * scale)
    assert np.abs(anti.data - base.data).max() > 1e-3 * scale  # antithetic draws are other draws


def test_bad_draw_batch_is_one_sentence(meas, gauss_prior):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="draw_batch") as exc:
            run(meas, gauss_prior, samples=2, draw_batch=bad)
        assert "\n" not in str(exc.value)


def test_std_is_written_next_to_the_output_and_resume_needs_the_same_samples(tmp_path, meas, gauss_prior):
    import nibabel as nib

    out = tmp_path / "dds.nii.gz"
    vol = run(meas, gauss_prior, samples=2, output=out)
    std_path = tmp_path / "dds.std.nii.gz"
    assert out.exists() and std_path.exists() and not (tmp_path / "dds.nii.gz.partial").exists()
    assert vol.meta["reconstruction"]["components"]["std"] == str(std_path)
    saved = np.asarray(nib.load(std_path).dataobj).transpose(2, 1, 0)
    np.testing.assert_allclose(saved, vol.components["std"].data, rtol=1e-5, atol=1e-4)
    out2 = tmp_path / "stopped.nii.gz"
    with pytest.raises(medrecon.engine.RunStopped):
        run(meas, gauss_prior, samples=2, output=out2, batch_size=1, _stop_after=1)
    with pytest.raises(InputError, match="settings"):
        run(meas, gauss_prior, samples=3, output=out2, batch_size=1, resume=True)
    done = run(meas, gauss_prior, samples=2, output=out2, batch_size=1, resume=True)
    np.testing.assert_allclose(done.data, vol.data, atol=1e-3)


@pytest.mark.parametrize("sampler, samples, match", [("tv", 2, "deterministic"), ("dds", 0, "samples"),
                                                     ("dds3d", 0, "samples")])  # volume samplers draw too (issue 25)
def test_bad_samples_are_one_sentence(meas, gauss_prior, sampler, samples, match):
    with pytest.raises(InputError, match=match) as exc:
        reconstruct(meas, sampler, gauss_prior, samples=samples, progress=False, steps=2)
    assert "\n" not in str(exc.value)


def test_cli_samples(tmp_path, meas):
    from medrecon.measurement import save_measurement
    from medrecon.priors.model import DiffusionPrior, default_config

    save_measurement(meas, tmp_path / "m.h5")
    torch.manual_seed(0)
    DiffusionPrior(default_config("ct", image_size=N, pixel_size_mm=0.8, preset="tiny")).save(tmp_path / "prior")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "medrecon.cli.main", "reconstruct", str(tmp_path / "m.h5"),
                               *map(str, args)], capture_output=True, text=True)

    p = cli("-s", "dds", "--prior", tmp_path / "prior", "--steps", 2, "--samples", 2, "--device", "cpu", "--quiet",
            "-o", tmp_path / "r.nii.gz", "--png", tmp_path / "r.png")
    assert p.returncode == 0, p.stderr
    assert "mean of 2 draws" in p.stdout and "standard deviation of the 2 draws" in p.stdout
    assert (tmp_path / "r.std.nii.gz").exists()
    assert "wrote figure" in p.stdout and "classical, reconstruction, std" in p.stdout
    from matplotlib.image import imread

    img = imread(tmp_path / "r.png")
    assert img.ndim == 3 and img.shape[1] > 2 * img.shape[0] and img[..., :3].std() > 0.05  # three panels
    p = cli("-s", "dds", "--prior", tmp_path / "prior", "--steps", 2, "--samples", 2, "--antithetic", "--device",
            "cpu", "--quiet", "-o", tmp_path / "a.nii.gz")
    assert p.returncode == 0 and "mean of 2 draws, antithetic pairs" in p.stdout, p.stderr
    p = cli("-s", "dds", "--prior", tmp_path / "prior", "--steps", 2, "--samples", 2, "--antithetic", "--device",
            "cpu", "--quiet", "--draw-batch", 2, "-o", tmp_path / "a2.nii.gz")
    assert p.returncode == 0, p.stderr
    import nibabel as nib

    a, a2 = (np.asarray(nib.load(tmp_path / f).dataobj) for f in ("a.nii.gz", "a2.nii.gz"))
    np.testing.assert_allclose(a2, a, rtol=0, atol=1e-4 * float(np.abs(a).max()))  # same draws, side by side
    p = cli("-s", "dds", "--prior", tmp_path / "prior", "--steps", 2, "--samples", 3, "--antithetic", "-o",
            tmp_path / "odd.nii.gz")
    assert p.returncode == 2 and "even" in p.stderr and "Traceback" not in p.stderr
    p = cli("-s", "classical", "-o", tmp_path / "c.nii.gz", "--png", tmp_path / "c.jpg")
    assert p.returncode == 2 and "--png" in p.stderr and not (tmp_path / "c.nii.gz").exists()
    p = cli("-s", "tv", "--samples", 2, "-o", tmp_path / "tv.nii.gz")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "deterministic" in p.stderr
