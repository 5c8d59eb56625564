"""``dehaze``: joint diffusion sampling of tissue and haze (Stevens et al., IEEE TMI 2024).

The measurement is a hazy beamformed RF image ``y = x + h`` (operator ``us.haze``, or any
operator whose image has the two components ``("tissue", "haze")``).  Two diffusion priors
move together: the tissue prior (the one the engine passes, ``--prior us-tissue``) on ``x``
and the haze prior (parameter ``haze_prior``, default ``us-haze``) on ``h``.  Per step
``t -> s`` (DDIM grid, s the next smaller timestep)::

    e_x = eps_x(x_t, t)              e_h = eps_h(h_t, t)                       (two networks)
    X   = from_net_x(Tweedie(x_t, e_x))   H = from_net_h(Tweedie(h_t, e_h))   (physical units)
    [X~; H~] = argmin  ||x - X||^2 / v_x + ||h - H||^2 / v_h + g ||y - A [x; h]||^2   (per pixel)
    x_s = sqrt(abar_s) to_net_x(X~) + sqrt(1 - abar_s) (eta z_x + sqrt(1 - eta^2) e_x)
    h_s = sqrt(abar_s) to_net_h(H~) + sqrt(1 - abar_s) (eta z_h + sqrt(1 - eta^2) e_h)

and the last step returns ``[X~; H~]`` (physical units, ``(B, 2, nz, nx)``).  The joint
data-consistency step is a weighted least-squares projection; for the sum
``A [x; h] = x + h`` it is, per pixel::

    r = y - X - H,    d = g r / (1 + g (v_x + v_h)),    X~ = X + v_x d,    H~ = H + v_h d

(other component operators: conjugate gradients, ``cg_iters``).  ``v_x, v_h`` are the
relative variances of the two Tweedie estimates in physical units: ``kappa_c slope_c^2`` with
``slope_c = d from_net_c / du`` at the estimate (both networks share one schedule, so a
network-range error turns into a physical error through the local slope of the intensity
map; with mu-law companding a large value is far less certain than a small one), scaled per
pixel to sum to ``1 + kappa``.  ``kappa = (1, haze_weight)``.  For affine intensity maps
(Gaussian test priors) ``v = (1, kappa)`` and the step is
``X~ = X + g r / (1 + g (1 + kappa))``, ``H~ = H + kappa g r / (1 + g (1 + kappa))``.

``g = gamma / ||A||^2`` (``gamma`` dimensionless, as in ``dds``; both terms are in the
squared units of y).  ``gamma -> inf`` enforces ``X~ + H~ = y``; the split of the residual
follows the variances, and the priors decide, step after step, which structure is tissue
and which is haze.  ``kappa`` (``haze_weight``) plays the part of the paper's
per-component guidance weights.  (With equal constant variances instead of the slopes,
mu-law priors fail on real data: the tissue takes half of a strong haze's residual at every
step, and the wire phantom's gCNR collapsed from 0.78 to 0.16 in our measurement.)

Intensity: both priors work in their network range (mu-law companded RF for the shipped
``us`` priors, :mod:`medrecon_us.intensity`); data consistency is done in physical units
through ``from_net`` / ``to_net``.  The haze prior is bound to the tissue prior's RF scale
(``lo = -s, hi = s``: both components are in the units of y).  A ``mulaw`` tissue prior that
is not bound yet (Python use without the engine) is bound per slice to
``s = p99.9(|y_b|)``, so results never depend on the batch.

Differences from the official method: the paper guides each component with a
diffusion-posterior-sampling gradient through the networks (one backward pass per prior
per step); here the guidance is the DDS-style projection of the Tweedie estimates (no
backpropagation, two network calls per step), which the Gaussian-prior test checks
against the analytic posterior mean.  Randomness: every number of slice ``b`` comes from
``generators[b]`` (``randn_per_slice``), so a slice's result does not depend on the batch.
"""

from __future__ import annotations

import math

import torch

from medrecon.errors import InputError
from medrecon.operators.linalg import cg, estimate_norm
from medrecon.priors.schedule import ddim_renoise, ddim_timesteps
from medrecon.priors.schedule import tweedie_x0_scalar as tweedie_x0
from medrecon.samplers.base import Param, Sampler
from medrecon.samplers.prior_ops import prior_eps, sample_dtype
from medrecon.streams import randn_per_slice

__all__ = ["Dehaze", "COMPONENTS"]

#: The image components this sampler expects, in order.
COMPONENTS = ("tissue", "haze")


