"""Mu-law companding, the intensity kind ``mulaw`` of ultrasound priors (modality ``us``).

Beamformed RF is signed and spans a large dynamic range (speckle, bright point targets).
Ultrasound priors (Stevens et al., "Dehazing ultrasound using diffusion models", IEEE TMI
2024) see it through a robust scale ``s`` followed by mu-law companding (mu = 255)::

    s = p_scale percentile of |x| over the data  (p_scale = 99.9; lo = -s, hi = s)
    v = x / s                                   (x physical, arbitrary RF units)
    u = C(v) = sign(v) ln(1 + mu |v|) / ln(1 + mu)            (network range)
    v = C^-1(u) = sign(u) ((1 + mu)^|u| - 1) / mu

``C`` maps [-1, 1] onto [-1, 1], is odd, strictly increasing and defined on the whole real
line, so ``C^-1(C(v)) = v`` for every v (no clipping: the inverse is exact, unlike a clipped
companding).  Works on numpy arrays and torch tensors alike.

:data:`MULAW` is registered as intensity kind ``mulaw`` (entry-point group
``medrecon.intensities``; contract in :mod:`medrecon.priors.intensity`).

>>> import numpy as np
>>> u = mulaw(np.array([-1.0, -0.01, 0.0, 0.5, 1.0, 3.0]))
>>> bool(np.allclose(mulaw_inv(u), [-1.0, -0.01, 0.0, 0.5, 1.0, 3.0]))
True
"""

from __future__ import annotations

import math

import numpy as np

from medrecon.errors import InputError

__all__ = ["MU", "SCALE_PERCENTILE", "mulaw", "mulaw_inv", "MuLaw", "MULAW"]

#: The paper's companding constant.
MU = 255.0
#: Percentile of |x| (beamformed RF) used as the robust scale s.
SCALE_PERCENTILE = 99.9


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


class MuLaw:
    """Intensity kind ``mulaw``: bound to the data as ``lo = -s, hi = s``, ``s`` the config's ``p_scale``
    percentile of ``|x|`` (in float32), companded with :func:`mulaw` (the config's ``mu``)."""

    name = "mulaw"
    bound = True
    modality = "us"

    def default(self) -> dict:
        """The intensity section of a new ultrasound prior."""
        return {"kind": "mulaw", "mu": MU, "p_scale": SCALE_PERCENTILE, "units": "arbitrary"}

    def problem(self, intensity: dict) -> str | None:
        return None if float(intensity.get("mu", 0)) > 0 else "'intensity' mulaw needs mu > 0"

    def bind(self, data, intensity: dict) -> tuple[float, float]:
        s = float(np.percentile(np.abs(np.asarray(data).astype(np.float32)),
                                intensity.get("p_scale", SCALE_PERCENTILE)))
        if not s > 0:
            raise InputError("the ultrasound data are all zero; there is no RF scale to normalise by")
        return -s, s

    def compress(self, v, intensity: dict):
        return mulaw(v, float(intensity["mu"]))

    def expand(self, u, intensity: dict):
        return mulaw_inv(u, float(intensity["mu"]))


#: The registered kind (``medrecon.intensities``: ``mulaw``).
MULAW = MuLaw()
