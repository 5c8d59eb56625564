"""The sampler contract, and the numerical helpers every sampler shares.

A :class:`Sampler` turns measurements ``y`` of an :class:`~medrecon.operators.Operator`
into images, optionally with a diffusion prior (:class:`~medrecon.priors.protocol.PriorProtocol`)::

    x = sampler.sample(y, operator, prior, steps=50, generators=gens, progress=cb)

* ``y`` is shaped ``(B, *operator.range_shape)``; ``x`` comes back shaped
  ``(B, *operator.domain_shape)`` in **physical units** (HU for CT), on ``y``'s device.
* ``generators`` is a list of ``B`` CPU :class:`torch.Generator`, one per slice.  Every
  random number of slice ``b`` is drawn from ``generators[b]`` on the CPU and then moved to
  the device (:func:`randn_per_slice`).  Together with per-slice inner products and norms
  (never batch-global ones), this makes the result of a slice independent of the batch it
  was sampled in and of the device: the engine seeds each slice from (seed, slice index)
  with :func:`slice_generators`.
* ``progress(step_done, total)`` is called after every step.
* ``x_init`` (physical units) replaces the default starting point where a sampler has one
  (RED-Diff, TV); DPS and DDS noise it to their first timestep.
* Operators whose image has several components (``component_names``, e.g. ``us.haze``:
  tissue and haze, domain ``(n_components, H, W)``) are taken only by samplers that set
  ``handles_components = True`` (``dehaze``); the others refuse them with one sentence.

Network calls: the prior's ``eps`` takes ``(B, 1, H, W)``; operators of 2D slices take
``(B, H, W)``.  Samplers keep images as ``(B, H, W)`` and add the channel axis only around
``prior.eps`` (:func:`prior_eps`).  Data consistency is done in physical units:
``x_phys = prior.from_net(x_net)``.

Complex-domain operators (MRI) with a real prior: the prior-based samplers keep the image
real and measure it as a complex image with zero imaginary part; the gradient and the normal
operator then act on the real part (the operator base class handles this).  The baselines
(``classical``, ``tv``) work on complex images directly.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from medrecon.errors import InputError

__all__ = [
    "Param",
    "Sampler",
    "cg",
    "estimate_norm",
    "net_scale",
    "prior_eps",
    "psnr",
    "randn_per_slice",
    "AntitheticGenerator",
    "slice_generators",
    "tweedie_clip",
    "tweedie_x0",
    "ddim_renoise",
    "vdot_per_slice",
]


# --------------------------------------------------------------------------- parameters
class Param:
    """Declaration of one sampler parameter: its type, default, range and meaning.

    ``kind`` is ``int``, ``float``, ``bool`` or ``str``; ``lo``/``hi`` bound numbers
    (``lo_open``/``hi_open`` make the bound strict); ``choices`` lists allowed strings;
    ``none_ok`` allows ``None``; ``auto_ok`` allows the string ``"auto"`` for a number (the
    sampler resolves it when it runs).  ``doc`` is one line for ``docs/samplers.md`` and the CLI.
    """

    def __init__(self, kind: type, default: Any, doc: str = "", *, lo=None, hi=None, lo_open=False,
                 hi_open=False, choices: Sequence[Any] | None = None, none_ok: bool = False,
                 auto_ok: bool = False):
        self.kind, self.default, self.doc = kind, default, doc
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.choices = tuple(choices) if choices is not None else None
        self.none_ok, self.auto_ok = none_ok, auto_ok

    def validate(self, sampler: str, name: str, value: Any) -> Any:
        if self.auto_ok and isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if value is None:
            if self.none_ok:
                return None
            raise InputError(f"sampler {sampler!r} parameter {name!r} must not be None")
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise InputError(f"sampler {sampler!r} parameter {name!r} must be true or false, got {value!r}")
        if self.kind in (int, float):
            try:
                if isinstance(value, bool):
                    raise TypeError
                v = float(value)
                if self.kind is int:
                    if v != int(v):
                        raise ValueError
                    v = int(v)
            except (TypeError, ValueError):
                raise InputError(
                    f"sampler {sampler!r} parameter {name!r} must be a{'n integer' if self.kind is int else ' number'}, "
                    f"got {value!r}"
                ) from None
            if not math.isfinite(v):
                raise InputError(f"sampler {sampler!r} parameter {name!r} must be finite, got {value!r}")
            if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
                raise InputError(
                    f"sampler {sampler!r} parameter {name!r} must be {'>' if self.lo_open else '>='} {self.lo}, got {v}"
                )
            if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
                raise InputError(
                    f"sampler {sampler!r} parameter {name!r} must be {'<' if self.hi_open else '<='} {self.hi}, got {v}"
                )
            return v
        if self.kind is str:
            v = str(value)
            if self.choices is not None and v not in self.choices:
                raise InputError(
                    f"sampler {sampler!r} parameter {name!r} must be one of {', '.join(map(str, self.choices))}, "
                    f"got {value!r}"
                )
            return v
        raise InputError(f"sampler {sampler!r} parameter {name!r} has an unsupported type")  # pragma: no cover


# --------------------------------------------------------------------------- the contract
class Sampler:
    """Base class of all samplers (see the module docstring for the contract).

    Subclasses set the class attributes ``name``, ``needs_prior``, ``per_slice``,
    ``default_steps`` and ``params`` (a dict name -> :class:`Param`), and implement
    ``_sample(y, operator, prior, steps, generators, progress, x_init)`` on validated
    input.  ``__init__(**params)`` validates keyword parameters against ``params`` and
    stores them JSON-able; ``spec()`` returns ``{"name", "params"}`` and
    :meth:`from_spec` rebuilds the sampler.
    """

    name: ClassVar[str] = "sampler"
    needs_prior: ClassVar[bool] = True
    per_slice: bool = True  # instances may override (TV with dims=3)
    default_steps: ClassVar[int | None] = None
    params: ClassVar[dict[str, Param]] = {}
    #: True for samplers that reconstruct multi-component images (operators with ``component_names``)
    handles_components: ClassVar[bool] = False
    #: ``(param, grid, fallback)``: a positive weight the sampler chooses per slice by
    #: cross-validation on held-out measurements when the parameter is ``"auto"``
    #: (:mod:`medrecon.samplers.autotune`), ``fallback`` where the operator cannot hold out data
    tunable: ClassVar[tuple[str, tuple[float, ...], float] | None] = None
    #: what the cross-validated weight is multiplied by (None: :data:`medrecon.samplers.autotune.CV_SCALE`)
    tune_scale: ClassVar[float | None] = None
    #: True for samplers that, given an operator whose real image is a convention (it has a
    #: :meth:`~medrecon.operators.base.Operator.complex_twin`), solve for the complex image and
    #: return its magnitude: a free phase costs a classical method nothing and fits real raw data
    phase_free: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise InputError(f"sampler {self.name!r} has no parameter {unknown[0]!r} (known: {known})")
        values = {}
        for key, p in self.params.items():
            values[key] = p.validate(self.name, key, params.get(key, p.default))
        self._params = values
        self._validate_params()

    def _validate_params(self) -> None:
        """Cross-parameter checks; raise :class:`InputError` with one sentence."""

    # ------------------------------------------------------------------ public API
    @property
    def param_values(self) -> dict[str, Any]:
        """The validated parameters (a copy)."""
        return dict(self._params)

    def __getattr__(self, key: str) -> Any:
        params = self.__dict__.get("_params")
        if params is not None and key in params:
            return params[key]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {key!r}")

    def spec(self) -> dict[str, Any]:
        """A JSON-able dict ``{"name": ..., "params": {...}}`` that :meth:`from_spec` rebuilds."""
        return {"name": self.name, "params": dict(self._params)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Sampler":
        return cls(**spec.get("params", {}))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.get("_params", {}).items())
        return f"{type(self).__name__}({inner})"

    def sample(
        self,
        y: torch.Tensor,
        operator,
        prior=None,
        *,
        steps: int | None = None,
        generators: Sequence[torch.Generator] | None = None,
        progress: Callable[[int, int], None] | None = None,
        x_init: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reconstruct ``(B, *domain_shape)`` images (physical units) from ``y`` ``(B, *range_shape)``."""
        steps, generators, x_init = self._checked(y, operator, prior, steps, generators, x_init)
        twin = operator.complex_twin() if self._phase_free() and not operator.domain_is_complex else None
        if twin is not None:
            x0 = None if x_init is None else x_init.to(twin.domain_dtype(x_init.real.dtype))
            return self.sample(y, twin, prior, steps=steps, generators=generators, progress=progress,
                               x_init=x0).abs()
        if self._tunes():
            return self._sample_tuned(y, operator, prior, steps, generators, progress, x_init)
        return self._sample(y, operator, prior, steps, generators, progress, x_init)

    def _phase_free(self) -> bool:
        """Whether :meth:`sample` solves for a complex image where the operator allows (``phase_free``)."""
        return self.phase_free

    def _tunes(self) -> bool:
        """Whether :meth:`sample` chooses the ``tunable`` weight (it is ``"auto"``)."""
        return self.tunable is not None and self._params.get(self.tunable[0]) == "auto"

    def _with(self, **params: Any) -> "Sampler":
        """A copy of this sampler with ``params`` changed."""
        return type(self)(**dict(self._params, **params))

    def _sample_tuned(self, y, operator, prior, steps, generators, progress, x_init):
        """:meth:`sample` with the ``tunable`` weight chosen per slice (:mod:`medrecon.samplers.autotune`)."""
        from medrecon.samplers.autotune import CV_SCALE, _record, tune_per_slice

        name, grid, fallback = self.tunable
        B = y.shape[0]

        def run(w, yy, op):
            return self._with(**{name: w})._sample(yy, op, prior, steps, generators, None, None)

        scale = CV_SCALE if self.tune_scale is None else self.tune_scale
        values, table = tune_per_slice(run, grid, y, operator, scale=scale)
        if values is None:
            _record({"param": name, "values": [fallback] * B,
                     "method": f"fallback: {operator.name} cannot hold out measurements"})
            return self._with(**{name: fallback})._sample(y, operator, prior, steps, generators, progress, x_init)
        _record({"param": name, "values": values, "method": "cross-validation on held-out measurements",
                 "tried": sorted(table)})
        if len(set(values)) == 1:
            return self._with(**{name: values[0]})._sample(y, operator, prior, steps, generators, progress, x_init)
        out = []
        for b, w in enumerate(values):  # slices are independent: each with its own weight
            op_b = operator.for_slices([b]) if operator.slice_varying else operator
            out.append(self._with(**{name: w})._sample(
                y[b:b + 1], op_b, prior, steps, generators[b:b + 1], None,
                None if x_init is None else x_init[b:b + 1]))
            if progress is not None:
                progress(b + 1, B)
        return torch.cat(out)

    def _checked(self, y, operator, prior, steps, generators, x_init, *, n_generators: int | None = None,
                 slice_prior: bool = True):
        """The input checks of :meth:`sample` (one-sentence :class:`InputError` each); returns
        ``(steps, generators, x_init)`` normalised.  ``n_generators`` (default: the batch size)
        and ``slice_prior=False`` serve samplers that meet a 2D prior on the slices of a 3D
        operator's volume (:mod:`medrecon.samplers.admm_tvz`)."""
        if not isinstance(y, torch.Tensor):
            raise InputError(f"sampler {self.name!r} expects a torch.Tensor y, got {type(y).__name__}")
        rshape = tuple(operator.range_shape)
        if y.ndim != len(rshape) + 1 or tuple(y.shape[1:]) != rshape:
            raise InputError(
                f"sampler {self.name!r} expects measurements shaped (B, {', '.join(map(str, rshape))}), "
                f"got {tuple(y.shape)}"
            )
        if y.shape[0] < 1:
            raise InputError(f"sampler {self.name!r} got an empty batch of measurements")
        if not bool(torch.isfinite(torch.view_as_real(y) if y.is_complex() else y).all()):
            raise InputError(f"sampler {self.name!r} got measurements containing NaN or infinity")
        if self.needs_prior:
            if prior is None:
                raise InputError(f"sampler {self.name!r} needs a diffusion prior")
            comps = tuple(getattr(operator, "component_names", ()) or ())
            if comps and not getattr(self, "handles_components", False):
                raise InputError(
                    f"operator {operator.name!r} reconstructs an image of components {', '.join(comps)}, "
                    f"which sampler {self.name!r} does not handle; use a sampler made for it (e.g. dehaze)"
                )
            if slice_prior and len(operator.domain_shape) - (1 if comps else 0) != 2:
                raise InputError(
                    f"sampler {self.name!r} uses a 2D slice prior and needs an operator on 2D images, "
                    f"got domain shape {tuple(operator.domain_shape)}"
                )
        B = y.shape[0]
        n = B if n_generators is None else int(n_generators)
        if generators is None:
            generators = [torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
                          for _ in range(n)]
        generators = list(generators)
        if len(generators) != n:
            per = "slice" if n_generators is None else "axial slice of the volume"
            raise InputError(f"sampler {self.name!r} needs one generator per {per}: got {len(generators)} for {n}")
        if steps is not None:
            steps = int(steps)
            if steps < 1:
                raise InputError(f"sampler {self.name!r} needs steps >= 1, got {steps}")
        if x_init is not None:
            dshape = tuple(operator.domain_shape)
            if tuple(x_init.shape) != (B, *dshape):
                raise InputError(
                    f"sampler {self.name!r} expects x_init shaped {(B, *dshape)}, got {tuple(x_init.shape)}"
                )
            x_init = x_init.to(y.device)
        return steps, generators, x_init

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------- image phase from the data
#: the ``phase`` parameter of the prior samplers (:func:`medrecon.samplers.phase.phase_from_data`)
PHASE_PARAM = Param(str, "data", "image phase on raw MRI (an operator with a complex twin): data = the phase of a "
                    "tv reconstruction, maps = the low-resolution phase the coil maps carry", choices=("data", "maps"))


