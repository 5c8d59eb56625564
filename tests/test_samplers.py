"""The sampler contract: registry, parameters, per-slice randomness, CG, TV pieces, complex data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medrecon.errors import InputError, PluginError
from medrecon.operators.linalg import cg, estimate_norm, vdot_per_slice
from medrecon.operators.matrix import MatrixOperator
from medrecon.priors.gaussian import GaussianPrior, smooth_covariance
from medrecon.samplers import get_sampler, sampler_from_spec, slice_generators
from medrecon.samplers.prior_ops import tweedie_clip
from medrecon.samplers.tv import TV, div_nd, grad_nd, tune_tv
from medrecon.streams import randn_per_slice

NAMES = ["classical", "tv", "dds", "dps", "reddiff"]
# few steps: these tests check the contract, not the quality
STEPS = {"classical": None, "tv": 30, "dds": 10, "dps": 12, "reddiff": 10}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    prior = GaussianPrior(torch.zeros(4, 4, dtype=torch.float64), smooth_covariance(4, 4))
    A = MatrixOperator(torch.randn(10, 16, generator=g, dtype=torch.float64), shape=[4, 4]).with_precision(True)
    x = prior.sample(3, g)
    y = A(x) + 0.05 * torch.randn(3, 10, generator=g, dtype=torch.float64)
    return prior, A, y


@pytest.mark.parametrize("name", NAMES)
def test_registry_and_spec_roundtrip(name):
    s = get_sampler(name)
    spec = json.loads(json.dumps(s.spec()))
    assert spec["name"] == name
    assert sampler_from_spec(spec).spec() == spec
    assert isinstance(s.per_slice, bool) and isinstance(s.needs_prior, bool)


def test_unknown_sampler_and_bad_params_are_one_sentence():
    with pytest.raises(PluginError):
        get_sampler("nope")
    with pytest.raises(InputError, match="no parameter 'etta'"):
        get_sampler("dds", etta=0.5)
    with pytest.raises(InputError, match="'eta' must be <= 1"):
        get_sampler("dds", eta=1.5)
    with pytest.raises(InputError, match="'lr' must be > 0"):
        get_sampler("reddiff", lr=0)
    with pytest.raises(InputError, match="must be a number"):
        get_sampler("dps", zeta="big")
    with pytest.raises(InputError, match="must be one of"):
        get_sampler("reddiff", weight="cubic")
    for exc in (InputError,):
        with pytest.raises(exc) as info:
            get_sampler("tv", dims=4)
        assert "\n" not in str(info.value)


def test_params_are_stored_json_able_and_typed():
    s = get_sampler("dds", eta="0.5", cg_iters=3.0, noiseless="true")
    assert s.spec()["params"]["eta"] == 0.5 and s.cg_iters == 3 and s.noiseless is True
    assert get_sampler("tv", dims=3).per_slice is False
    assert get_sampler("tv").per_slice is True


def test_tweedie_clip_auto_follows_the_priors_intensity_map(setup):
    """dps clip="auto" (its default; dds accepts it too): 1 for a CT window or an intensity-free
    prior (the official clamp to the data range), off for an MR percentile map, whose training
    images reach beyond 1."""
    from medrecon.priors.model import DiffusionPrior, default_config

    ct = DiffusionPrior(default_config("ct", image_size=16, pixel_size_mm=0.8, preset="tiny"))
    mr = DiffusionPrior(default_config("mr", image_size=16, pixel_size_mm=0.8, preset="tiny"))
    assert tweedie_clip(ct, "auto") == 1.0 and tweedie_clip(mr, "auto") is None
    assert tweedie_clip(setup[0], "auto") == 1.0  # a Gaussian prior: no intensity map
    assert tweedie_clip(mr, 2.0) == 2.0 and tweedie_clip(ct, None) is None
    assert get_sampler("dps").spec()["params"]["clip"] == "auto"
    assert get_sampler("dps", clip=" AUTO ").spec()["params"]["clip"] == "auto"
    assert get_sampler("dds", clip="auto").spec()["params"]["clip"] == "auto"
    assert get_sampler("dds").spec()["params"]["clip"] is None
    for bad in ("sometimes", 0, -1):
        with pytest.raises(InputError, match="clip"):
            get_sampler("dps", clip=bad)


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_slices_one_at_a_time(name, setup):
    """Slice b's result depends only on y_b and generators[b], not on the batch."""
    prior, A, y = setup
    s = get_sampler(name)
    gens = slice_generators(7, range(3))
    xb = s.sample(y, A, prior, steps=STEPS[name], generators=gens)
    assert xb.shape == (3, 4, 4)
    for i in range(3):
        xi = s.sample(y[i : i + 1], A, prior, steps=STEPS[name], generators=slice_generators(7, [i]))
        assert torch.allclose(xb[i : i + 1], xi, rtol=1e-9, atol=1e-9), (name, i)


