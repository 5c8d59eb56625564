"""The sampler contract: :class:`Param` (a declared parameter) and :class:`Sampler`.

A :class:`Sampler` turns measurements ``y`` of an :class:`~medrecon.operators.Operator`
into images, optionally with a diffusion prior (:class:`~medrecon.priors.protocol.PriorProtocol`)::

    x = sampler.sample(y, operator, prior, steps=50, generators=gens, progress=cb)

* ``y`` is shaped ``(B, *operator.range_shape)``; ``x`` comes back shaped
  ``(B, *operator.domain_shape)`` in **physical units** (HU for CT), on ``y``'s device.
* ``generators`` is a list of ``B`` CPU :class:`torch.Generator`, one per slice.  Every
  random number of slice ``b`` is drawn from ``generators[b]`` on the CPU and then moved to
  the device (:func:`~medrecon.streams.randn_per_slice`).  Together with per-slice inner products and norms
  (never batch-global ones), this makes the result of a slice independent of the batch it
  was sampled in and of the device: the engine seeds each slice from (seed, slice index)
  with :func:`~medrecon.streams.slice_generators`.
* ``progress(step_done, total)`` is called after every step.
* ``x_init`` (physical units) replaces the default starting point where a sampler has one
  (RED-Diff, TV); DPS and DDS noise it to their first timestep.
* Operators whose image has several components (``component_names``, e.g. ``us.haze``:
  tissue and haze, domain ``(n_components, H, W)``) are taken only by samplers that set
  ``handles_components = True`` (``dehaze``); the others refuse them with one sentence.

Network calls: the prior's ``eps`` takes ``(B, 1, H, W)``; operators of 2D slices take
``(B, H, W)``.  Samplers keep images as ``(B, H, W)`` and add the channel axis only around
``prior.eps`` (:func:`~medrecon.samplers.prior_ops.prior_eps`).  Data consistency is done in physical units:
``x_phys = prior.from_net(x_net)``.

Complex-domain operators (MRI) with a real prior: the prior-based samplers keep the image
real and measure it as a complex image with zero imaginary part; the gradient and the normal
operator then act on the real part (the operator base class and
:mod:`medrecon.operators.linalg` handle this).  The baselines
(``classical``, ``tv``) work on complex images directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from medrecon.errors import InputError

__all__ = ["CACHE_PARAM", "PHASE_PARAM", "Param", "Sampler"]


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
        """``value`` checked and converted to ``kind``; an :class:`InputError` (one sentence naming the
        sampler and the parameter) otherwise.  Numbers must be finite: NaN and +-inf are refused for
        every numeric parameter, bounded or not, so none reaches a sampler."""
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
            v = self._number(sampler, name, value)
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

    def _number(self, sampler: str, name: str, value: Any) -> int | float:
        """``value`` as a finite float (an int for ``kind is int``); an :class:`InputError` for a
        non-number, a bool, NaN or +-inf (whatever the parameter's range), or a fraction for an int."""
        noun = "an integer" if self.kind is int else "a number"
        try:
            if isinstance(value, bool):
                raise TypeError
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"sampler {sampler!r} parameter {name!r} must be {noun}, got {value!r}") from None
        if not math.isfinite(v):
            raise InputError(f"sampler {sampler!r} parameter {name!r} must be finite, got {value!r}")
        if self.kind is int and v != int(v):
            raise InputError(f"sampler {sampler!r} parameter {name!r} must be an integer, got {value!r}")
        return int(v) if self.kind is int else v


# --------------------------------------------------------------------------- the contract
def _checking(progress: Callable[[int, int], None] | None) -> Callable[[int, int], None]:
    """``progress`` preceded by :func:`medrecon.stopping.check` (a stopping run's worker ends here)."""
    from medrecon.stopping import check

    def f(done: int, total: int) -> None:
        check()
        if progress is not None:
            progress(done, total)

    return f


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
    #: True for volume samplers whose ``sample`` takes ``checkpoint=fn`` (called with the state at
    #: every step boundary) and ``resume_state=state`` (continue from it): the engine then saves
    #: that state in the run's checkpoint folder and resumes from it
    resumable: ClassVar[bool] = False
    #: True for volume samplers that draw per axial slice of a 3D operator's volume (one generator
    #: per axial slice, like a per-slice operator) rather than one generator for the volume
    generators_per_axial_slice: ClassVar[bool] = False

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
        """Reconstruct ``(B, *domain_shape)`` images (physical units) from ``y`` ``(B, *range_shape)``.

        ``progress`` is called after every step; each call first checks whether the run is stopping
        (:func:`medrecon.stopping.check`), so a worker thread stops within one step."""
        steps, generators, x_init = self._checked(y, operator, prior, steps, generators, x_init)
        progress = _checking(progress)
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

        def run(w, yy, op):  # each solver iteration of the weight search may be where a run stops
            return self._with(**{name: w})._sample(yy, op, prior, steps, generators, _checking(None), None)

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
                y[b:b + 1], op_b, prior, steps, generators[b:b + 1], _checking(None),
                None if x_init is None else x_init[b:b + 1]))
            if progress is not None:
                progress(b + 1, B)
        return torch.cat(out)

    def resolve_steps(self, steps: int | None, prior=None) -> int | None:
        """The steps this sampler runs: ``steps``, else ``default_steps``; for a diffusion sampler
        (``needs_prior``) capped at the prior's schedule length ``T = prior.num_timesteps`` (a
        DDIM-type sampler visits at most every timestep once).  The one place the step count is
        resolved: the engine's plan records this value, the samplers run it.

        >>> from medrecon.samplers import get_sampler
        >>> from medrecon.testing import smooth_gaussian_prior
        >>> get_sampler("dds").resolve_steps(5000, smooth_gaussian_prior(8))
        1000
        """
        eff = int(steps) if steps is not None else self.default_steps
        if eff is not None and prior is not None and self.needs_prior:
            eff = min(int(eff), int(prior.num_timesteps))
        interval = self.__dict__.get("_params", {}).get("cache_interval")
        if interval and eff is not None:  # a cache interval longer than the run is the caller's error
            from medrecon.priors.feature_cache import check_interval

            check_interval(interval, eff)
        return eff

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


# --------------------------------------------------------------------------- feature caching
#: the ``cache_interval`` parameter of the diffusion samplers (:mod:`medrecon.priors.feature_cache`):
#: also checked against the run's steps by :meth:`Sampler.resolve_steps`
CACHE_PARAM = Param(int, 0, "feature caching (DeepCache): a full network pass every N steps, in between only the "
                    "shallow blocks with the cached deep feature (0: off; at most the step count)", lo=0)


# --------------------------------------------------------------------------- metrics
