"""The operator base class and the conformance kit catch what they claim to catch."""

from __future__ import annotations

import json

import pytest
import torch

import medrecon
from medrecon.errors import InputError
from medrecon.operators import Operator
from medrecon.testing import check_operator, dot_product_error


class _Blur(Operator):
    """1D moving average along x: a real operator with a non-trivial adjoint."""

    name = "test.blur"

    def __init__(self, shape=(5, 6), wrong_adjoint=False, leak=False):
        super().__init__(shape=list(shape), wrong_adjoint=wrong_adjoint, leak=leak)
        self.domain_shape = self.range_shape = tuple(shape)
        self.wrong_adjoint, self.leak = wrong_adjoint, leak

    def _forward(self, x):
        y = x + torch.roll(x, 1, dims=-1)
        if self.leak:  # couples slices: breaks slice independence
            y = y + x.mean(dim=0, keepdim=True)
        return y

    def _adjoint(self, y):
        x = y + torch.roll(y, -1, dims=-1)
        if self.wrong_adjoint:
            x = y + torch.roll(y, 1, dims=-1)
        if self.leak:
            x = x + y.mean(dim=0, keepdim=True)
        return x

    def classical(self, y):
        return y / 2


class _Fourier(Operator):
    """Real image -> complex orthonormal 2D FFT (a real-to-complex operator)."""

    name = "test.fft"
    range_is_complex = True

    def __init__(self, shape=(4, 4)):
        super().__init__(shape=list(shape))
        self.domain_shape = self.range_shape = tuple(shape)

    def _forward(self, x):
        return torch.fft.fft2(x, norm="ortho")

    def _adjoint(self, y):
        return torch.fft.ifft2(y, norm="ortho")  # the base class takes the real part

    def classical(self, y):
        return self.adjoint(y)


def _rebuild(spec):
    cls = {"test.blur": _Blur, "test.fft": _Fourier}[spec["name"]]
    return cls.from_spec(spec)


def test_correct_operator_passes():
    report = check_operator(_Blur(), rebuild=_rebuild)
    assert report.passed, report.table()


def test_wrong_adjoint_is_caught():
    report = check_operator(_Blur(wrong_adjoint=True), rebuild=_rebuild)
    assert report["adjoint-float64"].status == "FAIL"
    assert not report.passed
    assert "FAILED" in report.table()


def test_slice_leak_is_caught():
    report = check_operator(_Blur(leak=True), rebuild=_rebuild)
    assert report["slice-independence"].status == "FAIL"


def test_real_to_complex_operator_passes_and_gradient_is_real():
    op = _Fourier()
    report = check_operator(op, rebuild=_rebuild)
    assert report.passed, report.table()
    x = torch.randn(1, 4, 4, requires_grad=True)
    op(x).abs().pow(2).sum().backward()
    assert x.grad.dtype == torch.float32
    assert torch.allclose(x.grad, 2 * x.detach(), atol=1e-5)  # Parseval: ||Fx||^2 = ||x||^2


def test_backward_is_the_adjoint_even_when_forward_is_opaque():
    op = _Blur()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 5, 6, dtype=torch.float64)
    (op(x) * w).sum().backward()
    assert torch.allclose(x.grad, op.adjoint(w))
    assert dot_product_error(op) < 1e-12


def test_spec_is_json_and_rebuilds():
    op = medrecon.get_operator("template.scale", shape=[3, 7], factor=0.5)
    spec = json.loads(json.dumps(op.spec()))
    op2 = medrecon.operator_from_spec(spec)
    assert op2.spec() == op.spec() and op2.domain_shape == (3, 7)


def test_wrong_shape_is_one_sentence():
    op = _Blur()
    with pytest.raises(InputError, match=r"expects a image batch shaped \(B, 5, 6\), got \(5, 6\)"):
        op(torch.zeros(5, 6))
    with pytest.raises(InputError):
        op.adjoint(torch.zeros(1, 6, 5))


def test_bad_spec_and_unknown_names():
    with pytest.raises(InputError):
        medrecon.operator_from_spec({"params": {}})
    with pytest.raises(medrecon.PluginError):
        medrecon.get_operator("no.such.operator")
    with pytest.raises(InputError, match="bad parameters for operator 'template.scale'"):
        medrecon.get_operator("template.scale", nonsense=1)


def test_with_precision_does_not_touch_the_original():
    op = _Blur()
    report = check_operator(op, rebuild=_rebuild)
    assert report.passed
    assert op.params == {"shape": [5, 6], "wrong_adjoint": False, "leak": False}