@pytest.mark.parametrize("name", ["dds", "dps", "reddiff"])
def test_same_seed_same_result_other_seed_differs(name, setup):
    prior, A, y = setup
    s = get_sampler(name)
    a = s.sample(y, A, prior, steps=STEPS[name], generators=slice_generators(1, 3))
    b = s.sample(y, A, prior, steps=STEPS[name], generators=slice_generators(1, 3))
    c = s.sample(y, A, prior, steps=STEPS[name], generators=slice_generators(2, 3))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_slice_generators_depend_on_seed_and_index_only():
    a = slice_generators(5, [0, 1, 2])
    b = slice_generators(5, [2])
    assert torch.equal(torch.randn(4, generator=a[2]), torch.randn(4, generator=b[0]))
    z = randn_per_slice(slice_generators(5, [0, 1]), (3,), dtype=torch.complex64)
    assert z.shape == (2, 3) and z.dtype == torch.complex64


@pytest.mark.parametrize("name", ["tv", "dds", "dps", "reddiff"])
def test_progress_is_reported(name, setup):
    prior, A, y = setup
    calls = []
    get_sampler(name).sample(y, A, prior, steps=STEPS[name], generators=slice_generators(0, 3),
                             progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] == STEPS[name]
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:], strict=False))


def test_input_errors(setup):
    prior, A, y = setup
    dds = get_sampler("dds")
    with pytest.raises(InputError, match="needs a diffusion prior"):
        dds.sample(y, A)
    with pytest.raises(InputError, match="one generator per slice"):
        dds.sample(y, A, prior, generators=slice_generators(0, 2))
    with pytest.raises(InputError, match="shaped"):
        dds.sample(y[:, :5], A, prior)
    bad = y.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        dds.sample(bad, A, prior)
    with pytest.raises(InputError, match="x_init"):
        get_sampler("reddiff").sample(y, A, prior, x_init=torch.zeros(3, 16))


def test_x_init_is_used(setup):
    prior, A, y = setup
    x0 = torch.full((3, 4, 4), 0.3, dtype=torch.float64)
    a = get_sampler("reddiff", lr=1e-9).sample(y, A, prior, steps=2, generators=slice_generators(0, 3),
                                                x_init=x0)
    assert torch.allclose(a, x0, atol=1e-6)


def test_cg_hermitian_complex_per_slice():
    """CG with Hermitian inner products solves complex HPD systems slice by slice."""
    g = torch.Generator().manual_seed(3)
    n = 12
    mats = []
    for _ in range(2):
        q = torch.randn(n, n, generator=g, dtype=torch.complex128)
        mats.append(q.conj().T @ q + 0.5 * torch.eye(n, dtype=torch.complex128))
    mats = torch.stack(mats)
    b = torch.randn(2, n, generator=g, dtype=torch.complex128)
    x = cg(lambda v: torch.einsum("bij,bj->bi", mats, v), b, torch.zeros_like(b), iters=200)
    assert torch.allclose(x, torch.linalg.solve(mats, b), atol=1e-8)
    # the first slice's solve does not depend on the second's presence
    x1 = cg(lambda v: torch.einsum("bij,bj->bi", mats[:1], v), b[:1], torch.zeros_like(b[:1]), iters=7)
    x2 = cg(lambda v: torch.einsum("bij,bj->bi", mats, v), b, torch.zeros_like(b), iters=7)
    assert torch.allclose(x1, x2[:1], atol=1e-12)
    assert vdot_per_slice(b, b).real.allclose((b.abs() ** 2).sum(1))