# --------------------------------------------------------------------------- randomness
class AntitheticGenerator(torch.Generator):
    """A generator whose normal draws :func:`randn_per_slice` negates: seeded like a plain one,
    it gives the antithetic twin ``-z`` of every noise tensor ``z`` of that stream
    (``reconstruct(..., samples=N, antithetic=True)``)."""

    sign = -1.0


def slice_generators(seed: int, indices: Sequence[int] | int, draw: int = 0,
                     antithetic: bool = False) -> list[torch.Generator]:
    """CPU generators seeded from ``(seed, slice index)``; ``indices`` an int means ``range(indices)``.

    The seed of slice ``i`` depends only on ``seed`` and ``i`` (through numpy's
    ``SeedSequence``), so a slice gets the same random numbers whatever batch it is in.
    ``draw`` > 0 selects the independent stream ``(seed, i, draw)`` of a further posterior
    sample of the same slice (``reconstruct(..., samples=N)``); draw 0 is the plain stream.
    ``antithetic`` returns :class:`AntitheticGenerator` s of the same streams: every normal
    draw negated.

    >>> g = slice_generators(0, [5])[0]; h = slice_generators(0, range(3, 6))[2]
    >>> bool(torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=h)))
    True
    """
    import numpy as np

    if isinstance(indices, int):
        indices = range(indices)
    out = []
    for i in indices:
        entropy = [int(seed) & (2**63 - 1), int(i)] + ([int(draw)] if draw else [])
        s = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
        out.append((AntitheticGenerator if antithetic else torch.Generator)().manual_seed(s & (2**63 - 1)))
    return out


