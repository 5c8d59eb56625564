"""medrecon.interop.odl: ODL operators as medrecon operators (conformance kit) and medrecon
operators in ODL's solvers (PDHG-TV on ct.parallel), plus the refusals and the missing-ODL error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

odl = pytest.importorskip("odl")

import medrecon  # noqa: E402
from medrecon.errors import InputError, MissingDependencyError  # noqa: E402
from medrecon.interop.odl import ODLOperator, from_odl, to_odl  # noqa: E402
from medrecon.measurement import Measurement  # noqa: E402
from medrecon.testing import check_operator  # noqa: E402


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _phantom(n: int) -> np.ndarray:
    """Shepp-Logan at n x n, plus a bright block in the top-left corner (not symmetric)."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    img = resize(shepp_logan_phantom(), (n, n)).astype(np.float64)
    img[: n // 4, : 3 * n // 8] += 0.5
    return img


def _assert_conforms(op: ODLOperator) -> None:
    """Every check of the kit passes except spec-roundtrip, which refuses by design."""
    report = check_operator(op)
    failed = [r.name for r in report.results if not r.passed]
    assert failed == ["spec-roundtrip"], report.table()
    assert "cannot be rebuilt from a spec" in report["spec-roundtrip"].detail


# ------------------------------------------------------------------ ODL -> medrecon
@pytest.mark.parametrize("case", ["gradient", "complex-matrix", "array-weighting-image-layout"])
def test_from_odl_passes_conformance_kit(case):
    rng = np.random.default_rng(0)
    if case == "gradient":  # cell volume 1/42 on the domain, a power product space as the range
        odl_op = odl.Gradient(odl.uniform_discr([0, 0], [1, 1.4], (6, 7), dtype="float64"))
        op = from_odl(odl_op)
        assert (op.domain_shape, op.range_shape) == ((6, 7), (2, 6, 7))
    elif case == "complex-matrix":
        m = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))
        op = from_odl(odl.MatrixOperator(m, domain=odl.cn(4), range=odl.cn(3)))
        assert op.domain_is_complex and op.range_is_complex
    else:  # a per-pixel weighting and the [x, y] -> [row, column] layout
        space = odl.uniform_discr([0, 0], [1, 1], (4, 5), weighting=np.arange(1, 21.0).reshape(4, 5))
        op = from_odl(odl.MultiplyOperator(space.element(rng.standard_normal((4, 5)))), layout="image")
        assert op.domain_shape == (5, 4)
    _assert_conforms(op)


def test_from_odl_forward_is_odl_per_slice_and_adjoint_is_unweighted():
    space = odl.uniform_discr([0, 0], [2, 3], (4, 6), dtype="float64")  # cell volume 0.25
    G = odl.Gradient(space)
    op = from_odl(G)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    y = op(x)
    for b in range(3):
        assert np.allclose(y[b].numpy(), G(space.element(x[b].numpy())).asarray())
    # the adjoint for plain sums is W_D G^* W_R^{-1} = 0.25 * G^* (range weighting 0.25 too)
    r = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    ref = G.adjoint(G.range.element(r[0].numpy())).asarray()
    assert np.allclose(op.adjoint(r)[0].numpy(), ref)
    assert y.dtype == torch.float64 and op(x.float()).dtype == torch.float32


def test_roundtrip_through_odl_keeps_an_exact_ray_transform():
    """No exact ODL ray-transform backend here (astra absent, skimage approximate): the exact
    projector comes from medrecon, through ODL and back, and must still conform."""
    ct = medrecon.get_operator("ct.parallel", shape=[16, 16], n_views=6).with_precision(True)
    op = from_odl(to_odl(ct))
    _assert_conforms(op)
    x = torch.rand(2, 16, 16, dtype=torch.float64)
    assert torch.allclose(op(x), ct(x)) and torch.allclose(op.adjoint(ct(x)), ct.adjoint(ct(x)))


def test_skimage_ray_transform_refused_by_default_and_oriented_with_image_layout():
    tomo = pytest.importorskip("odl.applications.tomo")
    n, angles = 32, np.arange(0, 180, 15.0)
    space = odl.uniform_discr([-n / 2, -n / 2], [n / 2, n / 2], (n, n), dtype="float64")
    geom = tomo.Parallel2dGeometry(odl.nonuniform_partition(np.deg2rad(angles)), odl.uniform_partition(-23, 23, 46))
    try:
        ray = tomo.RayTransform(space, geom, impl="skimage")
    except Exception as exc:  # noqa: BLE001 - no backend at all
        pytest.skip(f"no ODL ray-transform backend: {exc}")
    with pytest.raises(InputError, match="adjoint .* is not exact"):
        from_odl(ray)
    op = from_odl(ray, layout="image", adjoint_tol=None, classical=tomo.fbp_op(ray))
    assert (op.domain_shape, op.range_shape) == ((n, n), (12, 46))
    ct = medrecon.get_operator("ct.parallel", shape=[n, n], angles=list(angles), n_det=46)
    img = torch.from_numpy(_phantom(n)).float()[None]
    y_ct = ct(img)
    # skimage's projector differs from ct.parallel's Joseph model by ~15 %; a transposed image
    # (layout "array") by far more
    assert _rel(op(img), y_ct) < 0.25
    assert _rel(from_odl(ray, adjoint_tol=None)(img), y_ct) > 0.4
    fbp = op.classical(y_ct)
    assert fbp.shape == (1, n, n) and _rel(fbp, img) < 0.6


