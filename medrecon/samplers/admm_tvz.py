"""The ADMM-TV_z data-consistency step shared by the volume samplers ``mbir3d`` and ``dds3d``.

DiffusionMBIR (Chung et al., CVPR 2023) couples a 2D slice prior with total variation
along z.  Once per diffusion step the whole volume ``x`` (Z, H, W) gets ONE iteration of
ADMM on

    min_x  1/(2 L^2) ||A x - y||^2  +  lam ||D_z x||_1           [ + 1/(2 gamma) ||x - x0||^2 ]

(``L = ||A||`` by power iteration, so the data term is in image units squared whatever
the operator's scale; ``D_z`` the forward difference between neighbouring slices, shape
(Z-1, H, W)), split as ``D_z x = w``.  With ``w`` (called z in the paper) and the scaled
dual ``u`` kept across ALL diffusion steps ("variable sharing")::

    x <- CG_k[(A^H A / L^2 + rho D_z^T D_z [+ I/gamma]) x = A^H y / L^2 + rho D_z^T (w - u) [+ x0/gamma]]
         started at the diffusion sample x0
    w <- shrink(D_z x + u, lam / rho)
    u <- u + D_z x - w

``rho`` is dimensionless (the ADMM penalty relative to ``||A||^2``: the official constants
are absolute, in their operator's units, see METHODS.md), ``lam`` is in physical image units
(the samplers pass ``lam_net * a``, ``a`` the prior's physical units per network unit, so
their ``lam`` is in network units and one default serves HU, 1/mm or MR units).  The
optional proximal term (``gamma``, dimensionless like DDS's) keeps the answer near the
diffusion sample when the data are noisy; ``gamma=None`` is the official form (few CG
iterations started at the sample are the only pull toward it).

The x-update is ONE linear system for the whole volume (``D_z`` couples the slices), so its
conjugate-gradient inner products are volume-global, not per slice.  Everything else is per
voxel.  Complex images: the shrink is on the modulus (``v max(1 - t/|v|, 0)``); the
prior-based samplers keep images real (see :mod:`medrecon.samplers.base`), so there it
only meets real volumes.

``z_axis``: the slice axis of the tensors the step sees.  Per-slice operators see a batch
``(Z, H, W)`` (``z_axis=0``).  A true 3D operator (``operator.per_slice`` false, domain
``(Z, H, W)``, e.g. ``ct.cone``; :func:`volume_slices`) sees one volume ``(1, Z, H, W)`` and
the step uses ``z_axis=1``: the same code, with ``A^H A`` the 3D operator's normal operator
on the whole volume.  :class:`VolumeDiffusionSampler` does this: the prior still runs on the
``Z`` axial slices ``(Z, H, W)``, only the data consistency sees ``(1, Z, H, W)``, and slice
``k``'s random numbers come from generator ``k`` as with a per-slice operator, so a
block-diagonal 3D operator ``diag(A_2D, ..., A_2D)`` gives the result of the per-slice
``A_2D`` (tested; see docs/samplers3d.md, "True 3D operators").

Also here: :func:`check_slice_geometry` (uniform slice spacing, for the engine to call with
the measurement's affine or a series' slice positions) and :class:`VolumeDiffusionSampler`,
the common loop of ``mbir3d`` and ``dds3d`` (network calls in slice chunks, per-slice
randomness, progress, checkpoint / resume at step boundaries).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from medrecon.errors import InputError
from medrecon.operators.linalg import apply_adjoint_real, apply_forward, cg, estimate_norm, normal
from medrecon.priors.feature_cache import make_cache
from medrecon.priors.schedule import ddim_timesteps, diffuse, tweedie_x0_scalar
from medrecon.samplers.base import CACHE_PARAM, Param, Sampler
from medrecon.samplers.prior_ops import net_scale, prior_eps, sample_dtype, to_net_real
from medrecon.streams import randn_per_slice

__all__ = ["ADMMTVz", "VolumeDiffusionSampler", "check_slice_geometry", "dz", "dzt", "shrink",
           "volume_slices"]


# --------------------------------------------------------------------------- D_z and shrink
def dz(x: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Forward difference along ``axis``: ``x[k+1] - x[k]``, one entry shorter along it."""
    n = x.shape[axis]
    return x.narrow(axis, 1, n - 1) - x.narrow(axis, 0, n - 1)


