"""``tv``: total-variation regularised reconstruction by PDHG (Chambolle-Pock), any operator.

Solves, per slice (``dims=2``) or for the whole batch as a volume (``dims=3``)::

    min_x  1/(2 L^2) ||A x - y||^2  +  lam TV(x)   [+ indicator(x >= lower)]

with ``L = 1.02 ||A||`` (power iteration, which converges from below) and isotropic
TV(x) = sum_pixels |grad x| (forward differences, Neumann boundary; complex images use |.| of complex differences).  Dividing
the data term by ``L^2`` makes ``lam`` independent of the operator's scale (more views or
a differently scaled projector do not change it); ``lam`` is then in image units (HU or
1/mm for CT).  With ``lam=None`` (default) it is set per slice (per batch for ``dims=3``)
to ``lam_rel`` times the robust range (99th - 1st percentile) of the classical
reconstruction; ``lam_rel="auto"`` (default) chooses it per slice from held-out
measurements where the operator can hold some out (:mod:`medrecon.samplers.autotune`: MRI
lines, 2D CT views), 2e-4 otherwise.

PDHG on K = [A/L; grad] (||K||^2 <= 1 + 4 dims), tau = 0.99 rho / ||K||,
sigma = 0.99 / (rho ||K||), rho^2 = ``ratio`` (default 0.03 range / lam, clipped to [1, 1000]:
it balances the image, of size ~ its range, against the duals, of size ~ lam)::

    p <- (p + sigma (A xbar / L - y / L)) / (1 + sigma)        (data dual)
    q <- clip_lam(q + sigma grad xbar)                          (TV dual, |q_pixel| <= lam)
    x' <- max(x - tau (A^H p / L - div q), lower)
    xbar <- 2 x' - x

``tune_tv(y, operator, reference, lams)`` picks ``lam`` by PSNR against a known reference
image: it needs the ground truth, so it is for benchmarks only.
"""

from __future__ import annotations

import hashlib
import math
import threading
import weakref
from collections.abc import Sequence

import torch

from medrecon.errors import InputError
from medrecon.metrics import psnr
from medrecon.operators.linalg import apply_forward, estimate_norm
from medrecon.samplers.autotune import CV_SCALE
from medrecon.samplers.base import Param, Sampler

__all__ = ["TV", "TVSolver", "tv_weights", "study_tv_weights", "tv_value", "classical_image", "tune_tv", "grad_nd", "div_nd", "robust_range"]