class Dehaze(Sampler):
    """Joint tissue + haze diffusion sampler (module docstring)."""

    name = "dehaze"
    needs_prior = True
    per_slice = True
    handles_components = True
    default_steps = 50
    params = {
        "haze_prior": Param(str, "us-haze", "haze prior: a name (us-haze) or a prior folder"),
        "eta": Param(float, 0.85, "stochasticity: weight of fresh noise (0: deterministic DDIM)", lo=0, hi=1),
        "gamma": Param(float, 100.0, "data weight relative to ||A||^2 in the joint projection", lo=0,
                       lo_open=True),
        "haze_weight": Param(float, 1.0, "kappa: share of the residual the haze takes relative to the tissue",
                             lo=0, lo_open=True),
        "cg_iters": Param(int, 10, "CG iterations of the projection (operators other than the sum x + h)", lo=1),
        "spacing": Param(str, "trailing", "timestep spacing over the training grid",
                         choices=("leading", "trailing", "linspace")),
        "clip": Param(float, 1.5, "clamp Tweedie estimates to [-clip, clip] in network units (None: no)",
                      lo=0, lo_open=True, none_ok=True),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self._haze_cache: dict = {}
        self._haze_object = None

    def with_haze_prior(self, prior) -> Dehaze:
        """Use the prior object ``prior`` for the haze (Python API; e.g. a Gaussian test prior).

        Returns ``self``.  ``spec()`` then records ``haze_prior`` as ``"<object>"``: such a
        sampler cannot be rebuilt from its spec.
        """
        if not hasattr(prior, "eps") or not hasattr(prior, "alphas_cumprod"):
            raise InputError("the haze prior must be a diffusion prior (with eps and alphas_cumprod)")
        self._haze_object = prior
        self._params["haze_prior"] = "<object>"
        return self

    # ------------------------------------------------------------------ priors
    def _haze_prior(self, device):
        if self._haze_object is not None:
            return self._haze_object
        key = (self._params["haze_prior"], str(device))
        if key not in self._haze_cache:
            from medrecon.priors.model import load_prior

            self._haze_cache[key] = load_prior(self._params["haze_prior"], device=str(device))
        return self._haze_cache[key]

    @staticmethod
    def _needs_binding(prior) -> bool:
        cfg = getattr(prior, "config", None)
        kind = (cfg.get("intensity") or {}).get("kind") if isinstance(cfg, dict) else None
        return kind in ("percentile", "mulaw")

    def _bound_priors(self, y, prior, haze):
        """Tissue and haze priors on one RF scale (module docstring)."""
        if self._needs_binding(prior) and getattr(prior, "_lo", None) is None:
            from medrecon_us.intensity import SCALE_PERCENTILE

            p = float(prior.config["intensity"].get("p_scale", SCALE_PERCENTILE))
            s = torch.quantile(y.detach().abs().reshape(y.shape[0], -1).double(), p / 100, dim=1)
            if bool((s <= 0).any()):
                raise InputError("a hazy RF image is all zero; there is no scale to normalise by")
            prior = prior.with_intensity(-s.to(y.device), s.to(y.device))
        if self._needs_binding(haze) and hasattr(haze, "with_intensity"):
            lo, hi = getattr(prior, "_lo", None), getattr(prior, "_hi", None)
            if lo is None or hi is None:
                raise InputError("the haze prior needs an RF scale but the tissue prior has none; "
                                 "use a us tissue prior (us-tissue)")
            haze = haze.with_intensity(lo, hi)
        return prior, haze

    # ------------------------------------------------------------------ sampling
    def sample(self, y, operator, prior=None, **kw):
        comps = tuple(getattr(operator, "component_names", ()) or ())
        if comps != COMPONENTS:
            raise InputError(f"sampler 'dehaze' needs an operator whose image is (tissue, haze), such as us.haze; "
                             f"{getattr(operator, 'name', type(operator).__name__)!r} has components "
                             f"{list(comps) or 'none'}")
        return super().sample(y, operator, prior, **kw)

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        p = self._params
        haze = self._haze_prior(y.device)
        if hasattr(haze, "autocast"):  # the haze network follows the tissue prior's precision (engine's amp)
            haze.autocast = bool(getattr(prior, "autocast", True))
        T = int(prior.num_timesteps)
        if int(haze.num_timesteps) != T or not torch.allclose(
                haze.alphas_cumprod.detach().double().cpu(), prior.alphas_cumprod.detach().double().cpu()):
            raise InputError("the tissue and haze priors must share one noise schedule")
        prior, haze = self._bound_priors(y, prior, haze)
        steps = min(int(steps) if steps is not None else self.default_steps, T)
        ts = ddim_timesteps(steps, T, p["spacing"]).tolist()
        dev, dtype = y.device, sample_dtype(y)
        abar = prior.alphas_cumprod.to(device=dev, dtype=torch.float64)
        B, shape = y.shape[0], tuple(operator.domain_shape)
        eta, clip, kappa = p["eta"], p["clip"], p["haze_weight"]
        priors = (prior, haze)
        with torch.no_grad():
            g = p["gamma"] / max(estimate_norm(operator, device=dev), 1e-30) ** 2
            y = y.to(dtype)
            is_sum = _is_sum(operator, dev, dtype)

            z = randn_per_slice(generators, shape, device=dev, dtype=dtype)
            a0 = float(abar[ts[0]])
            if x_init is not None:
                x0n = torch.stack([pr.to_net(x_init[:, c].to(dtype)) for c, pr in enumerate(priors)], 1)
                x = math.sqrt(a0) * x0n + math.sqrt(1 - a0) * z
            else:
                x = z
            dc = None
            for i, t in enumerate(ts):
                tt = torch.full((B,), t, dtype=torch.long, device=dev)
                a_t = float(abar[t])
                e = torch.stack([prior_eps(pr, x[:, c], tt).to(dtype) for c, pr in enumerate(priors)], 1)
                x0 = tweedie_x0(x, e, a_t)
                if clip is not None:
                    x0 = x0.clamp(-clip, clip)
                phys = torch.stack([pr.from_net(x0[:, c]) for c, pr in enumerate(priors)], 1)
                v = _variances(priors, x0, kappa)
                dc = _project(operator, y, phys, v, g, is_sum, p["cg_iters"])
                if i + 1 == len(ts):
                    break
                a_s = float(abar[ts[i + 1]])
                dcn = torch.stack([pr.to_net(dc[:, c]) for c, pr in enumerate(priors)], 1)
                zn = randn_per_slice(generators, shape, device=dev, dtype=dtype) if eta > 0 else 0.0
                x = ddim_renoise(dcn, e, a_s, eta, zn)
                if progress is not None:
                    progress(i + 1, len(ts))
            if progress is not None:
                progress(len(ts), len(ts))
        if not bool(torch.isfinite(dc).all()):
            raise InputError("dehaze produced NaN or infinite values; lower gamma or set clip")
        return dc


def _is_sum(operator, dev, dtype) -> bool:
    """Whether ``A [x; h] = x + h`` (checked on a random probe): then the projection has a closed form."""
    if tuple(operator.range_shape) != tuple(operator.domain_shape[1:]):
        return False
    z = torch.randn((1, *operator.domain_shape), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    z = z.to(device=dev, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    return bool(torch.allclose(operator.forward(z), z[:, 0] + z[:, 1], atol=tol, rtol=tol))


def _variances(priors, x0n: torch.Tensor, kappa: float) -> torch.Tensor:
    """Relative variances ``v`` ``(B, 2, H, W)`` of the two Tweedie estimates, per pixel.

    A network-range error ``du`` is a physical error ``slope du`` with ``slope = d from_net / du``
    at the estimate; both networks share one schedule, hence one noise level, so component c is
    as uncertain as ``kappa_c slope_c^2`` (``kappa = (1, haze_weight)``; mu-law: large RF values
    are far less certain than small ones).  The pair is scaled per pixel to sum to ``1 + kappa``,
    so only the *split* of the residual depends on the slopes, not the strength of the data
    term (for affine intensity maps ``v = (1, kappa)`` everywhere).
    """
    e = 1e-3
    s = torch.stack([(pr.from_net(x0n[:, c] + e) - pr.from_net(x0n[:, c] - e)) / (2 * e)
                     for c, pr in enumerate(priors)], 1) ** 2
    s = s * torch.tensor([1.0, kappa], dtype=s.dtype, device=s.device).view(1, 2, 1, 1)
    return (1 + kappa) * s / s.sum(1, keepdim=True).clamp(min=torch.finfo(s.dtype).tiny)


def _project(operator, y, phys, v, g: float, is_sum: bool, cg_iters: int) -> torch.Tensor:
    """``argmin sum_c ||z_c - Z_c||^2 / v_c + g ||y - A z||^2`` (per pixel variances ``v``).

    For the sum ``A z = z_0 + z_1`` per pixel: ``d = g r / (1 + g (v_0 + v_1))``, ``z_c = Z_c + v_c d``
    with ``r = y - Z_0 - Z_1``; otherwise conjugate gradients on ``(V^-1 + g A^T A) z = V^-1 Z + g A^T y``.
    """
    if is_sum:
        d = g * (y - phys[:, 0] - phys[:, 1]) / (1 + g * (v[:, 0] + v[:, 1]))
        return phys + v * d[:, None]
    w = 1.0 / v

    def system(z):
        return w * z + g * operator.adjoint(operator.forward(z))

    return cg(system, w * phys + g * operator.adjoint(y), phys, cg_iters)
