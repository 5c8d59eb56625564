"""mri.cartesian / mri.sense: discovery, conformance kit, exact adjoints, array parameters, errors."""

import json

import numpy as np
import pytest
import torch
from medrecon_mri.arrays import array_sha256
from medrecon_mri.coils import synthetic_coil_maps
from medrecon_mri.fft import fft2c, ifft2c

import medrecon
from medrecon.errors import InputError
from medrecon.measurement import Measurement, load_measurement, save_measurement
from medrecon.testing import check_operator, dot_product_error

RANDOM4 = {"kind": "random", "acceleration": 4, "center_fraction": 0.1, "seed": 0}
PHASE = [[0.05 * i - 0.03 * j for j in range(12)] for i in range(16)]


@pytest.mark.parametrize(
    "name, params",
    [
        ("mri.cartesian", dict(shape=[16, 12])),
        ("mri.cartesian", dict(shape=[16, 12], mask=RANDOM4)),
        ("mri.cartesian", dict(shape=[16, 12], mask=RANDOM4, real_image=True, phase=PHASE)),
        ("mri.cartesian", dict(shape=16, mask={"kind": "poisson", "acceleration": 3, "seed": 1})),
        ("mri.sense", dict(shape=[16, 12], coil_maps={"synthetic": "birdcage", "n_coils": 3}, mask=RANDOM4)),
        ("mri.sense", dict(shape=[16, 12], coil_maps={"synthetic": "birdcage", "n_coils": 3}, mask=RANDOM4,
                           real_image=True)),
        ("mri.sense", dict(shape=[12, 10], coil_maps=synthetic_coil_maps((12, 10), 2), mask=[1, 0] * 5)),
    ],
)
def test_conformance(name, params):
    op = medrecon.get_operator(name, **params)
    assert type(op).__module__ == "medrecon_mri.operators"
    report = check_operator(op)
    assert report.passed, report.table()
    assert dot_product_error(op, torch.float64) <= 1e-10
    json.dumps(op.spec())  # numpy maps were stored as JSON lists


def test_shapes_dtypes_and_real_image():
    A = medrecon.get_operator("mri.sense", shape=[16, 12], coil_maps={"synthetic": "birdcage", "n_coils": 4},
                              real_image=True)
    assert A.domain_is_complex is False and A.range_shape == (4, 16, 12)
    y = A(torch.rand(3, 16, 12))
    assert y.dtype == torch.complex64 and y.shape == (3, 4, 16, 12)
    assert A.adjoint(y).dtype == torch.float32
    C = medrecon.get_operator("mri.cartesian", shape=[16, 12])
    assert C.domain_is_complex and C(torch.rand(2, 16, 12)).shape == (2, 16, 12)


def test_fft_is_centred_and_unitary():
    x = torch.randn(2, 8, 6, dtype=torch.complex128)
    k = fft2c(x)
    assert torch.allclose(torch.linalg.vector_norm(k), torch.linalg.vector_norm(x))
    assert torch.allclose(ifft2c(k), x)
    one = torch.ones(1, 8, 6, dtype=torch.complex128)
    dc = fft2c(one)[0].abs()
    assert float(dc[4, 3]) == pytest.approx(np.sqrt(48)) and float(dc.sum() - dc[4, 3]) < 1e-9