def grad_nd(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """Forward differences of ``x`` along ``axes`` (zero at the far edge), stacked on a new axis 0."""
    out = []
    for ax in axes:
        d = torch.zeros_like(x)
        n = x.shape[ax]
        if n > 1:
            hi = x.narrow(ax, 1, n - 1)
            lo = x.narrow(ax, 0, n - 1)
            d.narrow(ax, 0, n - 1).copy_(hi - lo)
        out.append(d)
    return torch.stack(out)


def div_nd(q: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """Negative adjoint of :func:`grad_nd`: ``<grad x, q> = -<x, div q>``."""
    out = torch.zeros_like(q[0])
    for k, ax in enumerate(axes):
        qk = q[k]
        n = qk.shape[ax]
        if n == 1:
            continue
        d = torch.zeros_like(qk)
        # div = q_i - q_{i-1}, with q_{-1} = 0 and q_{n-1} treated as 0
        d.narrow(ax, 0, 1).copy_(qk.narrow(ax, 0, 1))
        if n > 2:
            d.narrow(ax, 1, n - 2).copy_(qk.narrow(ax, 1, n - 2) - qk.narrow(ax, 0, n - 2))
        d.narrow(ax, n - 1, 1).copy_(-qk.narrow(ax, n - 2, 1))
        out = out + d
    return out


def robust_range(x: torch.Tensor, joint: bool = False) -> torch.Tensor:
    """Per-slice ``p99 - p1`` of ``|x|``, shape ``(B,)`` in ``x``'s real dtype; ``joint``: one
    range over the whole batch (repeated ``B`` times)."""
    B = x.shape[0]
    flat = (x.abs() if x.is_complex() else x).reshape(B, -1).to(torch.float64)
    if joint:
        flat = flat.reshape(1, -1)
    if flat.shape[1] > 4_000_000:  # torch.quantile's size limit: a regular subsample
        flat = flat[:, :: -(-flat.shape[1] // 4_000_000)]
    lo = torch.quantile(flat, 0.01, dim=1).expand(B)
    hi = torch.quantile(flat, 0.99, dim=1).expand(B)
    return (hi - lo).clamp(min=0).to(x.real.dtype)


class TVSolver:
    """PDHG (Chambolle-Pock) for the TV problem of the module docstring, optionally proximal::

        min_x  1/(2 L^2) ||A x - y||^2  +  lam TV(x)  [+ 1/(2 gamma) ||x - x_p||^2]  [+ x >= lower]

    The duals (``p`` for the data, ``q`` for the gradient) live on the object, so successive
    :meth:`run` calls continue one another: the ``tv`` sampler calls it once; ``dds`` with
    ``tv > 0`` calls it at every diffusion step with that step's Tweedie estimate as ``x_p``
    (a warm start: the problem changes little from one step to the next).  With the
    proximal term the primal update is the prox of ``1/(2 gamma)||x - x_p||^2``::

        x' = (x - tau (A^H p / L - div q) + (tau / gamma) x_p) / (1 + tau / gamma)

    ``lam``: ``(B,)`` weights in image units; ``rng``: ``(B,)`` robust image ranges (they set
    the step ratio, see the module docstring); ``axes``: the image axes TV differentiates along.
    """

    def __init__(self, operator, y: torch.Tensor, lam: torch.Tensor, rng: torch.Tensor, axes: Sequence[int],
                 *, lower: float | None = None, ratio: float | None = None):
        L = estimate_norm(operator, device=y.device) * 1.02  # power iteration converges from below
        if L == 0:
            raise InputError("sampler 'tv' got an operator whose norm is zero")
        nd = len(operator.domain_shape)
        self.operator, self.L, self.axes, self.lower = operator, L, list(axes), lower
        self.ys = y / L
        knorm = math.sqrt(1.0 + 4.0 * len(self.axes))
        # tau / sigma balances the primal (image, size ~ its range) against the duals
        # (size ~ lam): PDHG is invariant to units but not to this ratio; 0.03 range / lam
        # converges 3-10x faster than 1 on sparse-view CT (docs/samplers.md)
        if ratio is not None:
            r = torch.full_like(lam, float(ratio))
        else:
            r = (0.03 * rng / lam.clamp(min=1e-30)).clamp(1.0, 1000.0)
            r = torch.where(rng > 0, r, torch.ones_like(r))
        rho = r.sqrt().to(lam.dtype).view(-1, *([1] * nd))
        self.tau, self.sigma = 0.99 * rho / knorm, 0.99 / (rho * knorm)
        self.sig_y = self.sigma.view(-1, *([1] * (y.ndim - 1)))
        self.lam_b = lam.view(1, -1, *([1] * nd)) if lam.ndim == 1 else lam
        self.p = torch.zeros_like(y)
        self.q = None

    def run(self, x: torch.Tensor, iters: int, *, prox: torch.Tensor | None = None, gamma: float | None = None,
            progress=None) -> torch.Tensor:
        """``iters`` PDHG iterations from the primal ``x``; with ``prox`` the proximal problem."""
        op, L, axes, lower = self.operator, self.L, self.axes, self.lower
        tau, sigma, sig_y, lam_b = self.tau, self.sigma, self.sig_y, self.lam_b
        if self.q is None:
            self.q = torch.zeros((len(axes), *x.shape), dtype=x.dtype, device=x.device)
        p, q = self.p, self.q
        c = None if prox is None else tau / float(gamma)
        xbar = x
        for i in range(iters):
            p = (p + sig_y * (apply_forward(op, xbar) / L - self.ys)) / (1 + sig_y)
            q = q + sigma * grad_nd(xbar, axes)
            mag = torch.sqrt((q.abs() ** 2).sum(0, keepdim=True)) if q.is_complex() else \
                torch.sqrt((q**2).sum(0, keepdim=True))
            q = q / torch.clamp(mag / lam_b.clamp(min=1e-30), min=1.0)
            back = op.adjoint(p) / L
            if not x.is_complex() and back.is_complex():
                back = back.real
            x_new = x - tau * (back - div_nd(q, axes))
            if c is not None:
                x_new = (x_new + c * prox) / (1 + c)
            if lower is not None:
                x_new = x_new.clamp(min=lower)
            xbar = 2 * x_new - x
            x = x_new
            if progress is not None:
                progress(i + 1, iters)
        self.p, self.q = p, q
        return x


class TV(Sampler):
    """Isotropic-TV regularised least squares by PDHG (see the module docstring).

    Parameters: ``lam`` (TV weight in image units, None: automatic), ``lam_rel`` (the
    automatic weight relative to the image range), ``dims`` (2: each slice alone; 3:
    slices coupled along the batch axis, then ``per_slice`` is False), ``nonneg``
    (x >= 0), ``lower`` (x >= lower; overrides ``nonneg``), ``iters`` (PDHG iterations,
    overridden by ``steps``).  Real or complex images (bounds need a real domain).
    """

    name = "tv"
    needs_prior = False
    per_slice = True
    default_steps = 300
    params = {
        "lam": Param(float, None, "TV weight in image units (None: lam_rel x robust image range)", lo=0,
                     none_ok=True),
        "lam_rel": Param(float, "auto", "automatic lam as a fraction of the classical recon's p99-p1 range "
                         "(auto: chosen per slice by cross-validation on held-out measurements where the operator "
                         "can hold some out, e.g. MRI lines or CT views; 2e-4 otherwise)", lo=0, auto_ok=True),
        "dims": Param(int, 2, "2: TV within each slice; 3: also along the batch (slice) axis", choices=None,
                      lo=2, hi=3),
        "nonneg": Param(bool, False, "constrain x >= 0"),
        "lower": Param(float, None, "constrain x >= lower (physical units); overrides nonneg", none_ok=True),
        "iters": Param(int, 300, "PDHG iterations (the steps argument overrides)", lo=1),
        "ratio": Param(float, None, "PDHG step ratio tau/sigma (None: 0.03 range/lam, in [1, 1000])", lo=0,
                       lo_open=True, none_ok=True),
    }

    tunable = ("lam_rel", (1e-4, 1e-3, 1e-2, 1e-1), 2e-4)

    def __init__(self, **params):
        super().__init__(**params)
        self.per_slice = self._params["dims"] == 2

    phase_free = True

    def _phase_free(self) -> bool:
        return self._bound() is None  # bounds need the real image

    def _tunes(self) -> bool:
        # an explicit lam overrides lam_rel; dims=3 couples the slices, which per-slice tuning cannot
        if self._params["lam"] is not None or self._params["dims"] == 3:
            return False
        return super()._tunes()

    def _bound(self):
        if self._params["lower"] is not None:
            return self._params["lower"]
        return 0.0 if self._params["nonneg"] else None

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        iters = int(steps) if steps is not None else int(self._params["iters"])
        lower = self._bound()
        if lower is not None and operator.domain_is_complex:
            raise InputError("sampler 'tv' cannot bound a complex image; use nonneg=false and lower=null")
        dshape = tuple(operator.domain_shape)
        dims = self._params["dims"]
        nd = len(dshape)
        if dims == 3 and nd >= 3:
            axes = [-3, -2, -1]
        elif dims == 3:
            axes = [0] + list(range(-nd, 0))[-2:]
        else:
            axes = list(range(-nd, 0))[-2:]
        with torch.no_grad():
            x_cl = classical_image(y, operator)
            lam, rng = self._lam(x_cl, dims)
            x = (x_init if x_init is not None else x_cl).clone()
            if lower is not None:
                x = x.clamp(min=lower)
            solver = TVSolver(operator, y, lam, rng, axes, lower=lower, ratio=self._params["ratio"])
            x = solver.run(x, iters, progress=progress)
        return x

    def _lam(self, x_cl: torch.Tensor, dims: int):
        """Per-slice (B,) weight and robust image range (shared by all slices for dims=3)."""
        lam = self._params["lam"]
        B = x_cl.shape[0]
        rng = robust_range(x_cl, joint=dims == 3)
        if lam is not None:
            return torch.full((B,), float(lam), dtype=x_cl.real.dtype, device=x_cl.device), rng
        lam_rel = self._params["lam_rel"]
        return (self.tunable[2] if lam_rel == "auto" else lam_rel) * rng, rng


def classical_image(y: torch.Tensor, operator) -> torch.Tensor:
    """``operator.classical(y)``, its real part where the operator's domain is real."""
    x = operator.classical(y)
    return x.real if not operator.domain_is_complex and x.is_complex() else x


def tv_weights(y: torch.Tensor, operator, **params) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The per-slice weight ``lam`` (image units, ``(B,)``) that the ``tv`` sampler with ``params``
    would use on ``y``, without its final solve, the robust range of the classical image it is
    relative to (``(B,)``), and a record of how it was chosen (the
    ``reconstruction.auto_tuned`` entry: cross-validation on held-out measurements where the
    operator can hold some out, else the fallback ``lam_rel``).  ``dds`` with ``tv > 0`` scales it.
    """
    from medrecon.samplers.autotune import tune_per_slice
    from medrecon.samplers.base import _checking

    tv = TV(**params)
    with torch.no_grad():
        lam, rng = tv._lam(classical_image(y, operator), 2)
    if not tv._tunes():
        return lam, rng, {"param": "tv lam", "values": [float(v) for v in lam], "method": "fixed"}
    name, grid, fallback = tv.tunable

    def run(w, yy, op):  # each solver iteration of the weight search may be where a run stops
        return tv._with(**{name: w})._sample(yy, op, None, None, None, _checking(None), None)

    scale = CV_SCALE if tv.tune_scale is None else tv.tune_scale
    values, table = tune_per_slice(run, grid, y, operator, scale=scale)
    if values is None:
        return lam, rng, {"param": "tv lam", "values": [float(v) for v in lam],
                          "method": f"fallback lam_rel {fallback}: {operator.name} cannot hold out measurements"}
    lam = torch.as_tensor(values, dtype=rng.dtype, device=rng.device) * rng
    return lam, rng, {"param": "tv lam", "values": [float(v) for v in lam], "lam_rel": values,
                      "method": "cross-validation on held-out measurements (the tv sampler's choice)"}


#: the ``tv`` sampler's weights already chosen, by operator (weakly held: an entry dies with its
#: operator) and measurement; the draws of ``--samples N`` reuse them
_TV_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TV_WEIGHTS_LOCK = threading.Lock()


def study_tv_weights(y: torch.Tensor, operator, rel: float, dtype, label: str):
    """``rel`` times the per-slice weight the ``tv`` sampler chooses for ``y`` (:func:`tv_weights`),
    and the robust ranges it is relative to, both ``(B,)`` in ``dtype``; the choice is recorded as
    ``reconstruction.auto_tuned`` under ``label`` (e.g. ``"dds tv lam"``).

    The cross-validated search (many TV solves) runs once per operator object and measurement:
    the N draws of ``--samples N`` call a sampler N times on the same ``y`` and operator, and the
    weight does not depend on the draw.
    """
    from medrecon.samplers.autotune import _record

    key = (tuple(y.shape), str(y.dtype), str(y.device),
           hashlib.sha256(y.detach().cpu().contiguous().numpy().tobytes()).hexdigest())
    with _TV_WEIGHTS_LOCK:
        hit = _TV_WEIGHTS.get(operator, {}).get(key)
    if hit is None:
        hit = tv_weights(y, operator)
        with _TV_WEIGHTS_LOCK:
            _TV_WEIGHTS.setdefault(operator, {})[key] = hit
    lam, rng, rec = hit
    lam = (lam * rel).to(dtype)
    _record(dict(rec, param=label, values=[float(v) for v in lam], tv=rel))
    return lam, rng.to(dtype)


def tv_value(x: torch.Tensor, axes: Sequence[int], eps: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Isotropic total variation per slice, ``sum_pixels sqrt(|grad x|^2 + eps^2)`` (``eps``: a
    smoothing in image units, scalar or ``(B,)``, so that the value is differentiable where the
    gradient vanishes), shape ``(B,)``; with ``eps = 0`` the TV that :class:`TVSolver` minimises.

    >>> import torch
    >>> x = torch.zeros(1, 4, 4); x[:, :, 2:] = 3.0   # one vertical edge of height 3, 4 pixels long
    >>> float(tv_value(x, [-2, -1]))
    12.0
    """
    g = grad_nd(x, axes)
    sq = (g.abs() ** 2).sum(0)
    e = torch.as_tensor(eps, dtype=sq.dtype, device=sq.device)
    if e.ndim:
        e = e.view(-1, *([1] * (sq.ndim - 1)))
    return torch.sqrt(sq + e**2).reshape(x.shape[0], -1).sum(1)


def tune_tv(y: torch.Tensor, operator, reference: torch.Tensor, lams: Sequence[float], **params):
    """Pick the TV weight with the best PSNR against ``reference`` (benchmarks only).

    Runs :class:`TV` with each ``lam`` in ``lams`` (other keyword ``params`` passed on) and
    returns ``(best_lam, best_x, table)`` with ``table`` a list of ``(lam, psnr_db)``.  It
    needs the ground truth ``reference`` (B, *domain_shape), so it is a tool for comparing
    methods fairly on simulated data, not for reconstructing real scans.
    """
    if len(lams) == 0:
        raise InputError("tune_tv needs at least one lam to try")
    params.pop("lam", None)
    table, best = [], None
    for lam in lams:
        x = TV(lam=float(lam), **params).sample(y, operator)
        v = psnr(x, reference, clip=False)
        table.append((float(lam), v))
        if best is None or v > best[1]:
            best = (float(lam), v, x)
    return best[0], best[2], table
