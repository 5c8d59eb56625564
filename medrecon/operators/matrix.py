"""``matrix``: a dense linear operator ``y = M vec(x)`` for tests and small problems.

The image (any ``shape``) is flattened in C order to a vector of length ``N``; the
measurement is ``M`` times it, reshaped to ``range_shape`` (default ``[M_rows]``).  The
adjoint is ``M^H``; the classical reconstruction is the Moore-Penrose pseudo-inverse
``M^+ y``.  A complex matrix makes both domain and range complex.  The spec stores the
matrix itself (real part, and imaginary part when complex), so it suits small ``N`` only.

>>> import torch
>>> from medrecon.operators.matrix import MatrixOperator
>>> A = MatrixOperator(torch.eye(4)[:2], shape=[2, 2])
>>> A(torch.arange(4.).reshape(1, 2, 2))
tensor([[0., 1.]])
"""

from __future__ import annotations

import math

import torch

from medrecon.errors import InputError
from medrecon.operators.base import Operator
from medrecon.operators.params import Param

__all__ = ["MatrixOperator"]


class MatrixOperator(Operator):
    """Dense ``y = M x`` on flattened images.

    Parameters
    ----------
    matrix : array-like (M, N), real or complex
        The matrix (a complex array, or its real part together with ``imag``).
    shape : list of int
        The image shape (its product must be ``N``); default ``[N]``.
    range_shape : list of int, optional
        The measurement shape (product ``M``); default ``[M]``.
    imag : array-like (M, N), optional
        Imaginary part of the matrix (how the spec stores a complex matrix).
    """

    name = "matrix"
    per_slice = True
    PARAMS = (
        Param("matrix", doc="(M, N) matrix, real or complex (or its real part, with imag)"),
        Param("shape", None, doc="image shape, product N (default [N])"),
        Param("range_shape", None, doc="measurement shape, product M (default [M])"),
        Param("imag", None, omit_default=True, doc="(M, N) imaginary part (how the spec stores a complex matrix)"),
    )

    @classmethod
    def example(cls) -> "MatrixOperator":
        """A fixed random 12 x 16 matrix on 4 x 4 images (seed 0)."""
        gen = torch.Generator().manual_seed(0)
        return cls(torch.randn(12, 16, generator=gen, dtype=torch.float64), shape=[4, 4])

    def _build(self, p) -> None:
        matrix, shape, range_shape, imag = p["matrix"], p["shape"], p["range_shape"], p["imag"]
        m = torch.as_tensor(_to_tensorable(matrix))
        if m.ndim != 2 or min(m.shape) < 1:
            raise InputError(f"matrix operator needs a 2D matrix, got shape {tuple(m.shape)}")
        if m.is_complex():
            if imag is not None:
                raise InputError("matrix operator got a complex matrix and a separate imag part")
            re, im = m.real.to(torch.float64), m.imag.to(torch.float64)
        else:
            re = m.to(torch.float64)
            im = None if imag is None else torch.as_tensor(_to_tensorable(imag)).to(torch.float64)
            if im is not None and im.shape != re.shape:
                raise InputError(f"matrix operator imag part shape {tuple(im.shape)} differs from {tuple(re.shape)}")
        if not bool(torch.isfinite(re).all()) or (im is not None and not bool(torch.isfinite(im).all())):
            raise InputError("matrix operator got a matrix containing NaN or infinity")
        rows, cols = re.shape
        shape = [cols] if shape is None else [int(s) for s in shape]
        range_shape = [rows] if range_shape is None else [int(s) for s in range_shape]
        if math.prod(shape) != cols or min(shape) < 1:
            raise InputError(f"matrix operator image shape {shape} does not have {cols} elements")
        if math.prod(range_shape) != rows or min(range_shape) < 1:
            raise InputError(f"matrix operator range shape {range_shape} does not have {rows} elements")
        p.update(matrix=re, shape=shape, range_shape=range_shape, imag=im)  # the stored (spec) form
        self.domain_shape = tuple(shape)
        self.range_shape = tuple(range_shape)
        is_complex = im is not None
        self.domain_is_complex = is_complex
        self.range_is_complex = is_complex
        full = torch.complex(re, im) if is_complex else re
        self.register_buffer("M", full.to(torch.complex64 if is_complex else torch.float32))
        self.register_buffer("M_pinv", torch.linalg.pinv(full).to(self.M.dtype))

    def _mat(self, which: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if which.dtype != x.dtype:
            if x.is_complex() or not which.is_complex():
                which = which.to(x.dtype)
        return which

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.domain_is_complex and not x.is_complex():
            x = x.to(self.M.dtype if x.dtype != torch.float64 else torch.complex128)
        m = self._mat(self.M, x)
        out = x.reshape(x.shape[0], -1) @ m.T
        return out.reshape(x.shape[0], *self.range_shape)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self.range_is_complex and not y.is_complex():
            y = y.to(self.M.dtype if y.dtype != torch.float64 else torch.complex128)
        m = self._mat(self.M, y)
        out = y.reshape(y.shape[0], -1) @ m.conj()
        return out.reshape(y.shape[0], *self.domain_shape)

    def classical(self, y: torch.Tensor) -> torch.Tensor:
        """Minimum-norm least-squares solution ``M^+ y``."""
        self._check(y, self.range_shape, "measurement")
        if self.range_is_complex and not y.is_complex():
            y = y.to(self.M.dtype if y.dtype != torch.float64 else torch.complex128)
        p = self._mat(self.M_pinv, y)
        out = y.reshape(y.shape[0], -1) @ p.T
        return out.reshape(y.shape[0], *self.domain_shape)

    @property
    def matrix(self) -> torch.Tensor:
        """The matrix ``M`` (M, N) in the current precision."""
        return self.M


def _to_tensorable(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if hasattr(v, "__array__"):
        import numpy as np

        return torch.from_numpy(np.asarray(v).copy())
    try:  # nested lists (a spec read back from JSON): keep double precision
        return torch.tensor(v, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return torch.tensor(v, dtype=torch.complex128)
