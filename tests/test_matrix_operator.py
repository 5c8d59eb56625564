"""The dense MatrixOperator: conformance (real and complex), pseudo-inverse, spec, errors."""

from __future__ import annotations

import json

import pytest
import torch

from medrecon.errors import InputError
from medrecon.operators.matrix import MatrixOperator
from medrecon.testing import check_operator


def _mat(rows, cols, complex_=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    return torch.randn(rows, cols, generator=g, dtype=dtype)


@pytest.mark.parametrize("complex_", [False, True])
def test_passes_conformance_kit(complex_):
    op = MatrixOperator(_mat(10, 16, complex_), shape=[4, 4], range_shape=[2, 5])
    report = check_operator(op)
    assert report.passed, report.table()
    assert op.domain_is_complex == complex_ and op.range_is_complex == complex_


def test_forward_is_matrix_product_and_classical_is_pinv():
    m = _mat(6, 9)
    op = MatrixOperator(m, shape=[3, 3]).with_precision(True)
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    y = op(x)
    assert torch.allclose(y, x.reshape(2, -1) @ m.T)
    assert torch.allclose(op.classical(y).reshape(2, -1), y @ torch.linalg.pinv(m).T)
    # fewer measurements than unknowns: pinv is the minimum-norm solution, data consistent
    assert torch.allclose(op(op.classical(y)), y, atol=1e-10)


def test_spec_roundtrip_complex():
    op = MatrixOperator(_mat(3, 4, True), shape=[2, 2])
    spec = json.loads(json.dumps(op.spec()))
    op2 = MatrixOperator.from_spec(spec)
    x = torch.randn(1, 2, 2, dtype=torch.complex64)
    assert torch.allclose(op(x), op2(x))
    assert op2.spec() == spec


def test_bad_inputs_raise_one_sentence():
    with pytest.raises(InputError, match="2D matrix"):
        MatrixOperator(torch.ones(3))
    with pytest.raises(InputError, match="does not have 6 elements"):
        MatrixOperator(torch.ones(2, 6), shape=[2, 2])
    with pytest.raises(InputError, match="NaN"):
        MatrixOperator(torch.tensor([[float("nan")]]))
    op = MatrixOperator(torch.ones(2, 4), shape=[2, 2])
    with pytest.raises(InputError):
        op(torch.ones(1, 4))
