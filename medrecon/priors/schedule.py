"""Variance-preserving noise schedules and the DDIM / DPM-Solver++ helpers samplers reuse.

Notation (the same as :mod:`medrecon.priors.protocol`)::

    abar_t = prod_{s<=t} (1 - beta_s),                    t = 0 .. T-1
    x_t    = sqrt(abar_t) x_0 + sqrt(1 - abar_t) e,       e ~ N(0, I)
    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (Tweedie)

Everything here is plain torch on float64 schedules and works on any device; none of
it needs a network, so samplers (DPS, DDS, RED-Diff in :mod:`medrecon.samplers`) import
these functions and pass in ``prior.alphas_cumprod`` and ``prior.eps``.

Functions
---------
make_schedule(kind, num_timesteps)       -> abar (float64, (T,))
ddim_timesteps(num_steps, T, spacing)    -> descending int64 steps, first ~T-1, last 0
tweedie_x0(x_t, eps, abar_t)             -> x0_hat
tweedie_x0_scalar(x_t, eps, abar_t: float) -> x0_hat (one timestep, float abar: the samplers)
diffuse(x0, z, abar_t: float)            -> x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) z
ddim_renoise(x0, eps, abar_s, eta, z)    -> x_s (DDS re-noising of a data-consistent x0)
eps_from_x0(x_t, x0, abar_t)             -> eps consistent with (x_t, x0)
ddim_step(x_t, eps, abar_t, abar_prev, eta, noise) -> x_{prev}
dpmpp2m_sample(eps_fn, x_T, abar, timesteps) -> x_0 (DPM-Solver++ 2M, data prediction)
ddim_sample(eps_fn, x_T, abar, timesteps, eta, generator) -> x_0
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from medrecon.errors import InputError

SCHEDULES = ("linear", "cosine")


def make_schedule(
    kind: str = "linear",
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
) -> torch.Tensor:
    """Cumulative products ``abar_t`` (float64, shape (T,)), strictly decreasing in t.

    ``linear``: beta_t = linspace(beta_start, beta_end, T) (DDPM, Ho et al. 2020).
    ``cosine``: abar(t) = f(t)/f(0), f(t) = cos(((t/T + s)/(1 + s)) pi/2)^2 with betas
    clipped to 0.999 (Nichol & Dhariwal 2021); abar_0 is about 0.99996 and abar_{T-1}
    about 4e-9 (ends almost at pure noise), where linear ends at about 4e-5.
    """
    if num_timesteps < 2:
        raise InputError(f"num_timesteps must be at least 2, got {num_timesteps}")
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    elif kind == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    else:
        raise InputError(f"unknown noise schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
    return torch.cumprod(1 - betas, dim=0)


def ddim_timesteps(num_steps: int, num_timesteps: int = 1000, spacing: str = "trailing") -> torch.Tensor:
    """Descending integer timesteps for a ``num_steps`` sampler over a ``num_timesteps`` schedule.

    ``trailing`` (default; Lin et al. 2023): round(linspace(T, 0, n, endpoint=False)) - 1,
    so the first step is T-1 (pure noise) and the last is about T/n - 1.
    ``leading`` (original DDIM): arange(0, T, T//n) reversed, last step 0.
    ``linspace``: round(linspace(T-1, 0, n)), first T-1 and last 0.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise InputError(f"num_steps must be in 1..{num_timesteps}, got {num_steps}")
    if spacing == "trailing":
        t = torch.round(torch.arange(num_timesteps, 0, -num_timesteps / num_steps, dtype=torch.float64)) - 1
    elif spacing == "leading":
        t = torch.arange(0, num_steps, dtype=torch.float64) * (num_timesteps // num_steps)
        t = t.flip(0)
    elif spacing == "linspace":
        t = torch.round(torch.linspace(num_timesteps - 1, 0, num_steps, dtype=torch.float64))
    else:
        raise InputError(f"unknown timestep spacing {spacing!r}; use trailing, leading or linspace")
    return t.to(torch.int64)


def _bc(a, like: torch.Tensor) -> torch.Tensor:
    """abar as a tensor broadcastable to ``like`` (scalar or per-batch (B,))."""
    a = torch.as_tensor(a, dtype=torch.float64, device=like.device)
    if a.ndim == 1:
        a = a.view(-1, *([1] * (like.ndim - 1)))
    return a.to(like.dtype)


def tweedie_x0(x_t: torch.Tensor, eps: torch.Tensor, abar_t) -> torch.Tensor:
    """Posterior mean of x_0: ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``; abar_t scalar or (B,)."""
    a = _bc(abar_t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar_t) -> torch.Tensor:
    """The noise consistent with ``x_t`` and ``x0``: ``(x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``."""
    a = _bc(abar_t, x_t)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


# ------------------------------------------------ one timestep for the whole batch (float abar)
# The samplers step all slices of a batch through the same timestep and pass ``abar`` as a
# Python float: these forms take the square roots in double precision (``math.sqrt``) and
# scale the tensors by the rounded scalars, which is not bit-identical to the tensor forms
# above (there the square roots are taken in the image's dtype).


def diffuse(x0: torch.Tensor, z, abar_t: float) -> torch.Tensor:
    """The forward (noising) process at one timestep, ``abar_t`` a float::

        x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) z

    ``z`` is standard Gaussian noise (network units, like ``x0``).
    """
    return math.sqrt(abar_t) * x0 + math.sqrt(1 - abar_t) * z


def tweedie_x0_scalar(x_t: torch.Tensor, eps: torch.Tensor, abar_t: float) -> torch.Tensor:
    """Tweedie's estimate of the clean image from ``x_t`` and the predicted noise (network
    units) at one timestep, ``abar_t`` a float (:func:`tweedie_x0` takes tensors)::

        x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    """
    return (x_t - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)


def ddim_renoise(x0: torch.Tensor, eps: torch.Tensor, abar_s: float, eta: float, z) -> torch.Tensor:
    """DDS's re-noising of a (data-consistent) clean estimate to timestep ``s``::

        x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) (eta z + sqrt(1 - eta^2) eps)

    ``z`` is fresh Gaussian noise (or 0 when ``eta`` is 0): eta = 1 uses fresh noise only,
    eta = 0 reuses the predicted noise (deterministic DDIM).
    """
    return math.sqrt(abar_s) * x0 + math.sqrt(1 - abar_s) * (eta * z + math.sqrt(1 - eta**2) * eps)


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    abar_t,
    abar_prev,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM update from step t to the previous step (Song et al. 2021, eq. 12).

    sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev);
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise.
    ``x0`` defaults to the Tweedie estimate; pass a data-consistent x0 (DDS) to replace it.
    eta = 0 is deterministic; eta = 1 is DDPM-like ancestral sampling.  ``abar_prev`` = 1
    gives the final clean step.
    """
    a_t = _bc(abar_t, x_t)
    a_p = _bc(abar_prev, x_t)
    if x0 is None:
        x0 = tweedie_x0(x_t, eps, abar_t)
    sigma = eta * ((1 - a_p) / (1 - a_t)).sqrt() * (1 - a_t / a_p).clamp(min=0).sqrt()
    out = a_p.sqrt() * x0 + (1 - a_p - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            noise = torch.randn_like(x_t)
        out = out + sigma * noise
    return out


def _prev_abar(abar: torch.Tensor, timesteps: torch.Tensor, i: int) -> torch.Tensor:
    return abar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones((), dtype=abar.dtype)


def ddim_sample(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    abar: torch.Tensor,
    timesteps: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip: float | None = None,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Unconditional DDIM from ``x_T`` along descending ``timesteps``; returns x_0 (network range).

    ``clip`` clamps the Tweedie estimate to [-clip, clip] each step (None: no clamp).
    """
    x = x_T
    for i, t in enumerate(timesteps.tolist()):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = eps_fn(x, tt)
        x0 = tweedie_x0(x, eps, abar[t])
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = eps_from_x0(x, x0, abar[t])
        noise = None
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = ddim_step(x, eps, abar[t], _prev_abar(abar, timesteps, i), eta=eta, noise=noise, x0=x0)
        if callback is not None:
            callback(i)
    return x


def dpmpp2m_sample(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    abar: torch.Tensor,
    timesteps: torch.Tensor,
    clip: float | None = None,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), multistep second order in data prediction (Lu et al. 2022, Alg. 2).

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t/sigma_t)
    and h_i = lambda_{t_i} - lambda_{t_{i-1}}:
    x_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) x - alpha_{t_i} (e^{-h_i} - 1) D_i, where
    D_i = x0_{i-1} for the first step and (1 + 1/(2 r)) x0_{i-1} - 1/(2 r) x0_{i-2} after,
    r = h_{i-1}/h_i.  The last step goes to abar = 1 (returns the last data prediction).
    """
    x = x_T
    x0_prev = None
    h_prev = None
    ts = timesteps.tolist()
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = eps_fn(x, tt)
        x0 = tweedie_x0(x, eps, abar[t])
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        if i + 1 == len(ts):
            x = x0
        else:
            a_s, a_t = abar[t], abar[ts[i + 1]]
            lam_s = 0.5 * torch.log(a_s / (1 - a_s))
            lam_t = 0.5 * torch.log(a_t / (1 - a_t))
            h = float(lam_t - lam_s)
            sig_ratio = float(((1 - a_t) / (1 - a_s)).sqrt())
            alpha_t = float(a_t.sqrt())
            if x0_prev is None:
                d = x0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = sig_ratio * x - alpha_t * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i)
    return x
