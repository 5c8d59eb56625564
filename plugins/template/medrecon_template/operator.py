"""``template.scale``: multiply each image by a constant, ``A x = c x``.

The smallest operator that satisfies the whole contract; copy this package to
start a plugin of your own.  ``A`` is self-adjoint for real ``c``; its classical
reconstruction is the exact inverse ``y / c``.
"""

from __future__ import annotations

import torch

from medrecon.errors import InputError
from medrecon.operators import Operator


class ScaleOperator(Operator):
    """``y = factor * x`` on images of a given ``shape`` (height, width).

    Parameters
    ----------
    shape : list of int
        Image shape ``[ny, nx]`` in pixels.
    factor : float
        The non-zero scale ``c`` (dimensionless).
    """

    name = "template.scale"
    per_slice = True

    def __init__(self, shape=(64, 64), factor: float = 2.0):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 1:
            raise InputError(f"template.scale needs a shape of two positive integers, got {shape}")
        if float(factor) == 0.0:
            raise InputError("template.scale needs a non-zero factor")
        super().__init__(shape=list(shape), factor=float(factor))
        self.domain_shape = shape
        self.range_shape = shape
        self.factor = float(factor)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.factor * y

    def classical(self, y: torch.Tensor) -> torch.Tensor:
        return y / self.factor
