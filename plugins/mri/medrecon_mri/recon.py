"""SENSE by conjugate gradients, as a function and as the ``sense`` sampler.

Solves, per slice, the (Tikhonov-regularised) normal equations::

    (A^H A + lam ||A||^2 I) x = A^H y

by conjugate gradients started at zero (with ``lam = 0``: CGNE, whose early stopping after
``iters`` iterations is the regulariser).  The CG is :func:`medrecon.operators.linalg.cg`:
per-slice Hermitian inner products (``sum(conj(a) b)``), so complex images are handled
exactly and a slice's result does not depend on its batch.  For a real-image operator
(``real_image=True``) the normal operator is ``Re(A^H A x)`` and the image stays real.
``lam`` is relative to ``||A||^2`` (power iteration), so it does not depend on the data
scale.  Works with any operator, not only SENSE.
"""

from __future__ import annotations

import torch

from medrecon.operators.linalg import apply_adjoint_real, cg, estimate_norm
from medrecon.operators.linalg import normal as _normal
from medrecon.samplers.base import Param, Sampler

__all__ = ["SenseCG", "sense_cg"]


def sense_cg(op, y: torch.Tensor, iters: int = 30, lam: float = 0.0, x0: torch.Tensor | None = None):
    """SENSE / CG least-squares reconstruction ``(B, *domain_shape)`` of ``y`` (see module docstring)."""
    real = not op.domain_is_complex
    with torch.no_grad():
        b = apply_adjoint_real(op, y, real)
        if not real and not b.is_complex():
            b = b.to(torch.complex128 if b.dtype == torch.float64 else torch.complex64)
        reg = float(lam) * (estimate_norm(op, device=y.device) ** 2 if lam > 0 else 0.0)

        def apply(v):
            out = _normal(op, v)
            return out + reg * v if reg > 0 else out

        start = torch.zeros_like(b) if x0 is None else x0.to(b.dtype)
        return cg(apply, b, start, int(iters))


class SenseCG(Sampler):
    """``sense``: SENSE / least squares by conjugate gradients (no prior)."""

    name = "sense"
    needs_prior = False
    per_slice = True
    default_steps = 30
    params = {
        "iters": Param(int, 30, "CG iterations (the steps argument overrides)", lo=1),
        "lam": Param(float, "auto", "Tikhonov weight relative to ||A||^2 (0: early-stopped CG; auto: chosen "
                     "per slice by cross-validation on held-out lines, 0 where the operator cannot hold out data)",
                     lo=0, auto_ok=True),
    }
    phase_free = True
    tunable = ("lam", (1e-4, 1e-3, 1e-2, 1e-1, 1.0), 0.0)

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        iters = int(steps) if steps is not None else int(self._params["iters"])
        x = sense_cg(operator, y, iters=iters, lam=self._params["lam"], x0=x_init)
        if progress is not None:
            progress(1, 1)
        return x