def randn_per_slice(generators: Sequence[torch.Generator], shape: Sequence[int], *,
                    device=None, dtype=torch.float32) -> torch.Tensor:
    """A ``(B, *shape)`` standard normal tensor, slice ``b`` drawn from ``generators[b]`` on the CPU.

    Drawn on the CPU (so a slice's numbers do not depend on the device) and then moved to
    ``device``.  Complex dtypes get independent real and imaginary parts of variance 1/2 each.
    An :class:`AntitheticGenerator` gives the negated numbers of its stream.
    """
    shape = tuple(int(s) for s in shape)
    real = dtype.to_real() if dtype.is_complex else dtype
    parts = []
    for g in generators:
        sign = getattr(g, "sign", 1.0)
        if dtype.is_complex:
            z = torch.randn((*shape, 2), generator=g, dtype=real) * (sign * math.sqrt(0.5))
            parts.append(torch.view_as_complex(z))
        else:
            z = torch.randn(shape, generator=g, dtype=real)
            parts.append(z if sign == 1.0 else sign * z)
    return torch.stack(parts).to(device=device)


# --------------------------------------------------------------------------- linear algebra
def vdot_per_slice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hermitian inner products ``<a_b, b_b> = sum(conj(a_b) * b_b)``, one per slice: shape (B,)."""
    prod = a.conj() * b if a.is_complex() else a * b
    return prod.reshape(prod.shape[0], -1).sum(dim=1)


def norm_per_slice(a: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each slice (real output, shape (B,))."""
    return torch.linalg.vector_norm(a.reshape(a.shape[0], -1), dim=1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor,
       iters: int, tol: float = 0.0) -> torch.Tensor:
    """Conjugate gradients for ``M x = b`` with ``M`` Hermitian positive (semi-)definite.

    Each slice of the batch is an independent system: step lengths use per-slice Hermitian
    inner products (:func:`vdot_per_slice`), so results do not depend on the batch and the
    method is correct for complex images.  Starts at ``x0`` (not modified) and runs ``iters``
    iterations; a slice whose residual norm falls below ``tol * ||b||`` stops moving.
    """
    x = x0.clone()
    # stop a slice at a residual near rounding level: past it, p^H M p can underflow to
    # rounding noise (singular M, e.g. A^H A with fewer measurements than unknowns)
    tol = max(float(tol), 100 * torch.finfo(x.real.dtype).eps)
    r = b - apply(x)
    p = r.clone()
    rs = vdot_per_slice(r, r).real
    bn = norm_per_slice(b)
    for _ in range(int(iters)):
        if bool((rs.sqrt() <= tol * bn).all()):
            break
        ap = apply(p)
        pap = vdot_per_slice(p, ap).real
        active = (pap > 0) & (rs > (tol * bn) ** 2)
        alpha = torch.where(active, rs / torch.where(pap > 0, pap, torch.ones_like(pap)), torch.zeros_like(rs))
        x = x + _bcast(alpha, x).to(x.dtype) * p
        r = r - _bcast(alpha, r).to(r.dtype) * ap
        rs_new = vdot_per_slice(r, r).real
        beta = torch.where(active & (rs > 0), rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)),
                           torch.zeros_like(rs))
        p = r + _bcast(beta, p).to(p.dtype) * p
        rs = torch.where(active, rs_new, rs)
    return x


