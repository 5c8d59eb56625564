"""``dds3d``: the Decomposed Diffusion Sampler (Chung, Lee, Ye, ICLR 2024) for volumes.

DDS's DDIM loop (see :mod:`medrecon.samplers.dds`) in which the clean-space data
consistency is the DiffusionMBIR ADMM-TV_z step
(:class:`~medrecon.samplers.admm_tvz.ADMMTVz`: a few CG iterations on
``(A^H A / L^2 + rho D_z^T D_z [+ I/gamma]) x = A^H y / L^2 + rho D_z^T (w - u) [+ x0/gamma]``
started at the Tweedie estimate, then the shrink and dual update; ``w``, ``u`` shared over
all steps), as in the official ``solver_3d.py``.  Per step ``t -> s``::

    e   = eps(x_t, t)                      (network calls in chunks of net_batch slices)
    x0  = from_net((x_t - sqrt(1 - abar_t) e) / sqrt(abar_t))
    x0~ = ADMM-TV_z(x0)
    x_s = sqrt(abar_s) to_net(x0~) + sqrt(1 - abar_s) (eta z + sqrt(1 - eta^2) e)

and the last step returns ``x0~``.  All slices move in lockstep (``per_slice`` False).
With ``lam = 0`` and a tiny ``rho`` it reduces to slice-wise DDS with the same ``gamma``.
It also takes a true 3D operator on a (Z, H, W) volume (``ct.cone``): the prior runs on the
axial slices, the ADMM step on the whole volume (see
:class:`~medrecon.samplers.admm_tvz.VolumeDiffusionSampler` and docs/samplers3d.md).
"""

from __future__ import annotations

import math

from medrecon.samplers.admm_tvz import ADMM_TVZ_PARAMS, VolumeDiffusionSampler
from medrecon.samplers.base import Param

__all__ = ["DDS3D"]


class DDS3D(VolumeDiffusionSampler):
    """DDS with ADMM-TV_z data consistency on the whole volume."""

    name = "dds3d"
    needs_prior = True
    default_steps = 50
    params = {
        **ADMM_TVZ_PARAMS,
        "cg_iters": Param(int, 5, "CG iterations of the ADMM x-update per step", lo=1),
        "gamma": Param(float, 100.0, "proximal weight to the Tweedie estimate, relative to ||A||^2 "
                       "(None: none, as the official code)", lo=0, lo_open=True, none_ok=True),
        "eta": Param(float, 0.85, "DDS stochasticity: weight of fresh noise (0: deterministic DDIM)", lo=0, hi=1),
        "spacing": Param(str, "leading", "timestep spacing over the training grid (leading = official DDS)",
                         choices=("leading", "trailing", "linspace")),
    }

    def _renoise(self, x0_net, e, a_t, a_s, noise):
        eta = float(self._params["eta"])
        out = math.sqrt(a_s) * x0_net + math.sqrt(1 - a_s) * math.sqrt(1 - eta**2) * e
        if noise is not None:
            out = out + math.sqrt(1 - a_s) * eta * noise
        return out