# ------------------------------------------------------------------ the declared contract
class _Shift(Operator):
    """A declared operator: ``y = x + roll(x)`` (``wrong_adjoint``: an adjoint that is not one)."""

    name = "test.shift"
    PARAMS = (
        medrecon.operators.Param("shape", check=lambda s: [int(v) for v in s], grid="shape", doc="pixels"),
        medrecon.operators.Param("pixel_size", 1.0, check=float, grid="pixel_size", doc="mm"),
        medrecon.operators.Param("wrong_adjoint", False, omit_default=True),
    )

    def _build(self, p):
        self.domain_shape = self.range_shape = tuple(p["shape"])

    @classmethod
    def example(cls):
        return cls([4, 5], wrong_adjoint=True)

    def _forward(self, x):
        return x + torch.roll(x, 1, dims=-1)

    def _adjoint(self, y):
        return y + torch.roll(y, 1 if self.params.get("wrong_adjoint") else -1, dims=-1)

    def classical(self, y):
        return y / 2


def test_declared_params_give_constructor_spec_and_signature():
    import inspect

    op = _Shift([3, 4])
    assert op.spec()["params"] == {"shape": [3, 4], "pixel_size": 1.0}  # omit_default leaves wrong_adjoint out
    assert _Shift.from_spec(op.spec()).spec() == op.spec()
    assert list(inspect.signature(_Shift).parameters) == ["shape", "pixel_size", "wrong_adjoint", "arrays"]
    with pytest.raises(TypeError, match="unexpected parameter 'nonsense'"):
        _Shift([3, 4], nonsense=1)
    with pytest.raises(TypeError, match="missing the required parameter 'shape'"):
        _Shift()


def test_for_grid_fills_declared_grid_parameters_and_keeps_given_ones():
    op = _Shift.for_grid((6, 7), (0.5, 0.5))
    assert op.params == {"shape": [6, 7], "pixel_size": 0.5}
    with pytest.raises(medrecon.InputError, match="needs square pixels"):  # never a silent 1 mm default
        _Shift.for_grid((6, 7), (0.5, 0.7))
    assert _Shift.for_grid((6, 7), (0.5, 0.505)).params["pixel_size"] == pytest.approx(0.50249, abs=1e-5)
    assert _Shift.for_grid((6, 7), (0.5, 0.5), shape=[2, 2], pixel_size=3).params == {"shape": [2, 2],
                                                                                       "pixel_size": 3.0}
    legacy = _Blur.for_grid((5, 6), (1.0, 1.0))  # an undeclared operator: by constructor argument name
    assert legacy.domain_shape == (5, 6)


def test_normal_is_adjoint_of_forward_and_norm_is_cached():
    op = medrecon.get_operator("template.scale", shape=[4, 4], factor=-3.0)
    x = torch.randn(2, 4, 4, dtype=torch.float64)
    assert torch.equal(op.normal(x), op.adjoint(op(x)))
    assert op.norm() == pytest.approx(3.0) and op.norm() == op.norm()
    blur, ones = _Blur(), torch.ones(1, 5, 6)
    assert torch.equal(blur.normal(ones), blur.adjoint(blur(ones)))  # the default: adjoint(forward(x))
    xr = torch.randn(1, 4, 4, requires_grad=True)  # differentiable
    op.normal(xr).sum().backward()
    assert torch.allclose(xr.grad, torch.full((1, 4, 4), 9.0))


def test_kit_fails_a_declared_operator_with_a_wrong_adjoint():
    from medrecon.testing import check_operator_class

    report = check_operator_class(_Shift)
    assert report["example"].status == "pass"
    assert report["adjoint-float64"].status == "FAIL" and not report.passed
    assert check_operator_class(int)["example"].status == "FAIL"


@pytest.mark.parametrize("name", ["template.scale", "ct.parallel", "ct.fan", "ct.cone", "mri.cartesian",
                                  "mri.sense", "us.planewave", "us.haze"])
def test_every_builtin_example_passes_the_kit(name):
    from medrecon.testing import check_operator_class

    cls = medrecon.operators.operator_class(name)
    report = check_operator_class(cls)
    assert report.passed, report.table()
    op = cls.example()
    assert cls.from_spec(op.spec()).spec() == op.spec()


def test_matrix_operator_example_passes_the_kit():
    from medrecon.operators.matrix import MatrixOperator

    assert check_operator(MatrixOperator.example(), rebuild=MatrixOperator.from_spec).passed