_NORM_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def tweedie_clip(prior, clip):
    """The Tweedie clamp (network units) that ``clip`` means for ``prior``: a number or None as
    given; ``"auto"``: the range the prior's intensity map gives its training images.  A CT
    window (-1000..2000 HU, covering the data) and the ultrasound mu-law put them in [-1, 1],
    so 1.0 (the official DPS clamp to the data range); an MR percentile map sends the volume's
    p0.5 / p99.5 to -1 / 1 and leaves the brightest tissue above 1 (2.6 % of the held-out T1
    slices' pixels, up to 3.2), so no clamp (clamping at 1 cost DPS 0.4-1 dB on the MR
    validation slices, docs/samplers.md).  Priors without an intensity map: 1.0."""
    if clip != "auto":
        return clip
    cfg = getattr(prior, "config", None)
    kind = ((cfg.get("intensity") or {}).get("kind") if isinstance(cfg, dict) else None)
    return None if kind == "percentile" else 1.0


def estimate_norm(operator, iters: int = 50, *, device=None, real_domain: bool | None = None) -> float:
    """Operator norm ``||A||`` (largest singular value) by power iteration on ``A^H A``.

    Runs on a batch of ONE image from a fixed seed, so the estimate is the same whatever the
    batch size (per-slice operators share one geometry).  ``real_domain`` restricts to real
    images for a complex-domain operator (what a real prior meets).  The estimate slightly
    under-estimates the norm (it converges from below); callers use it for step sizes and
    scale-aware defaults with a safety margin.  Results are cached per operator object.

    A slice-varying operator (``operator.slice_varying``, per-slice coil maps) has one norm
    per slice; the estimate is the largest over *all* slices of its measurement
    (``operator.slice_root``), whatever selection is passed, so a slice's step sizes do not
    depend on the other slices of its batch: per-slice power iterations on the root's
    slices from the same start image, cached on the root.
    """
    if device is None:
        device = _device_of(operator)
    complex_dom = bool(operator.domain_is_complex) and not real_domain
    key = (int(iters), complex_dom, str(device))
    if getattr(operator, "slice_varying", False):
        operator = operator.slice_root
    cache = _NORM_CACHE.setdefault(operator, {}) if _weakrefable(operator) else {}
    if key in cache:
        return cache[key]
    if getattr(operator, "slice_varying", False):
        val = _norm_over_slices(operator, int(iters), complex_dom)
        cache[key] = val
        return val
    gen = torch.Generator().manual_seed(12345)
    shape = (1, *operator.domain_shape)
    dtype = torch.float64 if _is_double(operator) else torch.float32
    x = randn_per_slice([gen], operator.domain_shape, dtype=torch.complex128 if complex_dom else torch.float64)
    x = x.to(device=device, dtype=(dtype.to_complex() if complex_dom else dtype))
    x = x.reshape(shape)
    lam = 0.0
    with torch.no_grad():
        for _ in range(int(iters)):
            n = torch.linalg.vector_norm(x)
            if float(n) == 0:
                break
            x = x / n
            z = _normal(operator, x)
            lam = float(vdot_per_slice(x, z).real.sum())
            x = z
    val = math.sqrt(max(lam, 0.0))
    cache[key] = val
    return val


