"""Autograd nodes for a linear operator: the backward of ``A`` is ``A^H`` and that of ``A^H`` is ``A``.

For a linear map ``y = A x`` the vector-Jacobian product is the adjoint applied to the
incoming gradient, ``dL/dx = A^H dL/dy`` (PyTorch's conjugate-Wirtinger convention makes
this hold for complex tensors too), so an operator with a custom kernel never needs a
hand-written gradient.  :class:`medrecon.operators.Operator` applies these nodes when its
input requires a gradient.
"""

from __future__ import annotations

import torch

__all__ = ["_AdjointFunction", "_LinearFunction"]


class _LinearFunction(torch.autograd.Function):
    """Autograd node for ``y = A x`` whose backward is ``A^H``.

    For a linear map the vector-Jacobian product is the adjoint applied to the
    incoming gradient (PyTorch's conjugate-Wirtinger convention makes this hold
    for complex tensors too).  When ``x`` is real and ``A^H g`` complex (a real
    image measured in k-space), the gradient is its real part.
    """

    @staticmethod
    def forward(ctx, x, op):
        ctx.op = op
        ctx.x_is_complex = x.is_complex()
        return op._forward(x)

    @staticmethod
    def backward(ctx, grad_y):
        g = ctx.op._adjoint(grad_y)
        if not ctx.x_is_complex and g.is_complex():
            g = g.real
        return g, None


class _AdjointFunction(torch.autograd.Function):
    """Autograd node for ``x = A^H y`` whose backward is ``A``."""

    @staticmethod
    def forward(ctx, y, op):
        ctx.op = op
        ctx.y_is_complex = y.is_complex()
        return op._adjoint(y)

    @staticmethod
    def backward(ctx, grad_x):
        g = ctx.op._forward(grad_x)
        if not ctx.y_is_complex and g.is_complex():
            g = g.real
        return g, None