@pytest.mark.parametrize("shape", [[16, 12], [14, 10], [15, 12], [13, 9]])
def test_operators_equal_the_definition_with_shifts(shape):
    """Even grids take the shift-free path (sign flips, medrecon_mri.fft), odd ones the shifts:
    both must equal M fft2c(S x) and sum conj(S) ifft2c(M y) written out with fftshifts."""
    ny, nx = shape
    g = torch.Generator().manual_seed(1)
    maps = torch.from_numpy(synthetic_coil_maps((ny, nx), 3)).to(torch.complex128)
    mask = {"kind": "random", "acceleration": 2, "center_fraction": 0.2, "seed": 3}
    A = medrecon.get_operator("mri.sense", shape=shape, coil_maps=maps.numpy(), mask=mask).with_precision(True)
    C = medrecon.get_operator("mri.cartesian", shape=shape, mask=mask,
                              phase=np.linspace(0, 1, ny * nx).reshape(ny, nx)).with_precision(True)
    assert A._shift_free == (ny % 2 == 0 and nx % 2 == 0)
    M = A.mask.to(torch.float64)
    x = torch.randn(2, ny, nx, dtype=torch.complex128, generator=g)
    y = torch.randn(2, 3, ny, nx, dtype=torch.complex128, generator=g)
    assert torch.allclose(A(x), M * fft2c(x[:, None] * maps[None]), atol=1e-12)
    assert torch.allclose(A.adjoint(y), (maps.conj()[None] * ifft2c(M * y)).sum(1), atol=1e-12)
    assert torch.allclose(A.zero_filled_coils(y), ifft2c(M * y), atol=1e-12)
    P = C.phase_factor.to(torch.complex128)
    assert torch.allclose(C(x), M * fft2c(P * x), atol=1e-12)
    assert torch.allclose(C.adjoint(y[:, 0]), P.conj() * ifft2c(M * y[:, 0]), atol=1e-12)


@pytest.mark.parametrize("shape", [[16, 12], [15, 12]])
def test_inputs_are_not_modified_and_precision_is_promoted(shape):
    """forward / adjoint work in place on their own FFT outputs only: the caller's arrays are
    unchanged, per-slice maps included; complex64 data on a double operator gives complex128."""
    g = torch.Generator().manual_seed(2)
    maps = synthetic_coil_maps(tuple(shape), 3)
    mask = {"kind": "random", "acceleration": 2, "center_fraction": 0.2, "seed": 3}
    for cm in (maps, np.stack([maps, 0.5 * maps])):  # shared and per-slice maps
        A = medrecon.get_operator("mri.sense", shape=shape, coil_maps=cm, mask=mask)
        x = torch.randn(2, *shape, dtype=torch.complex64, generator=g)
        y = torch.randn(2, 3, *shape, dtype=torch.complex64, generator=g)
        x0, y0, m0 = x.clone(), y.clone(), A.coil_maps.clone()
        A(x), A.adjoint(y), A.normal(x), A.classical(y)
        assert torch.equal(x, x0) and torch.equal(y, y0) and torch.equal(A.coil_maps, m0)
        D = medrecon.get_operator("mri.sense", shape=shape, coil_maps=cm, mask=mask).with_precision(True)
        got = D.adjoint(y)
        assert got.dtype == torch.complex128
        assert torch.allclose(got, D.adjoint(y.to(torch.complex128)), atol=1e-12)


def test_fully_sampled_sense_with_normalised_maps_is_an_isometry(sl64c):
    A = medrecon.get_operator("mri.sense", shape=64, coil_maps={"synthetic": "birdcage", "n_coils": 4})
    A.with_precision(True)
    x = torch.from_numpy(sl64c)[None]
    assert torch.allclose(A.normal(x), x, atol=1e-10)
    assert torch.allclose(A.classical(A(x)), x, atol=1e-10)  # coil combination = inverse here


def test_mask_and_acceleration_are_reported_and_applied():
    A = medrecon.get_operator("mri.cartesian", shape=[32, 64], mask=RANDOM4 | {"center_fraction": 0.08})
    y = A(torch.randn(1, 32, 64, dtype=torch.complex64))
    unsampled = A.mask == 0
    assert float(y[0][unsampled].abs().max()) == 0
    assert A.acceleration == pytest.approx(64 / A.mask[0].sum().item())
    assert A.mask_info["calibration"][0] == 32