def _device_of(operator) -> torch.device:
    return next((t.device for t in list(operator.buffers()) + list(operator.parameters())), torch.device("cpu"))


def _norm_over_slices(root, iters: int, complex_dom: bool, chunk: int | None = None) -> float:
    """``max_s ||A_s||`` over the slices of a slice-varying operator: power iteration on
    ``A_s^H A_s`` for each slice (normalised per slice), ``chunk`` slices per batch (default:
    1 on the CPU, where larger batches fall out of the caches -- 16 slices of 15 coils at
    320 x 320 took 6 s one at a time and 27 s eight at a time -- and 8 on a GPU), on the
    operator's own device."""
    dev = _device_of(root)
    chunk = int(chunk) if chunk is not None else (1 if dev.type == "cpu" else 8)
    gen = torch.Generator().manual_seed(12345)
    dtype = torch.float64 if _is_double(root) else torch.float32
    x0 = randn_per_slice([gen], root.domain_shape, dtype=torch.complex128 if complex_dom else torch.float64)
    x0 = x0.to(device=dev, dtype=(dtype.to_complex() if complex_dom else dtype))
    best = 0.0
    with torch.no_grad():
        for s0 in range(0, int(root.n_slices), chunk):
            idx = list(range(s0, min(s0 + chunk, int(root.n_slices))))
            op = root.for_slices(idx)
            x = x0.expand(len(idx), *root.domain_shape).clone()
            lam = torch.zeros(len(idx), dtype=torch.float64, device=dev)
            for _ in range(iters):
                n = norm_per_slice(x)
                x = x / _bcast(torch.where(n > 0, n, torch.ones_like(n)), x)
                z = _normal(op, x)
                lam = vdot_per_slice(x, z).real.to(torch.float64)
                x = z
            best = max(best, float(lam.max()))
    return math.sqrt(max(best, 0.0))


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


