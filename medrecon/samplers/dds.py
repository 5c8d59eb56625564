"""``dds``: Decomposed Diffusion Sampler (Chung, Lee, Ye, ICLR 2024), 2D slices.

DDIM steps in which the data consistency is a few conjugate-gradient iterations on the
Tweedie estimate (the "clean" manifold); no backpropagation through the network.  Per step
``t -> s`` (s the next, smaller timestep; abar_{-1} = 1)::

    e      = eps(x_t, t)
    x0     = from_net((x_t - sqrt(1 - abar_t) e) / sqrt(abar_t))          (physical units)
    x0~    = CG_k[(I + g A^H A) x = x0 + g A^H y]  started at x0          (noisy data)
           = CG_k[A^H A x = A^H y]                 started at x0          (noiseless=True)
    x_s    = sqrt(abar_s) to_net(x0~) + sqrt(1 - abar_s) (eta z + sqrt(1 - eta^2) e),  z ~ N(0, I)

(noiseless=True selects the second system, as the official code does for sigma_y = 0.  It is
not switched on from a measurement's recorded noise level: imported raw data records 0 when
the level is unknown.)

and the last step returns x0~.  ``eta`` here is DDS's, not DDIM's: eta = 1 re-noises with
fresh noise only, eta = 0 reuses the predicted noise (deterministic DDIM).

``init="tv"`` starts from the ``tv`` reconstruction re-noised to ``t_start`` T (x_t0 =
sqrt(abar_t0) to_net(x_tv) + sqrt(1 - abar_t0) z) and runs only the DDIM steps at or below
it (a warm start as in Chung et al., "Come-closer-diffuse-faster", CVPR 2022); measured in
docs/samplers.md.

``tv > 0`` replaces the CG step by a TV-regularised proximal step: ``tv_iters`` PDHG
iterations (:class:`medrecon.samplers.tv.TVSolver`, started at x0 like the CG, its duals
carried over from the previous step) on::

    x0~ = argmin_x  1/(2 gamma) ||x - x0||^2 + 1/(2 L^2) ||A x - y||^2 + tv lam_TV TV(x)

where ``lam_TV`` is the weight the ``tv`` sampler chooses for the slice (cross-validation on
held-out views or lines, :func:`medrecon.samplers.tv.tv_weights`) and ``L = 1.02 ||A||``.
Without the TV term this is the CG step's problem divided by gamma; gamma -> inf is the TV
reconstruction itself.  The TV term keeps a prior that does not know the anatomy from undoing
what TV gets right (docs/samplers.md, "DDS with a TV term").  It costs the weight search of
``tv`` (about 25 s per 256^2 CT slice on one CPU core) plus ``tv_iters`` operator pairs per step
instead of ``cg_iters``.  The PDHG steps are sized for an iterate near the solution, so a
prior whose Tweedie estimates are far from the data (e.g. pure white noise) is not rescued.

``g = gamma / ||A||^2`` (||A|| by power iteration): ``gamma`` is dimensionless, so the
same value serves any operator scale and any physical units (the data term weight relative
to the proximity term along A's top singular vector is ``gamma``).

Differences from the official code (HJ-harry/DDS, solver_2d.py): its CG uses batch-global,
non-conjugated inner products (``r.view(1,-1) @ r.view(1,-1).T``) and updates the Tweedie
estimate in place; ours is per slice with Hermitian inner products.  Its loop treats the
step whose next timestep is 0 as final and then runs one more network call at t = 0; ours
ends with the step from the smallest timestep to abar = 1.  Its ``gamma`` is absolute in its
own operator's units (default 1.0); ours is relative to ||A||^2.
"""

from __future__ import annotations

import torch

from medrecon.operators.linalg import apply_adjoint_real, cg, estimate_norm, normal
from medrecon.priors.feature_cache import make_cache
from medrecon.priors.schedule import ddim_renoise, ddim_timesteps, diffuse, tweedie_x0_scalar
from medrecon.samplers.base import CACHE_PARAM, PHASE_PARAM, Param, Sampler
from medrecon.samplers.phase import phase_from_data
from medrecon.samplers.prior_ops import prior_eps, sample_dtype, to_net_real, tweedie_clip
from medrecon.streams import randn_per_slice

__all__ = ["DDS"]