def test_default_classical_is_least_squares():
    m = np.random.default_rng(1).standard_normal((12, 6))
    op = from_odl(odl.MatrixOperator(m, domain=odl.rn(6), range=odl.rn(12)))
    x = torch.randn(2, 6, dtype=torch.float64)
    assert torch.allclose(op.classical(op(x)), x, atol=1e-8)


def test_spec_refuses_so_no_measurement_is_written():
    op = from_odl(odl.ScalingOperator(odl.rn((4, 4)), 2.0))
    with pytest.raises(InputError, match="cannot be stored in a measurement file"):
        Measurement(y=np.zeros((1, 4, 4)), operator_spec=op.spec())
    with pytest.raises(InputError):
        ODLOperator.from_spec({"name": "odl", "params": {}})
    assert op.describe()["rebuildable"] is False


def test_from_odl_bad_input_raises_input_error():
    space = odl.rn((3, 3))
    with pytest.raises(InputError, match="needs an odl.Operator"):
        from_odl(np.eye(3))
    with pytest.raises(InputError, match="not linear"):
        from_odl(odl.PowerOperator(space, 2))
    with pytest.raises(InputError, match="layout"):
        from_odl(odl.IdentityOperator(space), layout="xy")
    with pytest.raises(InputError, match="2D"):
        from_odl(odl.IdentityOperator(odl.rn(3)), layout="image")
    with pytest.raises(InputError, match="real images"):
        from_odl(odl.IdentityOperator(space))(torch.zeros(1, 3, 3, dtype=torch.complex64))


# ------------------------------------------------------------------ medrecon -> ODL
@pytest.mark.parametrize("double", [True, False])
def test_to_odl_dot_product_test_through_odl_inner_products(double):
    ct = medrecon.get_operator("ct.parallel", shape=[16, 16], n_views=8).with_precision(double)
    rng = np.random.default_rng(2)
    # a weighted domain (0.5 mm pixels: cell volume 0.25) exercises A^* = W_D^{-1} A^H W_R
    domain = odl.uniform_discr([0, 0], [8, 8], (16, 16))
    for A in (to_odl(ct), to_odl(ct, domain=domain)):
        x = A.domain.element(rng.standard_normal(A.domain.shape))
        y = A.range.element(rng.standard_normal(A.range.shape))
        err = abs(A.range.inner(A(x), y) - A.domain.inner(x, A.adjoint(y))) / (A(x).norm() * y.norm())
        assert err < (1e-12 if double else 1e-5)
        assert A.adjoint.adjoint is A


def test_to_odl_complex_and_batched():
    rng = np.random.default_rng(3)
    m = torch.from_numpy(rng.standard_normal((5, 4)) + 1j * rng.standard_normal((5, 4)))
    from medrecon.operators.matrix import MatrixOperator

    A = to_odl(MatrixOperator(m, shape=[2, 2]).with_precision(True), batch=3)
    assert A.domain.shape == (3, 2, 2) and A.range.shape == (3, 5) and A.domain.is_complex
    x = A.domain.element(rng.standard_normal((3, 2, 2)) + 1j * rng.standard_normal((3, 2, 2)))
    y = A.range.element(rng.standard_normal((3, 5)) + 1j * rng.standard_normal((3, 5)))
    lhs, rhs = A.range.inner(A(x), y), A.domain.inner(x, A.adjoint(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-12
    with pytest.raises(InputError, match="shape"):
        to_odl(MatrixOperator(m, shape=[2, 2]), domain=odl.cn((3, 3)))
    with pytest.raises(InputError, match="batch"):
        to_odl(MatrixOperator(m, shape=[2, 2]), batch=0)
    with pytest.raises(InputError, match="medrecon Operator"):
        to_odl(A)


def test_odl_pdhg_tv_on_ct_parallel_beats_fbp():
    """min_x>=0 ||A x - y||^2 + lam ||grad x||_1 by ODL's PDHG on ct.parallel (10 views, 1 % noise)."""
    n = 32
    ct = medrecon.get_operator("ct.parallel", shape=[n, n], n_views=10)
    A = to_odl(ct)
    img = _phantom(n)
    rng = np.random.default_rng(0)
    y_np = ct(torch.from_numpy(img).float()[None])[0].numpy().astype(np.float64)
    y_np += 0.01 * np.abs(y_np).max() * rng.standard_normal(y_np.shape)
    grad = odl.Gradient(A.domain)
    K = odl.BroadcastOperator(A, grad)
    f = odl.functionals.IndicatorNonnegativity(A.domain)
    g = odl.functionals.SeparableSum(odl.functionals.L2NormSquared(A.range).translated(A.range.element(y_np)),
                                     0.02 * odl.functionals.L1Norm(grad.range))
    step = 1.0 / (1.1 * odl.power_method_opnorm(K, maxiter=30))
    x = A.domain.zero()
    odl.solvers.pdhg(x, f, g, K, niter=150, tau=step, sigma=step)
    y_t = torch.from_numpy(y_np).float()[None]
    err_tv = _rel(x.asarray(), img)
    err_fbp = _rel(ct.classical(y_t)[0], img)
    bp = ct.adjoint(y_t)[0].numpy()
    err_bp = _rel(bp * (bp * img).sum() / (bp * bp).sum(), img)  # backprojection at its best scale
    assert err_tv < 0.7 * err_fbp < 0.7 * err_bp, (err_tv, err_fbp, err_bp)


# ------------------------------------------------------------------ ODL absent
def test_missing_odl_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "odl", None)  # import odl -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'medrecon\[odl\]'"):
        from_odl(object())
    with pytest.raises(MissingDependencyError, match="odl"):
        to_odl(medrecon.get_operator("template.scale", shape=[2, 2], factor=1.0))
