"""Mu-law companding, the intensity transform of ultrasound priors (modality ``us``).

Beamformed RF is signed and spans a large dynamic range (speckle, bright point targets).
Ultrasound priors (Stevens et al., "Dehazing ultrasound using diffusion models", IEEE TMI
2024) see it through a robust scale ``s`` followed by mu-law companding (mu = 255)::

    v = x / s                                   (x physical, arbitrary RF units)
    u = C(v) = sign(v) ln(1 + mu |v|) / ln(1 + mu)            (network range)
    v = C^-1(u) = sign(u) ((1 + mu)^|u| - 1) / mu

``C`` maps [-1, 1] onto [-1, 1], is odd, strictly increasing and defined on the whole real
line, so ``C^-1(C(v)) = v`` for every v (no clipping: the inverse is exact, unlike a clipped
companding).  Works on numpy arrays and torch tensors alike.

>>> import numpy as np
>>> u = mulaw(np.array([-1.0, -0.01, 0.0, 0.5, 1.0, 3.0]))
>>> bool(np.allclose(mulaw_inv(u), [-1.0, -0.01, 0.0, 0.5, 1.0, 3.0]))
True
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MU", "mulaw", "mulaw_inv"]

#: The paper's companding constant.
MU = 255.0


def _xp(a):
    if hasattr(a, "detach"):  # torch tensor
        import torch

        return torch
    return np


def mulaw(v, mu: float = MU):
    """Mu-law compression ``sign(v) ln(1 + mu |v|) / ln(1 + mu)`` (elementwise; numpy or torch)."""
    xp = _xp(v)
    return xp.sign(v) * xp.log1p(mu * xp.abs(v)) / math.log1p(mu)


def mulaw_inv(u, mu: float = MU):
    """Mu-law expansion ``sign(u) ((1 + mu)^|u| - 1) / mu``, the exact inverse of :func:`mulaw`."""
    xp = _xp(u)
    return xp.sign(u) * xp.expm1(xp.abs(u) * math.log1p(mu)) / mu
