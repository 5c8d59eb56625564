"""The ``dehaze`` sampler against closed-form answers (no neural network), and its contract.

Priors are Gaussian on 4 x 4 images (exact eps, :class:`medrecon.priors.gaussian.GaussianPrior`):
tissue x ~ N(m_x, S_x) with short correlation (length 0.7 px, s.d. 1), haze h ~ N(m_h, S_h)
smooth and stronger (length 2.5 px, s.d. 1.5), and y = x + h + n with n ~ N(0, 0.05^2 I).
Stacking z = [x; h], y = [I I] z + n is a linear Gaussian problem whose posterior mean is
analytic (:func:`medrecon.priors.gaussian.gaussian_posterior` on the block-diagonal prior).

Tolerances, as for the single-prior samplers (tests/test_gaussian_posterior.py):

* the row space of [I I] is the sum x + h, fixed by the data: its error must be below 3 % of
  the distance the data moves the answer, ||prior mean - posterior mean|| (about 4 here);
* the null space is the difference x - h, which only the two priors can decide.  The
  projection of Tweedie estimates is biased there by construction (as DDS is in its null
  space: it never sees the priors' covariances), so the bound is relative to the two
  ingredients alone: the error must be below 0.6 times that of the prior-free
  pseudo-inverse [y/2; y/2] (2.58 here; it splits the sum evenly) AND below that of the
  priors' means (1.78; data ignored).  Measured: 1.31 at 50 steps (64 samples).  The
  Monte-Carlo error of a 64-sample mean in this 16-dimensional space is about
  0.4 sqrt(16 / 64) = 0.2.

A sampler that ignored the data, split the residual without the priors, or coupled slices
through batch-global quantities fails these bounds.
"""

from __future__ import annotations

import pytest
import torch
from medrecon_us.haze import TissueHaze

from medrecon.errors import InputError
from medrecon.priors.gaussian import GaussianPrior, gaussian_posterior, smooth_covariance
from medrecon.samplers import get_sampler, slice_generators

H = W = 4
D = H * W
S = 0.05

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(3)
    mx = torch.linspace(-1, 1, D, dtype=torch.float64).reshape(H, W) * 0.3
    mh = torch.full((H, W), 0.5, dtype=torch.float64)
    sx = smooth_covariance(H, W, length=0.7, std=1.0, nugget=0.05)
    sh = smooth_covariance(H, W, length=2.5, std=1.5, nugget=0.01)
    tissue, haze = GaussianPrior(mx, sx), GaussianPrior(mh, sh)
    joint = GaussianPrior(torch.cat([mx, mh]), torch.block_diag(sx, sh))  # z = [x; h] as an (8, 4) image
    mat = torch.cat([torch.eye(D), torch.eye(D)], 1).double()
    x, h = tissue.sample(1, g), haze.sample(1, g)
    y = x + h + S * torch.randn(1, H, W, generator=g, dtype=torch.float64)
    pm, _ = gaussian_posterior(joint, mat, y.reshape(-1), S)
    return tissue, haze, joint, y, pm.reshape(2, H, W)


def _dehaze(problem, k, steps=50, seed=0, **params):
    tissue, haze, _, y, _ = problem
    smp = get_sampler("dehaze", **params).with_haze_prior(haze)
    op = TissueHaze([H, W])
    return smp.sample(y.expand(k, H, W).clone(), op, tissue, steps=steps, generators=slice_generators(seed, k))


def _split(z, pm):
    """(error of the sum x + h, error of the difference x - h), each over sqrt(2) (orthonormal parts)."""
    e = z - pm
    return float((e[0] + e[1]).norm() / 2**0.5), float((e[0] - e[1]).norm() / 2**0.5)


def test_dehaze_matches_joint_posterior_mean(problem):
    tissue, haze, joint, y, pm = problem
    z = _dehaze(problem, 64)
    assert z.shape == (64, 2, H, W) and z.dtype == torch.float64
    scale = float((joint.mean.reshape(2, H, W) - pm).norm())
    sum_err, diff_err = _split(z.mean(0), pm)
    _, pinv_diff = _split(torch.stack([y[0] / 2, y[0] / 2]), pm)
    assert sum_err < 0.03 * scale, (sum_err, scale)
    prior_sum, prior_diff = _split(joint.mean.reshape(2, H, W), pm)
    assert diff_err < 0.6 * pinv_diff and diff_err < prior_diff, (diff_err, pinv_diff, prior_diff)
    # the bounds can fail: the prior mean (data ignored) violates the first by far, the even
    # split (priors ignored) the second by definition
    assert prior_sum > 0.3 * scale


def test_each_sample_is_data_consistent(problem):
    """With a large gamma every sample's tissue + haze reproduces y (to the noise level)."""
    _, _, _, y, _ = problem
    z = _dehaze(problem, 4, steps=20, gamma=1e6)
    assert float((z[:, 0] + z[:, 1] - y).abs().max()) < 1e-3


def test_results_do_not_depend_on_the_batch(problem):
    a = _dehaze(problem, 3, steps=10)
    b = _dehaze(problem, 1, steps=10)  # slice 0 alone: same generator as a[0]
    assert torch.allclose(a[:1], b, rtol=0, atol=1e-12)  # equal up to BLAS rounding of the batch
    assert float((a[1] - a[0]).abs().max()) > 1e-3  # slices do get their own noise


def test_dehaze_refuses_operators_without_tissue_and_haze(problem):
    tissue, haze, *_ = problem
    from medrecon.operators.matrix import MatrixOperator

    op = MatrixOperator(torch.eye(D, dtype=torch.float64), shape=[H, W])
    with pytest.raises(InputError, match="tissue, haze"):
        get_sampler("dehaze").with_haze_prior(haze).sample(torch.zeros(1, D, dtype=torch.float64), op, tissue)


def test_single_image_samplers_refuse_component_images(problem):
    tissue, *_ = problem
    with pytest.raises(InputError, match="components tissue, haze"):
        get_sampler("dds").sample(torch.zeros(1, H, W), TissueHaze([H, W]), tissue, steps=2)


def test_mulaw_priors_are_bound_per_slice():
    """A mu-law (us) prior without a bound scale is bound per slice: a slice's result does not
    depend on the other slices of its batch, even at very different RF amplitudes."""
    from medrecon.priors.model import DiffusionPrior, default_config

    torch.manual_seed(0)
    cfg = default_config("us", image_size=16, preset="tiny")
    tissue, haze = DiffusionPrior(cfg).eval(), DiffusionPrior(cfg).eval()
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 16, 16, generator=g)
    y[1] *= 1000.0
    op = TissueHaze([16, 16])
    smp = get_sampler("dehaze", gamma=1e8).with_haze_prior(haze)
    both = smp.sample(y, op, tissue, steps=3, generators=slice_generators(0, [0, 1]))
    alone = smp.sample(y[1:], op, tissue, steps=3, generators=slice_generators(0, [1]))
    assert torch.allclose(both[1], alone[0], rtol=1e-5, atol=1e-6 * float(y[1].abs().max()))
    assert torch.isfinite(both).all()
    # data consistency in physical units, at both amplitudes: the projection leaves
    # r / (1 + g (v_x + v_h)) = r / (1 + 2 g) of the residual, g = 5e7
    for b in range(2):
        r = (both[b, 0] + both[b, 1] - y[b]).norm() / y[b].norm()
        assert float(r) < 1e-4
