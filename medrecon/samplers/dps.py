"""``dps``: Diffusion Posterior Sampling (Chung, Kim, McCann, Klasky, Ye, ICLR 2023), 2D slices.

Ancestral (DDPM) sampling with a gradient step on the measurement residual of the Tweedie
estimate, backpropagated through the network.  Per step ``t -> s`` (the previous timestep
of the grid; abar_{-1} = 1; alpha = abar_t / abar_s, beta = 1 - alpha)::

    x_t requires grad;  e = eps(x_t, t)
    x0  = clip((x_t - sqrt(1 - abar_t) e) / sqrt(abar_t), -clip, clip)           (network units)
    x'_s = sqrt(abar_s) beta / (1 - abar_t) x0 + sqrt(alpha) (1 - abar_s) / (1 - abar_t) x_t
           + sigma_t z          (z ~ N(0, I); no noise on the last step)
    x_s  = x'_s - zeta grad_{x_t} || y - A from_net(x0) || / (a ||A||)

with sigma_t^2 = beta (1 - abar_s) / (1 - abar_t) ("small", default) or beta ("large").
The residual NORM (not its square) is used, one norm per slice.  It is divided by
``a ||A||`` (a = physical units per network unit of ``from_net``, ||A|| by power
iteration) so that ``zeta`` is dimensionless: for data in [-1, 1] and a unit-norm
operator (the official setting) it is exactly the official step.  Fewer than
``T`` steps use a respaced DDPM (the betas recomputed between kept timesteps).

``clip="auto"`` (default) clamps x0 to the prior's data range: [-1, 1] for CT and ultrasound
priors (the official clamp), none for MR percentile priors, whose training images reach
beyond 1 (:func:`medrecon.samplers.prior_ops.tweedie_clip`; docs/samplers.md has the measurements).

``tv > 0`` adds a total-variation term to the data term whose gradient is followed (the
residual norm's gradient is ``grad (1/2 ||r||^2) / ||r||``, so the TV term joins the half
squared norm under the same normalisation)::

    x_s  = x'_s - zeta grad_{x_t} [1/2 ||r||^2 + tv lam_TV L_TV^2 TV_eps(from_net(x0))] / (||r|| a ||A||)

with ``r = y - A from_net(x0)`` (``||r||`` held constant in the gradient), ``lam_TV`` the weight
the ``tv`` sampler chooses for the slice (cross-validation on held-out views or lines; its
problem is ``1/(2 L_TV^2) ||A x - y||^2 + lam_TV TV(x)``, ``L_TV = 1.02 ||A||``) and
``TV_eps`` the isotropic TV smoothed by 1e-3 of the slice's robust range
(:func:`medrecon.samplers.tv.tv_value`).  ``tv = 0`` is official DPS; ``tv = 1`` weighs the TV
term as the ``tv`` sampler does.  It costs the ``tv`` sampler's weight search once per batch
(about 25 s per 256^2 CT slice on one CPU core) and one TV gradient per step.

Feature caching (``cache_interval`` N >= 2, :mod:`medrecon.priors.feature_cache`): on the steps
between two full network passes the gradient above leaves the network out by default
(``cache_jacobian="none"``: ``d x0 / d x_t = 1 / sqrt(abar_t)``, clipped pixels aside) rather
than differentiating the shallow path alone (``"shallow"``), whose partial Jacobian lost 1 dB on
CT where leaving it out lost nothing (docs/benchmarks.md, "Feature caching").

Differences from the official code (DPS2022/diffusion-posterior-sampling): its norm is
``torch.linalg.norm`` over the whole batch, which couples the slices of a batch (the step of
each slice shrinks with the others' residuals); ours sums per-slice norms.  Its network
predicts a learned variance; ours uses a fixed one.  Its scale is absolute (0.3
super-resolution / deblurring, 0.5 random inpainting, 1.0 phase retrieval; data in [-1, 1]).
"""

from __future__ import annotations

import math

import torch

from medrecon.operators.linalg import apply_forward, estimate_norm, norm_per_slice
from medrecon.priors.feature_cache import make_cache
from medrecon.priors.schedule import ddim_timesteps, diffuse, tweedie_x0_scalar
from medrecon.samplers.base import CACHE_PARAM, PHASE_PARAM, Param, Sampler
from medrecon.samplers.phase import phase_from_data
from medrecon.samplers.prior_ops import (
    as_image,
    net_scale,
    prior_eps,
    sample_dtype,
    to_net_real,
    tweedie_clip,
)
from medrecon.streams import randn_per_slice

__all__ = ["DPS"]