def dzt(v: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Adjoint of :func:`dz`: ``out[k] = v[k-1] - v[k]`` with ``v[-1] = v[n-1] = 0``."""
    pad = [0, 0] * (v.ndim - 1 - (axis % v.ndim)) + [1, 1]
    if v.is_complex():
        vp = torch.view_as_complex(torch.nn.functional.pad(torch.view_as_real(v), [0, 0] + pad))
    else:
        vp = torch.nn.functional.pad(v, pad)
    n = vp.shape[axis]
    return vp.narrow(axis, 0, n - 1) - vp.narrow(axis, 1, n - 1)


def shrink(v: torch.Tensor, thr) -> torch.Tensor:
    """Soft threshold: ``sign(v) max(|v| - thr, 0)``; on the modulus for complex ``v``."""
    if v.is_complex():
        mag = v.abs()
        return v * (1 - thr / mag.clamp(min=1e-30)).clamp(min=0)
    return torch.sign(v) * (v.abs() - thr).clamp(min=0)


# --------------------------------------------------------------------------- geometry check
def volume_slices(operator) -> int | None:
    """``Z`` when ``operator`` is a true 3D operator on a volume of ``Z`` axial slices, else None.

    That is ``per_slice`` false, a domain ``(Z, H, W)`` and no component axis (``ct.cone``):
    it takes one volume ``(1, Z, H, W)``, and a 2D slice prior meets it on the ``Z`` slices
    ``x[0, k]``.  Per-slice operators (and 3D operators of another domain) give None.
    """
    if getattr(operator, "per_slice", True) or tuple(getattr(operator, "component_names", ()) or ()):
        return None
    dshape = tuple(operator.domain_shape)
    return int(dshape[0]) if len(dshape) == 3 else None


def check_slice_geometry(n_slices: int, *, affine=None, positions: Sequence[float] | None = None,
                         rtol: float = 1e-3, who: str = "a volume sampler") -> float | None:
    """Refuse what a TV-along-z coupling cannot use: fewer than 2 slices, uneven spacing.

    ``affine`` (4x4, slices along the first array axis, as in :class:`~medrecon.volume.Volume`
    and measurement files) implies uniform spacing; its slice step must be finite and non-zero.
    ``positions`` (one coordinate in mm per slice along the slice normal, e.g. from
    ImagePositionPatient) must be equally spaced within ``rtol`` of the median step.
    Returns the slice spacing in mm (None when neither is given).  The engine can call
    it before running a volume sampler; the samplers call it with what they receive.
    """
    import numpy as np

    if int(n_slices) < 2:
        raise InputError(f"{who} couples neighbouring slices and needs at least 2 slices, got {int(n_slices)}")
    spacing = None
    if affine is not None:
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise InputError(f"{who} needs a finite 4x4 affine, got shape {aff.shape}")
        spacing = float(np.linalg.norm(aff[:3, 2]))
        if spacing == 0:
            raise InputError(f"{who} got an affine whose slice step is zero")
    if positions is not None:
        p = np.asarray(list(positions), dtype=np.float64)
        if p.shape != (int(n_slices),):
            raise InputError(f"{who} needs one slice position per slice: got {p.size} for {int(n_slices)}")
        if not np.all(np.isfinite(p)):
            raise InputError(f"{who} got non-finite slice positions")
        d = np.diff(p)
        med = float(np.median(d))
        if med == 0 or np.any(np.sign(d) != np.sign(med)) or np.any(np.abs(d - med) > rtol * abs(med)):
            i = int(np.argmax(np.abs(d - med)))
            raise InputError(
                f"{who} needs equally spaced slices, but the step between slices {i} and {i + 1} is "
                f"{d[i]:.4g} mm against a median step of {med:.4g} mm (resample or split the series)")
        spacing = abs(med)
    return spacing


# --------------------------------------------------------------------------- the ADMM step
class ADMMTVz:
    """One ADMM-TV_z iteration per call, with the split variable ``w`` and dual ``u`` kept.

    Parameters
    ----------
    operator : per-slice operator ``A`` (or a 3D one with ``z_axis=1``)
    y : measurements ``(B, *range_shape)``
    rho : ADMM penalty relative to ``||A||^2`` (> 0)
    lam : TV_z weight in physical image units (>= 0)
    lam_xy : optional in-plane (anisotropic) TV weight in physical units (default 0: TV_z only,
        the paper's model); with ``lam_xy > 0`` the regulariser adds
        ``lam_xy (||D_y x||_1 + ||D_x x||_1)`` with its own split variables and duals
    cg_iters : CG iterations of the x-update (warm-started)
    gamma : optional proximal weight (dimensionless, relative to ``||A||^2``); None: off
    real : keep images real for a complex-domain operator (the prior-based samplers)
    norm : ``||A||`` (default: power iteration, :func:`estimate_norm`)
    z_axis : slice axis of the image tensors

    ``step(x_start, x_prox=None)`` returns the updated volume; :attr:`w` and :attr:`u`
    (None before the first step) can be saved with :meth:`state` and restored with
    :meth:`load_state`.
    """

    def __init__(self, operator, y: torch.Tensor, *, rho: float, lam: float, cg_iters: int = 1,
                 gamma: float | None = None, real: bool = True, norm: float | None = None, z_axis: int = 0,
                 dtype: torch.dtype | None = None, lam_xy: float = 0.0):
        if not rho > 0:
            raise InputError(f"ADMM-TV_z needs rho > 0, got {rho}")
        if not lam >= 0:
            raise InputError(f"ADMM-TV_z needs lam >= 0, got {lam}")
        if gamma is not None and not gamma > 0:
            raise InputError(f"ADMM-TV_z needs gamma > 0 or None, got {gamma}")
        if not lam_xy >= 0:
            raise InputError(f"ADMM-TV_z needs lam_xy >= 0, got {lam_xy}")
        self.op, self.rho, self.lam, self.lam_xy = operator, float(rho), float(lam), float(lam_xy)
        self.cg_iters, self.gamma, self.real, self.z_axis = int(cg_iters), gamma, bool(real), int(z_axis)
        # (axis, weight) of every difference term: z first, then y and x (the last two axes)
        self.terms = [(self.z_axis, self.lam)]
        if self.lam_xy > 0:
            self.terms += [(-2, self.lam_xy), (-1, self.lam_xy)]
        dtype = dtype or sample_dtype(y)
        L = float(norm) if norm is not None else estimate_norm(operator, device=y.device, real_domain=real)
        if not L > 0:
            raise InputError("ADMM-TV_z got an operator whose norm is zero")
        self.L2 = L * L
        with torch.no_grad():
            aty = apply_adjoint_real(operator, y, real) / self.L2
        self.aty = aty.to(dtype) if real else aty
        self.w: list[torch.Tensor] | None = None  # one split variable per term
        self.u: list[torch.Tensor] | None = None

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        out = normal(self.op, v) / self.L2
        for ax, _ in self.terms:
            out = out + self.rho * dzt(dz(v, ax), ax)
        if self.gamma is not None:
            out = out + v / self.gamma
        return out

    def step(self, x_start: torch.Tensor, x_prox: torch.Tensor | None = None) -> torch.Tensor:
        """One ADMM iteration started at ``x_start``; ``x_prox`` (default ``x_start``) is the
        proximal centre when ``gamma`` is set."""
        with torch.no_grad():
            if self.w is None:
                self.w = [torch.zeros_like(dz(x_start, ax)) for ax, _ in self.terms]
                self.u = [torch.zeros_like(w) for w in self.w]
            b = self.aty
            for (ax, _), w, u in zip(self.terms, self.w, self.u, strict=True):
                b = b + self.rho * dzt(w - u, ax)
            if self.gamma is not None:
                b = b + (x_start if x_prox is None else x_prox) / self.gamma
            # one system for the whole volume: global inner products (a batch of one)
            x = cg(lambda v: self._apply(v[0])[None], b[None], x_start[None], self.cg_iters)[0]
            ws, us = [], []
            for (ax, lam), u in zip(self.terms, self.u, strict=True):
                d = dz(x, ax)
                w = shrink(d + u, lam / self.rho)
                ws.append(w)
                us.append(u + d - w)
            self.w, self.u = ws, us
        return x

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """``1/(2 L^2) ||A x - y||^2 + lam ||D_z x||_1 [+ lam_xy (||D_y x||_1 + ||D_x x||_1)]`` (float64)."""
        r = apply_forward(self.op, x) - y
        reg = sum(lam * float(dz(x, ax).abs().sum().double()) for ax, lam in self.terms)
        return float(0.5 * (r.abs() ** 2).sum().double() / self.L2) + reg

    def state(self) -> dict[str, Any]:
        return {"w": self.w, "u": self.u}

    def load_state(self, state: dict[str, Any], device=None) -> None:
        dev = device or self.aty.device
        for key in ("w", "u"):
            v = state.get(key)
            if v is not None and len(v) != len(self.terms):
                raise InputError(f"ADMM-TV_z state has {len(v)} split variables, expected {len(self.terms)}")
            setattr(self, key, None if v is None else [t.to(device=dev) for t in v])


# --------------------------------------------------------------------------- the shared loop
def eps_chunked(prior, x: torch.Tensor, t: torch.Tensor, net_batch: int, caches: list | None = None) -> torch.Tensor:
    """``prior.eps`` on ``(Z, H, W)`` slices in chunks of ``net_batch`` (adds the channel axis).
    ``caches``: one :class:`~medrecon.priors.feature_cache.FeatureCache` per chunk (feature
    caching; each chunk keeps its own deep feature), or None."""
    out = []
    for k, s in enumerate(range(0, x.shape[0], net_batch)):
        cache = caches[k] if caches is not None else None
        out.append(prior_eps(prior, x[s:s + net_batch], t[s:s + net_batch], cache))
    return torch.cat(out)


#: Parameters every ADMM-TV_z volume sampler takes (defaults tuned on training slices, 8 views).
ADMM_TVZ_PARAMS = {
    "rho": Param(float, 0.03, "ADMM penalty relative to ||A||^2 (dimensionless)", lo=0, lo_open=True),
    "lam": Param(float, 0.003, "TV_z weight in the prior's network units (x its slope: physical units)", lo=0),
    "lam_xy": Param(float, 0.0, "in-plane (y, x) anisotropic TV weight in network units (0: TV along z "
                    "only, the paper)", lo=0),
    "net_batch": Param(int, 16, "slices per network call (does not change the result)", lo=1),
    "cache_interval": CACHE_PARAM,
}


class VolumeDiffusionSampler(Sampler):
    """Common loop of ``mbir3d`` and ``dds3d`` (``per_slice`` False: all slices in lockstep).

    Per step ``t -> s`` on the timestep grid (abar_{-1} = 1)::

        e   = eps(x_t, t)                      (network, in chunks of net_batch slices)
        x0  = from_net((x_t - sqrt(1 - abar_t) e) / sqrt(abar_t))      (Tweedie, physical)
        x0~ = ADMM-TV_z step started at x0       (w, u shared over all steps)
        x_s = renoise(x0~, e, noise)            (subclass: DDIM/DDPM or DDS)

    and the last step returns ``x0~``.  Subclasses set ``params`` (with ``rho``, ``lam``,
    ``cg_iters``, ``gamma``, ``net_batch``, ``spacing`` and ``eta``) and :meth:`_renoise`.

    Two kinds of operator:

    * per-slice (``ct.parallel``): ``y`` is ``(Z, *range_shape)``, one generator per slice,
      the result ``(Z, H, W)``; the ADMM step works on ``(Z, H, W)`` with ``z_axis=0``;
    * a true 3D operator on a volume of axial slices (:func:`volume_slices`, ``ct.cone``):
      ``y`` is one volume's measurement ``(1, *range_shape)``, ``generators`` holds one
      generator per **axial slice** (``Z``, not one per batch row), the result is
      ``(1, Z, H, W)``.  The diffusion state is still ``(Z, H, W)`` (the prior sees the
      slices); only the ADMM step sees ``(1, Z, H, W)``, with ``z_axis=1`` and ``A^H A`` on
      the whole volume.  Slice ``k`` draws every random number from ``generators[k]`` in both
      cases, so a block-diagonal 3D operator gives the per-slice operator's result.

    ``sample(..., checkpoint=fn, resume_state=state, slice_positions=None)``:
    ``checkpoint(state)`` is called at every step boundary with a dict (``step`` done, ``total``,
    ``x`` the current x_t, ``w``, ``u``, ``generators`` the per-slice generator states, the
    sampler ``spec``); tensors stay on the device and are valid until the next step (copy
    or ``torch.save`` them).  ``resume_state`` (such a dict) continues from that step and
    gives the same result as an uninterrupted run.  ``slice_positions`` (mm along the slice
    normal) are checked for equal spacing.
    """

    per_slice = False
    #: With a 3D operator on a (Z, H, W) volume it takes one generator per axial slice (the
    #: engine reads this to pass ``slice_generators(seed, range(Z))``).
    generators_per_axial_slice: ClassVar[bool] = True
    resumable: ClassVar[bool] = True

    def sample(self, y, operator, prior=None, *, checkpoint: Callable[[dict], None] | None = None,
               resume_state: dict | None = None, slice_positions: Sequence[float] | None = None, **kw):
        self._ckpt, self._resume = checkpoint, resume_state
        try:
            nz = volume_slices(operator)
            if isinstance(y, torch.Tensor) and slice_positions is not None:
                check_slice_geometry(nz if nz is not None else y.shape[0], positions=slice_positions,
                                     who=f"sampler {self.name!r}")
            if nz is not None:
                return self._sample_volume_operator(y, operator, prior, nz, **kw)
            return super().sample(y, operator, prior, **kw)
        finally:
            self._ckpt, self._resume = None, None

    def _sample_volume_operator(self, y, operator, prior, nz: int, *, steps: int | None = None,
                                generators: Sequence[torch.Generator] | None = None,
                                progress: Callable[[int, int], None] | None = None,
                                x_init: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`Sampler.sample`'s checks for a 3D operator on ``nz`` axial slices: one volume
        ``y`` ``(1, *range_shape)``, ``nz`` generators, ``x_init`` ``(1, nz, H, W)``."""
        if isinstance(y, torch.Tensor) and y.ndim >= 1 and y.shape[0] != 1:
            rshape = tuple(operator.range_shape)
            raise InputError(f"sampler {self.name!r} with the 3D operator {operator.name!r} reconstructs one volume "
                             f"from measurements shaped (1, {', '.join(map(str, rshape))}), got {tuple(y.shape)}")
        steps, generators, x_init = self._checked(y, operator, prior, steps, generators, x_init, n_generators=nz,
                                                  slice_prior=False)
        return self._sample(y, operator, prior, steps, generators, progress, x_init)

    # subclass hook
    def _renoise(self, x0_net, e, a_t: float, a_s: float, noise):  # pragma: no cover
        raise NotImplementedError

    def _lam_phys(self, prior, like: torch.Tensor) -> tuple[float, float]:
        a = float(net_scale(prior, like[:1]).mean())
        return float(self._params["lam"]) * a, float(self._params.get("lam_xy", 0.0)) * a

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        p = self._params
        # the diffusion state is always the (Z, H, W) stack of axial slices; a 3D operator's
        # data consistency sees it as one volume (1, Z, H, W) with the slice axis at 1
        nz = volume_slices(operator)
        vol3d = nz is not None
        Z = nz if vol3d else y.shape[0]
        shape = tuple(operator.domain_shape)[1:] if vol3d else tuple(operator.domain_shape)  # one slice
        check_slice_geometry(Z, who=f"sampler {self.name!r}")
        if vol3d and x_init is not None:
            x_init = x_init[0]
        T = int(prior.num_timesteps)
        steps = self.resolve_steps(steps, prior)
        ts = ddim_timesteps(steps, T, p["spacing"]).tolist()
        dev, dtype = y.device, sample_dtype(y)
        abar = prior.alphas_cumprod.to(device=dev, dtype=torch.float64)
        real = not operator.domain_is_complex
        nb = int(p["net_batch"])
        with torch.no_grad():
            x = randn_per_slice(generators, shape, device=dev, dtype=dtype)
            lam, lam_xy = self._lam_phys(prior, x)
            admm = ADMMTVz(operator, y, rho=p["rho"], lam=lam, cg_iters=p["cg_iters"], gamma=p["gamma"],
                           real=True, dtype=dtype, lam_xy=lam_xy, z_axis=1 if vol3d else 0)

            def data_consistency(x0: torch.Tensor) -> torch.Tensor:
                return admm.step(x0[None])[0] if vol3d else admm.step(x0)

            a0 = float(abar[ts[0]])
            if x_init is not None:
                x = diffuse(to_net_real(prior, x_init.to(dtype)), x, a0)
            start = 0
            if self._resume is not None:
                start = self._load_resume(self._resume, generators, admm, x, len(ts))
                x = self._resume["x"].to(device=dev, dtype=dtype)
            # feature caching: one cache per network chunk; full passes on steps 0, N, 2N, ... of
            # this call, so a checkpoint is offered only before a full pass and a resumed run
            # makes the same passes as an uninterrupted one
            interval = int(p["cache_interval"])
            caches = [make_cache(interval) for _ in range(0, Z, nb)] if interval >= 2 else None
            x0_dc = None
            for i in range(start, len(ts)):
                t = ts[i]
                tt = torch.full((Z,), t, dtype=torch.long, device=dev)
                a_t = float(abar[t])
                e = eps_chunked(prior, x, tt, nb, caches).to(dtype)
                x0 = prior.from_net(tweedie_x0_scalar(x, e, a_t))
                x0_dc = data_consistency(x0)
                if i + 1 < len(ts):
                    a_s = float(abar[ts[i + 1]])
                    noise = randn_per_slice(generators, shape, device=dev, dtype=dtype) if p["eta"] > 0 else None
                    x = self._renoise(prior.to_net(x0_dc), e, a_t, a_s, noise)
                    if self._ckpt is not None and (caches is None or (i + 1 - start) % interval == 0):
                        self._ckpt({"format": "medrecon-volume-sampler-state", "sampler": self.spec(),
                                    "step": i + 1, "total": len(ts), "x": x, "w": admm.w, "u": admm.u,
                                    "generators": [g.get_state() for g in generators]})
                if progress is not None:
                    progress(i + 1, len(ts))
        if x0_dc is None:  # unreachable: a resume state always leaves at least the last step
            raise InputError(f"sampler {self.name!r} got a resume state with no step left to run")
        out = x0_dc[None] if vol3d else x0_dc
        if not real:
            out = out.to(operator.domain_dtype(dtype))
        return out

    def _load_resume(self, st: dict, generators, admm: ADMMTVz, x: torch.Tensor, total: int) -> int:
        if not isinstance(st, dict) or st.get("format") != "medrecon-volume-sampler-state":
            raise InputError(f"sampler {self.name!r} got a resume state that is not a volume-sampler state")
        if st.get("sampler") != self.spec() or int(st.get("total", -1)) != total:
            raise InputError(f"sampler {self.name!r} cannot resume a state saved with other settings "
                             "(sampler parameters or step count differ)")
        if tuple(st["x"].shape) != tuple(x.shape) or len(st["generators"]) != len(generators):
            raise InputError(f"sampler {self.name!r} cannot resume a state of a volume shaped "
                             f"{tuple(st['x'].shape)} on one shaped {tuple(x.shape)}")
        step = int(st["step"])
        if not 0 < step < total:
            raise InputError(f"sampler {self.name!r} got a resume state at step {step} of {total}")
        for g, s in zip(generators, st["generators"], strict=True):
            g.set_state(s)
        admm.load_state(st)
        like = x[None] if admm.z_axis == 1 else x  # what the ADMM step sees (a 3D operator: one volume)
        for key in ("w", "u"):
            got = getattr(admm, key)
            if got is not None and any(tuple(v.shape) != tuple(dz(like, ax).shape)
                                       for v, (ax, _) in zip(got, admm.terms, strict=True)):
                raise InputError(f"sampler {self.name!r} cannot resume a state whose split variables do not fit "
                                 "this operator (saved with a per-slice operator for a 3D one, or the reverse)")
        return step