def test_coil_maps_from_file_and_from_the_measurement(tmp_path):
    maps = synthetic_coil_maps((12, 10), 3)
    np.save(tmp_path / "maps.npy", maps)
    A = medrecon.get_operator("mri.sense", shape=[12, 10], coil_maps={"file": str(tmp_path / "maps.npy")})
    assert torch.allclose(A.coil_maps, torch.from_numpy(maps))
    assert check_operator(A).passed
    ref = {"array": "coil_maps", "sha256": array_sha256(maps)}
    with pytest.raises(InputError, match="Measurement.operator"):
        medrecon.get_operator("mri.sense", shape=[12, 10], coil_maps=ref)
    B = medrecon.get_operator("mri.sense", shape=[12, 10], coil_maps=ref, mask=RANDOM4, arrays={"coil_maps": maps})
    assert set(B.spec_arrays) == {"coil_maps"} and "arrays" not in B.spec()["params"]
    y = B(torch.randn(2, 12, 10, dtype=torch.complex64))
    m = Measurement(y=y.numpy(), operator_spec=B.spec(), volume_shape=(2, 12, 10), arrays={"coil_maps": maps})
    path = save_measurement(m, tmp_path / "m.h5")
    m2 = load_measurement(path)
    assert set(m2.arrays) == {"coil_maps"}
    B2 = m2.operator()
    assert torch.allclose(B2.coil_maps, B.coil_maps) and torch.equal(B2.mask, B.mask)

    assert check_operator(B).passed  # the kit rebuilds it with the arrays it was built with
    assert check_operator(B, rebuild=lambda spec: medrecon.operator_from_spec(spec, arrays={"coil_maps": maps})).passed
    with pytest.raises(InputError, match="sha256"):
        medrecon.operator_from_spec(B.spec(), arrays={"coil_maps": maps * 2})
    with pytest.raises(InputError, match="has no array 'coil_maps'"):
        medrecon.operator_from_spec(B.spec(), arrays={"phase": maps})


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(shape=[8, 8], mask=[1, 0, 1]), "8 entries"),
        (dict(shape=[8, 8], mask=[0] * 8), "samples nothing"),
        (dict(shape=[8, 8], mask={"kind": "spiral", "acceleration": 2}), "unknown mask kind"),
        (dict(shape=[8, 8], mask={"kind": "random", "acceleration": 0.5}), "acceleration"),
        (dict(shape=[8, 8], real_image="yes"), "real_image"),
        (dict(shape=[8, 0]), "shape"),
        (dict(shape=[8, 8], phase=[[0.0] * 3]), "phase"),
    ],
)
def test_bad_parameters_are_one_sentence(params, match):
    with pytest.raises(InputError, match=match):
        medrecon.get_operator("mri.cartesian", **params)


def test_bad_coil_maps():
    with pytest.raises(InputError, match="coil_maps must be shaped"):
        medrecon.get_operator("mri.sense", shape=[8, 8], coil_maps=np.ones((2, 4, 4)))
    with pytest.raises(InputError, match="synthetic"):
        medrecon.get_operator("mri.sense", shape=[8, 8], coil_maps={"synthetic": "helmet"})


def test_array_masks_with_fractions_are_refused():
    import medrecon
    from medrecon.errors import InputError

    with pytest.raises(InputError, match="0 and 1"):
        medrecon.get_operator("mri.cartesian", shape=[4, 4], mask=np.array([1, 0.5, 0.7, 1]))
    with pytest.raises(InputError, match="shape"):
        medrecon.get_operator("mri.cartesian", shape="64")


@pytest.mark.parametrize("shape", [[16, 12], [15, 13]])  # shift-free even grid, and an odd one
@pytest.mark.parametrize("real", [False, True])
def test_normal_gives_the_numbers_of_adjoint_of_forward(shape, real):
    maps = synthetic_coil_maps(tuple(shape), 3)
    for A in (medrecon.get_operator("mri.cartesian", shape=shape, mask=RANDOM4, real_image=real,
                                    phase=np.ones((2, *shape))),
              medrecon.get_operator("mri.sense", shape=shape, mask=RANDOM4, real_image=real, coil_maps=maps)):
        for double in (False, True):
            A.with_precision(double)
            x = torch.randn(2, *shape, dtype=torch.float64 if double else torch.float32)
            xin = x.to(x.dtype.to_complex()) if A.domain_is_complex else x
            ref = A.adjoint(A(xin))
            assert torch.equal(A.normal(x), ref.real if ref.is_complex() else ref)
            if A.domain_is_complex:
                assert torch.equal(A.normal(xin), ref)