def test_estimate_norm_matches_svd():
    m = torch.randn(7, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op = MatrixOperator(m, shape=[3, 3]).with_precision(True)
    assert math.isclose(estimate_norm(op, iters=200), float(torch.linalg.matrix_norm(m, 2)), rel_tol=1e-4)


def test_tv_gradient_and_divergence_are_adjoint():
    g = torch.Generator().manual_seed(0)
    for axes in ([-2, -1], [0, -2, -1]):
        x = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
        q = torch.randn(len(axes), 3, 5, 6, generator=g, dtype=torch.float64)
        assert math.isclose(float((grad_nd(x, axes) * q).sum()), -float((x * div_nd(q, axes)).sum()),
                            rel_tol=1e-12)


def test_tv_without_regularisation_solves_least_squares():
    g = torch.Generator().manual_seed(2)
    m = torch.randn(30, 16, generator=g, dtype=torch.float64)
    op = MatrixOperator(m, shape=[4, 4]).with_precision(True)
    x = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    y = op(x)
    xr = TV(lam=0.0).sample(y, op, steps=3000)
    assert torch.allclose(xr, x, atol=1e-4)


def test_tv_denoises_piecewise_constant_and_bounds():
    """Identity operator: TV removes noise from a piecewise-constant image; lower bound holds."""
    op = MatrixOperator(torch.eye(64, dtype=torch.float64), shape=[8, 8]).with_precision(True)
    x = torch.zeros(1, 8, 8, dtype=torch.float64)
    x[:, 2:6, 2:6] = 1.0
    y = (x + 0.2 * torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64)).reshape(1, 64)
    err_noisy = float((y.reshape(1, 8, 8) - x).norm())
    lam, xr, table = tune_tv(y, op, x, [0.03, 0.1, 0.3], iters=400, nonneg=True)
    assert len(table) == 3 and lam in (0.03, 0.1, 0.3)
    assert float((xr - x).norm()) < 0.7 * err_noisy  # measured 0.61 (lam 0.1)
    assert float(xr.min()) >= 0.0


def test_tv_matches_skimage_chambolle_objective():
    """Identity operator: our PDHG and skimage's Chambolle ROF reach the same objective."""
    import numpy as np
    from skimage.restoration import denoise_tv_chambolle

    op = MatrixOperator(torch.eye(64, dtype=torch.float64), shape=[8, 8]).with_precision(True)
    y = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = TV(lam=0.1, iters=2000).sample(y.reshape(1, 64), op)[0].numpy()
    ref = denoise_tv_chambolle(y[0].numpy(), weight=0.1, eps=1e-12, max_num_iter=20000)

    def objective(u):
        gx = np.diff(u, axis=0, append=u[-1:])
        gy = np.diff(u, axis=1, append=u[:, -1:])
        return 0.5 * ((u - y[0].numpy()) ** 2).sum() + 0.1 * np.sqrt(gx**2 + gy**2).sum()

    assert objective(ours) <= objective(ref) * (1 + 1e-3)
    assert np.abs(ours - ref).max() < 0.05


def test_tv_dims3_couples_slices_and_complex_domain():
    g = torch.Generator().manual_seed(4)
    m = torch.randn(10, 16, generator=g, dtype=torch.complex128)
    op = MatrixOperator(m, shape=[4, 4]).with_precision(True)
    x = torch.randn(3, 4, 4, generator=g, dtype=torch.complex128)
    y = op(x)
    x2 = TV(lam=0.01).sample(y, op, steps=50)
    assert x2.dtype == torch.complex128 and x2.shape == (3, 4, 4)
    x3 = TV(lam=0.01, dims=3).sample(y, op, steps=50)
    x3a = TV(lam=0.01, dims=3).sample(y[:2], op, steps=50)
    assert not torch.allclose(x3[:2], x3a)  # slices are coupled along the batch axis
    with pytest.raises(InputError, match="complex"):
        TV(nonneg=True).sample(y, op, steps=2)


@pytest.mark.parametrize("name", ["dds", "dps", "reddiff"])
def test_real_prior_with_complex_operator(name):
    """A real prior meets a complex operator: the image stays real (imaginary part zero)."""
    g = torch.Generator().manual_seed(5)
    prior = GaussianPrior(torch.zeros(4, 4, dtype=torch.float64), smooth_covariance(4, 4))
    m = torch.randn(10, 16, generator=g, dtype=torch.complex128)
    op = MatrixOperator(m, shape=[4, 4]).with_precision(True)
    x = prior.sample(2, g)
    y = op(x.to(torch.complex128))
    xr = get_sampler(name).sample(y, op, prior, steps=20, generators=slice_generators(0, 2))
    assert xr.dtype == torch.complex128 and float(xr.imag.abs().max()) == 0.0
    assert torch.isfinite(xr.real).all()


