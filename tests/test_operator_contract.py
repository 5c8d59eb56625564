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
