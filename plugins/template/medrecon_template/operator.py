"""``template.scale``: multiply each image by a constant, ``A x = c x``.

The smallest operator that satisfies the whole contract; copy this package to
start a plugin of your own.  ``A`` is self-adjoint for real ``c`` (``A^H A = c^2 I``,
``||A|| = |c|``); its classical reconstruction is the exact inverse ``y / c``.

    >>> import torch
    >>> A = ScaleOperator.example()
    >>> A.spec()["params"]
    {'shape': [32, 32], 'factor': 2.0}
    >>> float(A.normal(torch.ones(1, 32, 32))[0, 0, 0])
    4.0
"""

from __future__ import annotations

import torch

from medrecon.errors import InputError
from medrecon.operators import Operator, Param


def _shape(shape) -> list[int]:
    try:
        out = [int(s) for s in shape]
    except (TypeError, ValueError):
        out = []
    if len(out) != 2 or min(out) < 1:
        raise InputError(f"template.scale needs a shape of two positive integers, got {shape!r}")
    return out


def _factor(factor) -> float:
    try:
        c = float(factor)
    except (TypeError, ValueError):
        raise InputError(f"template.scale needs a number as factor, got {factor!r}") from None
    if c == 0.0:
        raise InputError("template.scale needs a non-zero factor")
    return c


class ScaleOperator(Operator):
    """``y = factor * x`` on images of a given ``shape`` (height, width); parameters below."""

    name = "template.scale"
    per_slice = True
    PARAMS = (
        Param("shape", (64, 64), check=_shape, grid="shape", doc="image shape [ny, nx], pixels"),
        Param("factor", 2.0, check=_factor, doc="the non-zero scale c (dimensionless)"),
    )

    def _build(self, p):
        self.domain_shape = self.range_shape = tuple(p["shape"])
        self.factor = p["factor"]

    @classmethod
    def example(cls) -> "ScaleOperator":
        """A 32 x 32 operator with ``factor=2``."""
        return cls(shape=[32, 32], factor=2.0)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.factor * y

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        """``c (c x)``: the same numbers as ``adjoint(forward(x))``, without the checks."""
        return self.factor * (self.factor * x)

    def classical(self, y: torch.Tensor) -> torch.Tensor:
        return y / self.factor
