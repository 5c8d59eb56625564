"""ct.parallel / ct.fan: discovery, conformance kit, geometry options, devices, precision."""

import numpy as np
import pytest
import torch

import medrecon
from medrecon.testing import check_operator, dot_product_error


@pytest.mark.parametrize(
    "name, params",
    [
        ("ct.parallel", dict(shape=[24, 20], n_views=7)),
        ("ct.parallel", dict(shape=16, n_views=8, pixel_size=0.7, det_spacing=0.5, n_det=40, det_offset=0.3)),
        ("ct.parallel", dict(shape=16, n_views=12, arc=[0, 120])),
        ("ct.parallel", dict(shape=16, angles=[0.0, 17.5, 45.0, 90.0, 133.3, 271.0])),
        ("ct.fan", dict(shape=24, n_views=9)),
        ("ct.fan", dict(shape=[20, 16], n_views=10, source_to_center=40.0, source_to_detector=90.0,
                        pixel_size=0.8, det_offset=-0.4)),
    ],
)
def test_conformance(name, params):
    op = medrecon.get_operator(name, **params)
    assert type(op).__module__.startswith("medrecon_ct.")
    report = check_operator(op)
    assert report.passed, report.table()
    assert dot_product_error(op, torch.float64) <= 1e-6


def test_angle_lists():
    A = medrecon.get_operator("ct.parallel", shape=16, n_views=8)
    np.testing.assert_allclose(A.angles.numpy(), np.linspace(0, 180, 8, endpoint=False))
    L = medrecon.get_operator("ct.parallel", shape=16, n_views=120, arc=[0, 120])
    assert L.angles[0] == 0 and L.angles[-1] == 119
    F = medrecon.get_operator("ct.fan", shape=16, n_views=4)
    np.testing.assert_allclose(F.angles.numpy(), [0, 90, 180, 270])
    E = medrecon.get_operator("ct.parallel", shape=16, angles=[3.0, 5.0])
    assert E.range_shape == (2, 23)


def test_default_detector_and_units():
    A = medrecon.get_operator("ct.parallel", shape=256, n_views=1)
    assert A.range_shape == (1, 363)  # ceil(sqrt(2) * 256)
    # a uniform disc of attenuation mu (1/mm), radius r (mm): central line integral 2 r mu
    n, ps, mu, r = 64, 0.5, 0.02, 10.0
    c = (np.arange(n) - (n - 1) / 2) * ps
    disc = ((c[:, None] ** 2 + c[None, :] ** 2) <= r**2).astype(np.float64) * mu
    B = medrecon.get_operator("ct.parallel", shape=n, n_views=4, pixel_size=ps).with_precision(True)
    y = B(torch.from_numpy(disc)[None])[0]
    mid = y.shape[1] // 2
    assert abs(float(y[:, mid].mean()) - 2 * r * mu) / (2 * r * mu) < 0.03


def test_theta_zero_is_column_sum():
    x = torch.zeros(1, 8, 8, dtype=torch.float64)
    x[0, 1, 6] = 1.0  # row 1 (top), column 6 (right)
    A = medrecon.get_operator("ct.parallel", shape=8, angles=[0.0, 90.0], n_det=8).with_precision(True)
    y = A(x)[0]
    assert int(y[0].argmax()) == 6  # theta = 0: detector runs along +X (columns)
    assert int(y[1].argmax()) == 6  # theta = 90: detector runs along +Y (up = row 1 near the top)


def test_autograd_backward_is_adjoint():
    A = medrecon.get_operator("ct.fan", shape=12, n_views=5)
    x = torch.randn(2, 12, 12, requires_grad=True)
    w = torch.randn(2, *A.range_shape)
    (A(x) * w).sum().backward()
    torch.testing.assert_close(x.grad, A.adjoint(w))


def test_precision_and_matrix_sharing():
    A = medrecon.get_operator("ct.parallel", shape=16, n_views=6)
    x = torch.randn(1, 16, 16, dtype=torch.float64)
    y64 = A.with_precision(True)(x)
    assert y64.dtype == torch.float64
    y32 = A.with_precision(False)(x.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=1e-5)
    B = medrecon.get_operator("ct.parallel", shape=16, n_views=6)
    assert B.system_matrix() is A.system_matrix()  # one matrix per geometry


def test_wrong_device_is_one_sentence():
    A = medrecon.get_operator("ct.parallel", shape=8, n_views=2)
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    with pytest.raises(medrecon.InputError, match="move the operator"):
        A(torch.zeros(1, 8, 8, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    A = medrecon.get_operator("ct.fan", shape=32, n_views=16)
    x = torch.randn(3, 32, 32)
    G = A.to("cuda")
    assert G.device.type == "cuda"
    yg = G(x.cuda())
    torch.testing.assert_close(yg.cpu(), A.to("cpu")(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(G.to("cuda").classical(yg).cpu(), A.to("cpu").classical(yg.cpu()),
                               rtol=1e-3, atol=1e-3)


def test_under_autocast():
    A = medrecon.get_operator("ct.parallel", shape=16, n_views=6)
    x = torch.randn(2, 16, 16)
    ref = A(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = A(x)
        g = A.adjoint(y)
    assert y.dtype == torch.float32 and g.dtype == torch.float32
    torch.testing.assert_close(y, ref)