@pytest.mark.parametrize("name", ["dds", "dps", "reddiff"])
def test_with_untrained_diffusion_prior_and_per_slice_intensity(name):
    """The real DiffusionPrior (tiny, untrained): channel axis, float32, gradient through the
    network (DPS), and an MR intensity map bound per slice ((B,) lo/hi) all work."""
    pytest.importorskip("monai")
    from medrecon.priors.model import DiffusionPrior, default_config

    torch.manual_seed(0)
    prior = DiffusionPrior(default_config("mr", image_size=16, preset="tiny")).eval()
    A = MatrixOperator(torch.randn(100, 256, generator=torch.Generator().manual_seed(0)), shape=[16, 16])
    y = A(torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1)))
    both = prior.with_intensity(torch.tensor([0.0, 10.0]), torch.tensor([1.0, 30.0]))
    x = get_sampler(name).sample(y, A, both, steps=4, generators=slice_generators(0, 2))
    assert x.shape == (2, 16, 16) and x.dtype == torch.float32 and torch.isfinite(x).all()
    second = prior.with_intensity(torch.tensor([10.0]), torch.tensor([30.0]))
    x1 = get_sampler(name).sample(y[1:], A, second, steps=4, generators=slice_generators(0, [1]))
    # float32 batched BLAS rounding only (values ~ 10..30)
    assert torch.allclose(x[1:], x1, rtol=1e-3, atol=1e-3)


def test_dds_started_from_tv_runs_only_the_steps_below_t_start(setup):
    """init=tv: DDS starts from the TV reconstruction re-noised to t_start x T and runs only the DDIM
    steps below it; t_start -> 0 returns (nearly) the TV solution refined by the data step."""
    prior, A, y = setup
    calls = []

    class Counting(type(prior)):
        def eps(self, x, t):
            calls.append(int(t[0]))
            return super().eps(x, t)

    counted = Counting.__new__(Counting)
    counted.__dict__.update(prior.__dict__)
    gens = slice_generators(0, 3)
    s = get_sampler("dds", init="tv", t_start=0.3)
    out = s.sample(y, A, counted, steps=20, generators=gens)
    T = int(prior.num_timesteps)
    assert calls and max(calls) <= 0.3 * (T - 1) and len(calls) < 20
    assert torch.isfinite(out).all() and out.shape == (3, 4, 4)
    full = get_sampler("dds").sample(y, A, prior, steps=20, generators=slice_generators(0, 3))
    assert not torch.allclose(out, full)
    with pytest.raises(InputError):
        get_sampler("dds", init="fbp")
    with pytest.raises(InputError):
        get_sampler("dds", init="tv", t_start=0.0)


def test_tv_solver_proximal_step_solves_its_quadratic_when_lam_is_zero():
    """TVSolver with ``prox``: without TV, min 1/(2 gamma)||x - x_p||^2 + 1/(2 L^2)||A x - y||^2 has the
    closed form (I / gamma + A^T A / L^2)^-1 (x_p / gamma + A^T y / L^2); PDHG must reach it, and its
    duals carry over between calls (two runs of 1500 = one of 3000)."""
    from medrecon.samplers.tv import TVSolver

    g = torch.Generator().manual_seed(3)
    Mat = torch.randn(40, 64, generator=g, dtype=torch.float64)
    A = MatrixOperator(Mat, shape=[8, 8]).with_precision(True)
    y = A(torch.rand(2, 8, 8, generator=g, dtype=torch.float64))
    xp = torch.rand(2, 8, 8, generator=g, dtype=torch.float64)
    gamma, lam, rng = 3.0, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    s = TVSolver(A, y, lam, rng, [-2, -1], ratio=1.0)
    M = torch.eye(64, dtype=torch.float64) / gamma + Mat.T @ Mat / s.L**2
    rhs = xp.reshape(2, 64) / gamma + (Mat.T @ y.reshape(2, 40).T).T / s.L**2
    exact = torch.linalg.solve(M, rhs.T).T.reshape(2, 8, 8)
    once = TVSolver(A, y, lam, rng, [-2, -1], ratio=1.0).run(xp.clone(), 3000, prox=xp, gamma=gamma)
    x = s.run(xp.clone(), 1500, prox=xp, gamma=gamma)
    x = s.run(x, 1500, prox=xp, gamma=gamma)
    assert torch.allclose(once, exact, atol=1e-6), float((once - exact).abs().max())
    assert torch.allclose(x, exact, atol=1e-6)
    far = TVSolver(A, y, lam, rng, [-2, -1], ratio=1.0).run(xp.clone(), 3000, prox=xp, gamma=1e-6)
    assert torch.allclose(far, xp, atol=1e-4)  # gamma -> 0: the proximal point itself


