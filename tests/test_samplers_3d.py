"""Volume samplers ``mbir3d`` and ``dds3d`` and their shared ADMM-TV_z step (small and fast)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.operators.matrix import MatrixOperator
from medrecon.priors.gaussian import GaussianPrior, smooth_covariance
from medrecon.samplers import get_sampler, slice_generators
from medrecon.samplers.admm_tvz import ADMMTVz, check_slice_geometry, dz, dzt, shrink

N, Z = 12, 6


pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.usefixtures("one_torch_thread")]


def _phantom():
    """Piecewise constant in z: slices 0-2 one image, slices 3-5 another (one jump)."""
    yy, xx = torch.meshgrid(torch.arange(N, dtype=torch.float64), torch.arange(N, dtype=torch.float64),
                            indexing="ij")
    disk = (((yy - N / 2) ** 2 + (xx - N / 2) ** 2) < (N / 3) ** 2).double()
    box = ((yy > 2) & (yy < 7) & (xx > 3) & (xx < 9)).double()
    p1, p2 = disk - 0.5 * box, disk + 0.4 * box
    return torch.stack([p1, p1, p1, p2, p2, p2]).float()


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(40, N * N, generator=gen, dtype=torch.float64) / N  # 40 of 144: under-determined
    A = MatrixOperator(M.float(), shape=[N, N])
    x = _phantom()
    y0 = A(x)
    y = y0 + 0.01 * y0.std() * torch.randn(y0.shape, generator=gen)
    prior = GaussianPrior(torch.zeros(N, N), smooth_covariance(N, N, length=2.0, std=0.7))
    return A, x, y, prior


# ------------------------------------------------------------------ D_z, shrink, geometry
def test_dz_adjoint_and_shrink():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(5, 3, 4, generator=g), torch.randn(4, 3, 4, generator=g)
    assert torch.allclose((dz(x) * v).sum(), (x * dzt(v)).sum(), atol=1e-5)
    x3, v3 = torch.randn(1, 5, 3, generator=g), torch.randn(1, 4, 3, generator=g)  # a 3D operator's (1, Z, ...)
    assert torch.allclose((dz(x3, 1) * v3).sum(), (x3 * dzt(v3, 1)).sum(), atol=1e-5)
    assert torch.equal(shrink(torch.tensor([-3.0, -0.5, 0.5, 2.0]), 1.0), torch.tensor([-2.0, 0.0, 0.0, 1.0]))
    c = torch.tensor([3 + 4j, 0.3 + 0.4j])
    assert torch.allclose(shrink(c, 1.0), torch.tensor([2.4 + 3.2j, 0j]))


def test_slice_geometry_checks():
    assert check_slice_geometry(4, positions=[0.0, 2.5, 5.0, 7.5]) == pytest.approx(2.5)
    assert check_slice_geometry(3, affine=np.diag([0.8, 0.8, 2.0, 1.0])) == pytest.approx(2.0)
    with pytest.raises(InputError, match="at least 2 slices"):
        check_slice_geometry(1)
    with pytest.raises(InputError, match="equally spaced"):
        check_slice_geometry(4, positions=[0.0, 2.5, 5.0, 10.0])
    with pytest.raises(InputError, match="one slice position per slice"):
        check_slice_geometry(4, positions=[0.0, 2.5])
    with pytest.raises(InputError, match="slice step is zero"):
        check_slice_geometry(3, affine=np.diag([0.8, 0.8, 0.0, 1.0]))


# ------------------------------------------------------------------ the ADMM step alone
def _pdhg_tvz(Md, y, L2, lam, Zs, n, lam_xy=0.0, iters=20000):
    """Reference: PDHG with an exact prox of the data term (dense, float64)."""
    d = Md.shape[1]
    Afull = np.kron(np.eye(Zs), Md)  # block diagonal: one block per slice
    D = [np.kron(np.diff(np.eye(Zs), axis=0), np.eye(d))]  # forward difference along z
    w = [np.full(D[0].shape[0], lam)]
    if lam_xy > 0:
        dn = np.diff(np.eye(n), axis=0)
        D += [np.kron(np.eye(Zs), np.kron(dn, np.eye(n))), np.kron(np.eye(Zs), np.kron(np.eye(n), dn))]
        w += [np.full(D[1].shape[0], lam_xy), np.full(D[2].shape[0], lam_xy)]
    D, w = np.vstack(D), np.concatenate(w)
    yv = y.reshape(-1)
    K = np.linalg.norm(D, 2)
    tau = sig = 0.99 / K
    P = np.linalg.inv(np.eye(Zs * d) + tau * Afull.T @ Afull / L2)
    x = np.zeros(Zs * d)
    q = np.zeros(D.shape[0])
    xb = x.copy()
    for _ in range(iters):
        q = np.clip(q + sig * D @ xb, -w, w)
        xn = P @ (x - tau * D.T @ q + tau * Afull.T @ yv / L2)
        xb = 2 * xn - x
        x = xn
    obj = 0.5 * np.sum((Afull @ x - yv) ** 2) / L2 + np.sum(w * np.abs(D @ x))
    return x.reshape(Zs, n, n), obj


@pytest.mark.parametrize("cg_iters,lam_xy", [(1, 0.0), (4, 0.0), (4, 0.03)])
def test_admm_step_alone_converges_to_the_tvz_solution(cg_iters, lam_xy):
    """Repeated ADMM-TV_z steps with shared (w, u) (warm-started, 1 or 4 CG iterations) reach
    argmin 1/(2 L^2) ||A x - y||^2 + lam ||D_z x||_1 [+ lam_xy (||D_y x||_1 + ||D_x x||_1)] (PDHG)."""
    n, Zs = 4, 4
    gen = torch.Generator().manual_seed(2)
    Md = torch.randn(10, n * n, generator=gen, dtype=torch.float64)
    A = MatrixOperator(Md, shape=[n, n])
    x0 = torch.randn(1, n, n, generator=gen, dtype=torch.float64).repeat(Zs, 1, 1)
    x0[2:] += 0.7
    y = A(x0) + 0.05 * torch.randn(Zs, 10, generator=gen, dtype=torch.float64)
    lam = 0.05
    admm = ADMMTVz(A, y, rho=0.5, lam=lam, cg_iters=cg_iters, lam_xy=lam_xy)
    x = torch.zeros(Zs, n, n, dtype=torch.float64)
    for _ in range(3000 if cg_iters == 1 else 800):
        x = admm.step(x)
    ref, obj_ref = _pdhg_tvz(Md.numpy(), y.numpy(), admm.L2, lam, Zs, n, lam_xy)
    assert admm.objective(x, y) == pytest.approx(obj_ref, rel=1e-5)
    np.testing.assert_allclose(x.numpy(), ref, atol=2e-3 * np.abs(ref).max())
    x_ls = torch.linalg.lstsq(Md, y.T).solution.T.reshape(Zs, n, n)  # min-norm least squares per slice
    assert float(dz(x).abs().sum()) < float(dz(x_ls).abs().sum())


def test_admm_step_on_a_3d_operator_matches_the_per_slice_form():
    """A 3D operator (domain (Z, n, n), batch 1) with z_axis=1 gives the same iterates as the
    per-slice operator with the volume as a batch (z_axis=0): the route to cone-beam later."""
    n, Zs = 3, 4
    gen = torch.Generator().manual_seed(7)
    Md = torch.randn(5, n * n, generator=gen, dtype=torch.float64)
    A2 = MatrixOperator(Md, shape=[n, n])
    A3 = MatrixOperator(torch.kron(torch.eye(Zs, dtype=torch.float64), Md), shape=[Zs, n, n])
    x_true = torch.randn(Zs, n, n, generator=gen, dtype=torch.float64)
    y2 = A2(x_true)
    y3 = A3(x_true[None])
    kw = dict(rho=0.2, lam=0.05, cg_iters=2, gamma=50.0, lam_xy=0.02)
    s2 = ADMMTVz(A2, y2, **kw)
    s3 = ADMMTVz(A3, y3, z_axis=1, **kw)
    assert s3.L2 == pytest.approx(s2.L2, rel=1e-6)
    a, b = torch.zeros(Zs, n, n, dtype=torch.float64), torch.zeros(1, Zs, n, n, dtype=torch.float64)
    for _ in range(5):
        a, b = s2.step(a), s3.step(b)
    torch.testing.assert_close(b[0], a)


# ------------------------------------------------------------------ the samplers
@pytest.mark.parametrize("name,steps", [("dds3d", 20), ("mbir3d", 60)])
def test_z_coupling_reduces_interslice_jumps(problem, name, steps):
    """On a piecewise-constant-in-z phantom the volume samplers have far smaller jumps between
    slices that should be equal than slice-wise DDS with the same prior and data."""
    A, x, y, prior = problem
    gens = slice_generators(0, range(Z))
    x2 = get_sampler("dds").sample(y, A, prior, steps=20, generators=gens)
    x3 = get_sampler(name, lam=0.02, rho=0.3).sample(y, A, prior, steps=steps,
                                                     generators=slice_generators(0, range(Z)))
    same = [0, 1, 3, 4]  # pairs (k, k+1) inside the constant blocks

    def jumps(v):
        return float(torch.stack([(v[k + 1] - v[k]).abs().mean() for k in same]).mean())

    assert jumps(x3) < 0.5 * jumps(x2), (jumps(x3), jumps(x2))
    err2, err3 = float((x2 - x).norm()), float((x3 - x).norm())
    assert err3 < err2, (err3, err2)
    # the real jump between slices 2 and 3 survives
    assert float((x3[3] - x3[2]).abs().mean()) > 0.5 * float((x[3] - x[2]).abs().mean())


@pytest.mark.parametrize("name", ["dds3d", "mbir3d"])
def test_net_batch_does_not_change_the_result(problem, name):
    A, x, y, prior = problem
    a = get_sampler(name, net_batch=1).sample(y, A, prior, steps=6, generators=slice_generators(3, range(Z)))
    b = get_sampler(name, net_batch=4).sample(y, A, prior, steps=6, generators=slice_generators(3, range(Z)))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    c = get_sampler(name, net_batch=4).sample(y, A, prior, steps=6, generators=slice_generators(4, range(Z)))
    assert float((c - b).abs().max()) > 1e-3  # another seed, another sample


def test_progress_checkpoint_and_resume(problem):
    A, x, y, prior = problem
    s = get_sampler("dds3d")
    calls, states = [], {}

    def keep(st):
        if st["step"] == 4:
            states["s"] = copy.deepcopy(st)

    full = s.sample(y, A, prior, steps=8, generators=slice_generators(0, range(Z)),
                    progress=lambda d, t: calls.append((d, t)), checkpoint=keep)
    assert calls == [(i, 8) for i in range(1, 9)]
    assert states["s"]["step"] == 4 and states["s"]["w"][0].shape == (Z - 1, N, N)
    resumed = s.sample(y, A, prior, steps=8, generators=slice_generators(0, range(Z)), resume_state=states["s"])
    torch.testing.assert_close(resumed, full, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="other settings"):
        get_sampler("dds3d", lam=0.1).sample(y, A, prior, steps=8, generators=slice_generators(0, range(Z)),
                                              resume_state=states["s"])


def test_complex_operator_keeps_a_real_image(problem):
    """A complex-domain operator (MRI-like): the image stays real, the result has the complex dtype."""
    _, x, _, prior = problem
    gen = torch.Generator().manual_seed(5)
    M = (torch.randn(30, N * N, generator=gen) + 1j * torch.randn(30, N * N, generator=gen)) / N
    A = MatrixOperator(M.to(torch.complex64), shape=[N, N])
    y = A(x.to(torch.complex64))
    out = get_sampler("dds3d").sample(y, A, prior, steps=5, generators=slice_generators(0, range(Z)))
    assert out.is_complex() and float(out.imag.abs().max()) == 0 and torch.isfinite(out.real).all()


def test_bad_input_is_one_sentence(problem):
    A, x, y, prior = problem
    for name in ("dds3d", "mbir3d"):
        with pytest.raises(InputError, match="at least 2 slices"):
            get_sampler(name).sample(y[:1], A, prior, steps=2)
        with pytest.raises(InputError, match="equally spaced"):
            get_sampler(name).sample(y, A, prior, steps=2, slice_positions=[0, 1, 2, 3, 4, 6])
        with pytest.raises(InputError, match="rho"):
            get_sampler(name, rho=0)
        with pytest.raises(InputError, match="lam"):
            get_sampler(name, lam=-1)
        with pytest.raises(InputError, match="eta"):
            get_sampler(name, eta=1.5)
        with pytest.raises(InputError, match="net_batch"):
            get_sampler(name, net_batch=0)
        with pytest.raises(InputError, match="needs a diffusion prior"):
            get_sampler(name).sample(y, A, None, steps=2)
    assert get_sampler("dds3d").per_slice is False and get_sampler("mbir3d").per_slice is False


def test_engine_runs_a_volume_sampler_in_one_call():
    """Through medrecon.reconstruct: the whole volume in one call, seeded per slice, so the
    result equals a direct call with slice_generators(seed, range(Z))."""
    import medrecon
    from medrecon.engine import reconstruct
    from medrecon.errors import PluginError

    n, zs = 16, 4
    yy, xx = np.mgrid[:n, :n]
    disk = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 3) ** 2).astype(np.float32)
    data = np.stack([disk * 40.0 - 1000 * (1 - disk)] * zs)
    vol = medrecon.Volume(data, np.diag([0.8, 0.8, 2.0, 1.0]), {"modality": "CT", "units": "HU"})
    try:
        m = medrecon.simulate(vol, "ct.parallel", {"n_views": 8, "pixel_size": 0.8}, noise_std=0.5, seed=3)
    except PluginError as exc:  # pragma: no cover - plugin absent
        pytest.skip(f"ct.parallel not available: {exc}")
    prior = GaussianPrior(torch.full((n, n), -500.0), smooth_covariance(n, n, std=500.0))
    v = reconstruct(m, "dds3d", prior, steps=4, batch_size=1, seed=2, progress=False)
    direct = get_sampler("dds3d").sample(torch.from_numpy(m.y), m.operator(), prior, steps=4,
                                         generators=slice_generators(2, range(zs)))
    np.testing.assert_allclose(v.data, direct.numpy(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name,params", [
    ("ct.fan", {"n_views": 24}),
    ("mri.cartesian", {"mask": {"kind": "random", "acceleration": 4, "center_fraction": 0.25, "seed": 0},
                       "real_image": True}),
    ("mri.cartesian", {"mask": {"kind": "equispaced", "acceleration": 2, "center_fraction": 0.25}}),
])
@pytest.mark.parametrize("sampler", ["dds3d", "mbir3d"])
def test_volume_samplers_run_with_the_plugin_operators(problem, name, params, sampler):
    """Every per-slice plugin operator works with the volume samplers (real and complex domains)."""
    import medrecon

    _, x, _, prior = problem
    A = medrecon.get_operator(name, shape=[N, N], **params)
    xin = x.to(A.domain_dtype())
    y = A(xin)
    out = get_sampler(sampler).sample(y, A, prior, steps=4, generators=slice_generators(0, range(Z)))
    assert out.shape == x.shape and torch.isfinite(torch.view_as_real(out) if out.is_complex() else out).all()
    if out.is_complex():
        assert float(out.imag.abs().max()) == 0  # the prior is real: the image stays real