def _is_double(operator) -> bool:
    for t in list(operator.buffers()) + list(operator.parameters()):
        if t.dtype in (torch.float64, torch.complex128):
            return True
        if t.is_floating_point() or t.is_complex():
            return False
    return False


def _normal(operator, x: torch.Tensor) -> torch.Tensor:
    """``A^H A x`` keeping ``x``'s real/complex kind (real part for a real image)."""
    xin = x
    if operator.domain_is_complex and not x.is_complex():
        xin = x.to(x.dtype.to_complex())
    out = operator.adjoint(operator.forward(xin))
    if not x.is_complex() and out.is_complex():
        out = out.real
    return out


def apply_forward(operator, x: torch.Tensor) -> torch.Tensor:
    """``A x`` for a real image ``x`` and a complex-domain operator too (cast to complex)."""
    if operator.domain_is_complex and not x.is_complex():
        x = x.to(x.dtype.to_complex())
    return operator.forward(x)


def apply_adjoint_real(operator, r: torch.Tensor, real: bool) -> torch.Tensor:
    """``A^H r``, its real part when ``real`` (a real image measured by a complex operator)."""
    out = operator.adjoint(r)
    if real and out.is_complex():
        out = out.real
    return out


# --------------------------------------------------------------------------- prior helpers
def prior_eps(prior, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``prior.eps`` on ``(B, H, W)`` images: adds and removes the channel axis."""
    return prior.eps(x.unsqueeze(1), t)[:, 0]


def net_scale(prior, like: torch.Tensor) -> torch.Tensor:
    """Per-slice slope ``a`` of ``from_net`` (physical units per network unit), shape (B,).

    ``from_net`` is affine per element (``x_phys = a x_net + b``), possibly with a per-slice
    ``a`` (MR priors bound to a volume's percentiles).
    """
    with torch.no_grad():
        one = prior.from_net(torch.ones_like(like))
        zero = prior.from_net(torch.zeros_like(like))
        d = (one - zero).reshape(like.shape[0], -1).mean(dim=1)
    if bool((d.abs() == 0).any()):
        raise InputError("the prior's from_net map is constant; it must be an invertible affine map")
    return d.abs()


def sample_dtype(y: torch.Tensor) -> torch.dtype:
    """Real working precision: float64 when ``y`` is double, else float32."""
    return torch.float64 if y.dtype in (torch.float64, torch.complex128) else torch.float32


def to_net_real(prior, x_phys: torch.Tensor) -> torch.Tensor:
    """``prior.to_net`` of an image, taking the real part of a complex image first."""
    if x_phys.is_complex():
        x_phys = x_phys.real
    return prior.to_net(x_phys)


# --------------------------------------------------------------------------- metrics
def psnr(x: torch.Tensor, reference: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB of ``x`` against ``reference`` (magnitudes if complex).

    ``data_range`` defaults to ``max(reference) - min(reference)``.
    """
    x = x.abs() if x.is_complex() else x
    r = reference.abs() if reference.is_complex() else reference
    x, r = x.to(torch.float64), r.to(torch.float64).to(x.device)
    if data_range is None:
        data_range = float(r.max() - r.min())
    mse = float(torch.mean((x - r) ** 2))
    if mse == 0:
        return float("inf")
    return 10 * math.log10(data_range**2 / mse)


def as_image(x_phys: torch.Tensor, operator, dtype: torch.dtype) -> torch.Tensor:
    """A real physical-units result in the operator's image dtype: a complex image domain gets
    the complex dtype with a zero imaginary part (our priors are real-valued)."""
    return x_phys.to(operator.domain_dtype(dtype)) if operator.domain_is_complex else x_phys


# --------------------------------------------------------------------------- DDIM algebra
def tweedie_x0(x: torch.Tensor, eps: torch.Tensor, abar_t: float) -> torch.Tensor:
    """Tweedie's estimate of the clean image from ``x_t`` and the predicted noise (network units)::

        x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    """
    return (x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)


def ddim_renoise(x0: torch.Tensor, eps: torch.Tensor, abar_s: float, eta: float, z) -> torch.Tensor:
    """DDS's re-noising of a (data-consistent) clean estimate to timestep ``s``::

        x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) (eta z + sqrt(1 - eta^2) eps)

    ``z`` is fresh Gaussian noise (or 0 when ``eta`` is 0): eta = 1 uses fresh noise only,
    eta = 0 reuses the predicted noise (deterministic DDIM).
    """
    return math.sqrt(abar_s) * x0 + math.sqrt(1 - abar_s) * (eta * z + math.sqrt(1 - eta**2) * eps)