def test_dds_with_a_tv_term_records_its_weight_and_changes_the_data_step(setup):
    """dds tv > 0: the data step is TVSolver's proximal step with tv x the tv sampler's weight (here the
    fallback lam_rel x range: a MatrixOperator cannot hold out data); the weight is recorded."""
    from medrecon.samplers.autotune import pop_last_tuning
    from medrecon.samplers.tv import robust_range

    prior, A, y = setup
    plain = get_sampler("dds").sample(y, A, prior, steps=10, generators=slice_generators(0, 3))
    pop_last_tuning()
    out = get_sampler("dds", tv=0.5).sample(y, A, prior, steps=10, generators=slice_generators(0, 3))
    rec = pop_last_tuning()
    assert rec["param"] == "dds tv lam" and rec["tv"] == 0.5 and "fallback" in rec["method"]
    expect = 0.5 * TV.tunable[2] * robust_range(A.classical(y))
    assert torch.allclose(torch.tensor(rec["values"], dtype=torch.float64), expect, rtol=1e-6)
    assert torch.isfinite(out).all() and out.shape == plain.shape and not torch.allclose(out, plain)
    with pytest.raises(InputError):
        get_sampler("dds", tv=-1.0)


def test_dds_tv_chooses_its_weight_once_per_operator_and_measurement(setup, monkeypatch):
    """Several draws (--samples N) call DDS N times on one batch: the TV weight search runs once, the
    draws differ only by their noise, and another measurement or operator searches again."""
    import copy

    from medrecon.samplers import tv as tv_module

    prior, A, y = setup
    A = copy.deepcopy(A)  # an operator no other test has used
    calls = []
    real = tv_module.tv_weights

    def counting(yy, op, **kw):
        calls.append(op)
        return real(yy, op, **kw)

    monkeypatch.setattr(tv_module, "tv_weights", counting)
    s = get_sampler("dds", tv=0.5)
    a = s.sample(y, A, prior, steps=5, generators=slice_generators(0, 3))
    b = s.sample(y, A, prior, steps=5, generators=slice_generators(0, 3))
    assert len(calls) == 1 and torch.equal(a, b)  # the second draw reused the weight, same result
    s.sample(y, A, prior, steps=5, generators=slice_generators(0, 3, 1))
    assert len(calls) == 1
    s.sample(y * 1.01, A, prior, steps=5, generators=slice_generators(0, 3))
    s.sample(y, copy.deepcopy(A), prior, steps=5, generators=slice_generators(0, 3))
    assert len(calls) == 3


def test_tv_value_gradient_is_minus_div_of_the_normalised_gradient():
    """tv_value is the TV TVSolver minimises: its gradient is -div(grad x / |grad x|_eps)."""
    from medrecon.samplers.tv import div_nd, grad_nd, tv_value

    x = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    eps = torch.tensor([0.1, 0.3], dtype=torch.float64)
    (got,) = torch.autograd.grad(tv_value(x, [-2, -1], eps).sum(), x)
    g = grad_nd(x.detach(), [-2, -1])
    mag = torch.sqrt((g**2).sum(0) + eps.view(-1, 1, 1) ** 2)
    assert torch.allclose(got, -div_nd(g / mag, [-2, -1]), atol=1e-12)
    flat = torch.full((1, 4, 4), 7.0)
    assert float(tv_value(flat, [-2, -1])) == 0.0 and float(tv_value(flat, [-2, -1], 0.5)) == 8.0


def test_dps_with_a_tv_term_records_its_weight_and_lowers_the_tv_of_the_result(setup):
    """dps tv > 0 follows the gradient of 1/2 ||r||^2 + tv lam L^2 TV (normalised by ||r||): the
    weight is the tv sampler's (recorded), tv = 0 is unchanged, and a large tv flattens the image."""
    from medrecon.samplers.autotune import pop_last_tuning
    from medrecon.samplers.tv import tv_value

    prior, A, y = setup
    kw = dict(steps=20, generators=None)
    plain = get_sampler("dps", zeta=0.5).sample(y, A, prior, **dict(kw, generators=slice_generators(0, 3)))
    again = get_sampler("dps", zeta=0.5, tv=0.0).sample(y, A, prior, **dict(kw, generators=slice_generators(0, 3)))
    assert torch.equal(plain, again)
    pop_last_tuning()
    out = get_sampler("dps", zeta=0.5, tv=200.0).sample(y, A, prior, **dict(kw, generators=slice_generators(0, 3)))
    rec = pop_last_tuning()
    assert rec["param"] == "dps tv lam" and rec["tv"] == 200.0
    assert torch.isfinite(out).all() and out.shape == plain.shape
    assert (tv_value(out, [-2, -1]) < tv_value(plain, [-2, -1])).all()
