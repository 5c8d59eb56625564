"""``mbir3d``: DiffusionMBIR (Chung, Ryu, McCann, Klasky, Ye, CVPR 2023) on our VP priors.

A 2D diffusion prior on the axial slices and total variation along z, coupled once per
diffusion step by ONE ADMM iteration with ONE conjugate-gradient iteration
(:class:`~medrecon.samplers.admm_tvz.ADMMTVz`; the split variable and the dual persist
across all steps, "variable sharing").  All slices move in lockstep (``per_slice`` False);
the network calls are split into chunks of ``net_batch`` slices, the volume is not.

Adaptation from the paper's VE-SDE predictor-corrector to a VP epsilon prior.  The
official code runs 2000 VE reverse-diffusion (predictor) steps, each followed by one
Langevin corrector step, and applies the ADMM step to the noisy sample x_{i-1} directly.
Our priors are VP (x_t = sqrt(abar) x0 + sqrt(1 - abar) e), where a noisy sample is a
scaled image plus noise, so we apply the ADMM step to the Tweedie (clean) estimate and
re-noise with a DDIM step whose x0 is the corrected one::

    e   = eps(x_t, t);  x0 = from_net((x_t - sqrt(1 - abar_t) e) / sqrt(abar_t))
    x0~ = ADMM-TV_z(x0)                     (1 CG iteration, shared w, u)
    x_s = sqrt(abar_s) to_net(x0~) + sqrt(1 - abar_s - sigma^2) e + sigma z
    sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)

(eta = 1: DDPM ancestral sampling, the VP analogue of the VE predictor; the default).  Why
the clean estimate: (a) TV along z is a prior on images, not on noisy images, and a shrink
of D_z x_t at high noise would mostly act on the noise; (b) a data term ||A x - y|| is
meaningful for x0 only (x_t / sqrt(abar_t) carries noise of variance (1 - abar_t)/abar_t
that A^H A would project into the data); (c) the correction is carried into x_s with its
full weight sqrt(abar_s) (the DDPM posterior mean written with the network's e, not with
the e recomputed from x0~, which would scale it by beta_t/(1 - abar_t)).  It is what DDS
(the same authors' successor) does, so ``mbir3d`` and ``dds3d`` differ in the number of
steps, the CG iterations per step and the re-noising rule, not in where the ADMM acts.  No
Langevin corrector: it would double the network calls; use more steps instead.

A true 3D operator on a (Z, H, W) volume (``ct.cone``) works too: the prior runs on the
axial slices, the ADMM step on the whole volume with the 3D operator (see
:class:`~medrecon.samplers.admm_tvz.VolumeDiffusionSampler` and docs/samplers3d.md).
"""

from __future__ import annotations

from medrecon.priors.schedule import ddim_step
from medrecon.samplers.admm_tvz import ADMM_TVZ_PARAMS, VolumeDiffusionSampler
from medrecon.samplers.base import Param

__all__ = ["MBIR3D"]


class MBIR3D(VolumeDiffusionSampler):
    """DiffusionMBIR: DDPM/DDIM steps on every slice + one ADMM-TV_z iteration on the volume."""

    name = "mbir3d"
    needs_prior = True
    default_steps = 1000
    params = {
        **ADMM_TVZ_PARAMS,
        "cg_iters": Param(int, 1, "CG iterations of the ADMM x-update per step (paper: 1)", lo=1),
        "gamma": Param(float, None, "proximal weight to the diffusion sample, relative to ||A||^2 "
                       "(None: none, as the paper)", lo=0, lo_open=True, none_ok=True),
        "eta": Param(float, 1.0, "DDIM eta of the re-noising (1: DDPM ancestral, 0: deterministic)", lo=0, hi=1),
        "spacing": Param(str, "leading", "timestep spacing over the training grid",
                         choices=("leading", "trailing", "linspace")),
    }

    def _renoise(self, x0_net, e, a_t, a_s, noise):
        return ddim_step(x0_net, e, a_t, a_s, eta=float(self._params["eta"]), noise=noise,
                         x0=x0_net)