class DDS(Sampler):
    """Decomposed Diffusion Sampler: DDIM + CG data consistency on the Tweedie estimate."""

    name = "dds"
    needs_prior = True
    per_slice = True
    default_steps = 50
    params = {
        "eta": Param(float, 0.85, "DDS stochasticity: weight of fresh noise (0: deterministic DDIM)", lo=0, hi=1),
        "cg_iters": Param(int, 5, "conjugate-gradient iterations per step", lo=0),
        "gamma": Param(float, 100.0, "data weight relative to ||A||^2 in (I + g A^H A) (noisy data)", lo=0,
                       lo_open=True),
        "phase": PHASE_PARAM,
        "cache_interval": CACHE_PARAM,
        "noiseless": Param(bool, False, "CG on the normal equations A^H A x = A^H y instead"),
        "spacing": Param(str, "leading", "timestep spacing over the training grid (leading = official DDS)",
                         choices=("leading", "trailing", "linspace")),
        "clip": Param(float, None, "clamp the Tweedie estimate to [-clip, clip] in network units (None: no; "
                      "auto: the prior's data range, as dps)", lo=0, lo_open=True, none_ok=True, auto_ok=True),
        "init": Param(str, "noise", "start from pure noise (official DDS) or from the TV reconstruction "
                      "re-noised to t_start (tv: trusts the prior less on unfamiliar data)", choices=("noise", "tv")),
        "tv": Param(float, 0.0, "weight of a TV term in the data step, relative to the per-study weight the tv "
                    "sampler chooses (0: the CG step of official DDS; > 0: a TV-regularised proximal step, which keeps "
                    "an unfamiliar prior from undoing what TV gets right)", lo=0),
        "tv_iters": Param(int, 10, "with tv > 0: PDHG iterations per step (warm-started across steps)", lo=1),
        "t_start": Param(float, 1.0, "with init=tv: the noise level to start at, as a fraction of the prior's "
                         "timesteps (only the DDIM steps below it run)", lo=0, hi=1, lo_open=True),
    }

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        if self._params["phase"] == "data":  # raw MRI: the image phase from the data (samplers.phase)
            operator = phase_from_data(operator, y)
        p = self._params
        T = int(prior.num_timesteps)
        steps = self.resolve_steps(steps, prior)
        cache = make_cache(p["cache_interval"])  # this call's own (medrecon.priors.feature_cache)
        ts = ddim_timesteps(steps, T, p["spacing"]).tolist()
        if p["init"] == "tv":
            ts = [t for t in ts if t <= p["t_start"] * (T - 1)] or ts[-1:]
            if x_init is None:
                from medrecon.samplers.tv import TV

                x_init = TV().sample(y, operator)
        dev, dtype = y.device, sample_dtype(y)
        abar = prior.alphas_cumprod.to(device=dev, dtype=torch.float64)
        B, shape = y.shape[0], tuple(operator.domain_shape)
        real = not operator.domain_is_complex  # prior images are real; see base module docstring
        eta = p["eta"]
        with torch.no_grad():
            L = estimate_norm(operator, device=dev, real_domain=True)
            g = p["gamma"] / max(L, 1e-30) ** 2
            aty = apply_adjoint_real(operator, y, True)
            aty = aty.to(dtype)

            def ata(v):
                return normal(operator, v)

            z = randn_per_slice(generators, shape, device=dev, dtype=dtype)
            a0 = float(abar[ts[0]])
            if x_init is not None:
                x = diffuse(to_net_real(prior, x_init.to(dtype)), z, a0)
            else:
                x = z
            x0_dc_phys = None
            clip = tweedie_clip(prior, p["clip"])
            solver = _tv_solver(y, operator, p["tv"], dtype) if p["tv"] > 0 else None
            for i, t in enumerate(ts):
                tt = torch.full((B,), t, dtype=torch.long, device=dev)
                a_t = float(abar[t])
                e = prior_eps(prior, x, tt, cache).to(dtype)
                x0 = tweedie_x0_scalar(x, e, a_t)
                if clip is not None:
                    x0 = x0.clamp(-clip, clip)
                x0_phys = prior.from_net(x0)
                if solver is not None:
                    # started at the Tweedie estimate, as the CG step is; the duals carry over
                    x0_dc_phys = solver.run(x0_phys, p["tv_iters"], prox=x0_phys, gamma=p["gamma"])
                elif p["cg_iters"] > 0:
                    if p["noiseless"]:
                        x0_dc_phys = cg(ata, aty, x0_phys, p["cg_iters"])
                    else:
                        x0_dc_phys = cg(lambda v: v + g * ata(v), x0_phys + g * aty, x0_phys, p["cg_iters"])
                else:
                    x0_dc_phys = x0_phys
                if i + 1 == len(ts):
                    break
                a_s = float(abar[ts[i + 1]])
                x0_dc = prior.to_net(x0_dc_phys)
                zn = randn_per_slice(generators, shape, device=dev, dtype=dtype) if eta > 0 else 0.0
                x = ddim_renoise(x0_dc, e, a_s, eta, zn)
                if progress is not None:
                    progress(i + 1, len(ts))
            if progress is not None:
                progress(len(ts), len(ts))
        out = x0_dc_phys
        if not real:
            out = out.to(operator.domain_dtype(dtype))
        return out


def _tv_solver(y, operator, rel: float, dtype):
    """The TV-regularised data step of ``tv > 0``: a :class:`~medrecon.samplers.tv.TVSolver` with
    ``rel`` times the ``tv`` sampler's per-slice weight (recorded as ``reconstruction.auto_tuned``)."""
    from medrecon.samplers.tv import TVSolver, study_tv_weights

    lam, rng = study_tv_weights(y, operator, rel, dtype, "dds tv lam")
    return TVSolver(operator, y, lam, rng.to(dtype), [-2, -1])
