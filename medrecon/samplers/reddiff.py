"""``reddiff``: RED-Diff (Mardani, Song, Kautz, Vahdat, 2023), variational, 2D slices.

Optimises the mean ``mu`` (network units) of q(x | y) with Adam, visiting the timesteps
in descending order; no backpropagation through the network.  Per step t::

    z ~ N(0, I);  x_t = sqrt(abar_t) mu + sqrt(1 - abar_t) z;   e = eps(x_t, t)  (detached)
    loss = mean |(y - A from_net(mu)) / (a ||A||)|^2 / 2  +  lam w(t) mean((e - z) * mu)
    mu <- Adam step on loss

with w(t) = sqrt(1 - abar_t) / sqrt(abar_t) ("linear", the inverse SNR; "sqrt" uses its
square root, "square" its square, "const" 1).  Means are per slice (measurement entries for
the data term, pixels for the regulariser); the loss of a batch is the SUM of per-slice
losses, so Adam (elementwise) treats each slice independently.  ``mu`` starts at
``to_net(operator.classical(y))`` (or ``x_init``); the result is ``from_net(mu)``.

Units: the residual is divided by ``a ||A||`` (a = physical units per network unit of
``from_net``, ||A|| by power iteration), i.e. expressed in network units under a unit-norm
operator -- exactly the official setting (data in [-1, 1], inpainting / super-resolution
operators of norm about 1), so the official ``lam`` and ``lr`` keep their meaning for
operators of any scale (CT line integrals, k-space) and any physical units.

Differences from the official code (NVlabs/RED-diff, algos/reddiff.py): its batch loss
is a mean over the batch (the gradients shrink with the batch size, which Adam mostly but
not exactly undoes); its data term has no scale normalisation; its ``sigma_x0`` option
(noise added to mu) is not implemented (its default is 0).
"""

from __future__ import annotations

import math

import torch

from medrecon.operators.linalg import apply_forward, estimate_norm
from medrecon.priors.feature_cache import make_cache
from medrecon.priors.schedule import ddim_timesteps, diffuse
from medrecon.samplers.base import CACHE_PARAM, PHASE_PARAM, Param, Sampler
from medrecon.samplers.phase import phase_from_data
from medrecon.samplers.prior_ops import as_image, net_scale, prior_eps, sample_dtype, to_net_real
from medrecon.streams import randn_per_slice

__all__ = ["REDDiff"]


class REDDiff(Sampler):
    """RED-Diff: Adam on mu with the denoising-score regulariser lam w(t) (e - z) . mu."""

    name = "reddiff"
    needs_prior = True
    per_slice = True
    default_steps = 50
    params = {
        "lr": Param(float, 0.1, "Adam learning rate (network units)", lo=0, lo_open=True),
        "lam": Param(float, 0.25, "regulariser weight lambda", lo=0),
        "phase": PHASE_PARAM,
        "cache_interval": CACHE_PARAM,
        "weight": Param(str, "linear", "w(t): linear = sqrt(1-abar)/sqrt(abar), sqrt, square, const",
                        choices=("linear", "sqrt", "square", "const")),
        "spacing": Param(str, "leading", "timestep spacing over the training grid", choices=("leading",
                                                                                            "trailing",
                                                                                            "linspace")),
    }

    def _w(self, a: float) -> float:
        snr_inv = math.sqrt(1 - a) / math.sqrt(a)
        kind = self._params["weight"]
        if kind == "linear":
            return snr_inv
        if kind == "sqrt":
            return math.sqrt(snr_inv)
        if kind == "square":
            return snr_inv**2
        return 1.0

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        if self._params["phase"] == "data":  # raw MRI: the image phase from the data (samplers.phase)
            operator = phase_from_data(operator, y)
        p = self._params
        T = int(prior.num_timesteps)
        steps = self.resolve_steps(steps, prior)
        cache = make_cache(p["cache_interval"])  # this call's own (medrecon.priors.feature_cache)
        ts = ddim_timesteps(steps, T, p["spacing"]).tolist()
        dev, dtype = y.device, sample_dtype(y)
        abar = prior.alphas_cumprod.to(device=dev, dtype=torch.float64)
        B, shape = y.shape[0], tuple(operator.domain_shape)
        with torch.no_grad():
            L = estimate_norm(operator, device=dev, real_domain=True)
            start = x_init if x_init is not None else operator.classical(y)
            mu0 = to_net_real(prior, start.to(dev)).to(dtype)
            scale = (net_scale(prior, mu0) * max(L, 1e-30)).view(B, *([1] * (y.ndim - 1)))
        mu = mu0.clone().requires_grad_(True)
        opt = torch.optim.Adam([mu], lr=p["lr"], betas=(0.9, 0.99))
        for i, t in enumerate(ts):
            a = float(abar[t])
            tt = torch.full((B,), t, dtype=torch.long, device=dev)
            with torch.no_grad():
                z = randn_per_slice(generators, shape, device=dev, dtype=dtype)
                xt = diffuse(mu, z, a)
                e = prior_eps(prior, xt, tt, cache).to(dtype)
            with torch.enable_grad():
                r = (y - apply_forward(operator, prior.from_net(mu))) / scale
                r2 = r.abs() ** 2 if r.is_complex() else r**2
                loss_obs = r2.reshape(B, -1).mean(dim=1) / 2
                loss_reg = ((e - z) * mu).reshape(B, -1).mean(dim=1)
                loss = (loss_obs + p["lam"] * self._w(a) * loss_reg).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            if progress is not None:
                progress(i + 1, len(ts))
        with torch.no_grad():
            return as_image(prior.from_net(mu.detach()), operator, dtype)