class DPS(Sampler):
    """Diffusion posterior sampling: DDPM + zeta * gradient of the residual norm."""

    name = "dps"
    needs_prior = True
    per_slice = True
    default_steps = 1000
    params = {
        "zeta": Param(float, 1.0, "step on grad ||y - A x0_hat|| / (a ||A||) (dimensionless)", lo=0),
        "clip": Param(float, "auto", "clamp the Tweedie estimate to [-clip, clip] in network units (None: no; "
                      "auto: 1 for CT / US priors, off for MR percentile priors)", lo=0, lo_open=True,
                      none_ok=True, auto_ok=True),
        "phase": PHASE_PARAM,
        "cache_interval": CACHE_PARAM,
        "cache_jacobian": Param(str, "none", "what a cached step's data gradient differentiates: none = no network "
                                "Jacobian (d x0_hat / d x_t = 1 / sqrt(abar_t)), shallow = the shallow path's",
                                choices=("none", "shallow")),
        "tv": Param(float, 0.0, "weight of a TV term in the data term DPS follows, relative to the per-study weight "
                    "the tv sampler chooses (0: official DPS)", lo=0),
        "variance": Param(str, "small", "ancestral variance: small = posterior beta-tilde, large = beta",
                          choices=("small", "large")),
        "spacing": Param(str, "linspace", "timestep spacing when steps < T", choices=("leading", "trailing",
                                                                                     "linspace")),
    }

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        if self._params["phase"] == "data":  # raw MRI: the image phase from the data (samplers.phase)
            operator = phase_from_data(operator, y)
        p = self._params
        T = int(prior.num_timesteps)
        steps = self.resolve_steps(steps, prior)
        cache = make_cache(p["cache_interval"], jacobian=p["cache_jacobian"])  # this call's own (feature_cache)
        ts = ddim_timesteps(steps, T, p["spacing"]).tolist() if steps < T else list(range(T - 1, -1, -1))
        dev, dtype = y.device, sample_dtype(y)
        abar = prior.alphas_cumprod.to(device=dev, dtype=torch.float64)
        B, shape = y.shape[0], tuple(operator.domain_shape)
        zeta, clip = p["zeta"], tweedie_clip(prior, p["clip"])
        with torch.no_grad():
            L = estimate_norm(operator, device=dev, real_domain=True)
            z = randn_per_slice(generators, shape, device=dev, dtype=dtype)
            scale = net_scale(prior, z) * max(L, 1e-30)  # (B,)
            tv_w = None
            if p["tv"] > 0:  # the TV term of the module docstring: weight and smoothing per slice
                from medrecon.samplers.tv import study_tv_weights, tv_value

                lam, rng = study_tv_weights(y, operator, p["tv"], dtype, "dps tv lam")
                tv_w, tv_eps = lam * (1.02 * L) ** 2, 1e-3 * rng
            a0 = float(abar[ts[0]])
            if x_init is not None:
                x = diffuse(to_net_real(prior, x_init.to(dtype)), z, a0)
            else:
                x = z
        for i, t in enumerate(ts):
            s = ts[i + 1] if i + 1 < len(ts) else -1
            a_t = float(abar[t])
            a_s = float(abar[s]) if s >= 0 else 1.0
            alpha = a_t / a_s
            beta = 1 - alpha
            tt = torch.full((B,), t, dtype=torch.long, device=dev)
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                e = prior_eps(prior, x, tt, cache).to(dtype)
                x0 = tweedie_x0_scalar(x, e, a_t)
                if clip is not None:
                    x0 = x0.clamp(-clip, clip)
                img = prior.from_net(x0)
                r = y - apply_forward(operator, img)
                r2 = norm_per_slice(r) ** 2
                if tv_w is None:
                    obj = torch.sqrt(r2 + 1e-30) / scale
                else:  # d||r|| = d(||r||^2 / 2) / ||r||: the TV term joins the half squared norm
                    tv = tv_value(img.real if img.is_complex() else img, [-2, -1], tv_eps)
                    obj = (0.5 * r2 + tv_w * tv) / (torch.sqrt(r2.detach() + 1e-30) * scale)
                (grad,) = torch.autograd.grad(obj.sum(), x)
            with torch.no_grad():
                x0 = x0.detach()
                mean = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (math.sqrt(alpha) * (1 - a_s) / (1 - a_t)) * x
                if s >= 0:
                    var = beta * (1 - a_s) / (1 - a_t) if p["variance"] == "small" else beta
                    noise = randn_per_slice(generators, shape, device=dev, dtype=dtype)
                    mean = mean + math.sqrt(var) * noise
                x = mean - zeta * grad
            if progress is not None:
                progress(i + 1, len(ts))
        with torch.no_grad():
            return as_image(prior.from_net(x.detach()), operator, dtype)
