"""The operator contract: a linear forward model ``A`` of a scanner.

An :class:`Operator` is a ``torch.nn.Module`` that maps a batch of images
``x`` shaped ``(B, *domain_shape)`` to a batch of measurements ``y = A x`` shaped
``(B, *range_shape)``.  ``B`` is the slice axis for per-slice operators (2D CT,
2D MRI); a 3D operator takes whole volumes and ``B`` counts volumes.

Subclasses implement three methods on validated tensors:

* ``_forward(x)``  -- ``y = A x``;
* ``_adjoint(y)``  -- ``x = A^H y``, the exact adjoint, i.e. for all x, y
  ``<A x, y> = <x, A^H y>`` with ``<a, b> = sum(conj(a) * b)``;
* ``classical(y)`` -- the modality's classical reconstruction (FBP,
  zero-filled, delay-and-sum), used as a baseline and a starting point.

and declare their parameters once, as ``PARAMS``, building themselves in ``_build(p)``
(:mod:`medrecon.operators.params`).  The base class adds what every operator needs and
nobody should write twice: shape checks with one-sentence errors, autograd whose backward
*is* the adjoint (so a custom kernel never needs a hand-written gradient), precision
changes, and

* ``normal(x)`` -- ``A^H A x`` (override ``_normal`` with a cheaper form that gives the same
  numbers), and ``norm()`` -- ``||A||`` by power iteration, cached;
* ``spec()`` / ``from_spec(spec, arrays=None)`` -- so that a measurement file (its spec and
  its ``arrays``, e.g. coil maps) rebuilds the same operator a year later;
* ``for_grid(shape, spacing, **params)`` -- the operator for an image grid (pixels, mm);
* ``example()`` -- a small valid instance, what ``medrecon plugins check`` runs.

Slice-varying operators
-----------------------
A per-slice operator whose parameters differ from slice to slice (coil maps estimated per
slice of a multi-slice scan) sets ``slice_varying = True`` (class or instance attribute)
and ``n_slices = S``: it is the operator ``A = diag(A_0, ..., A_{S-1})`` for all ``S``
slices of its measurement, in order, and

* ``forward`` / ``adjoint`` / ``classical`` take a batch of exactly ``S`` slices, batch row
  ``b`` measured by ``A_b`` (any other batch size is an :class:`InputError`);
* ``for_slices(indices)`` returns the operator for those of its slices, in that order:
  ``op.for_slices([i, j])`` is ``diag(A_i, A_j)`` and takes batches of 2 (and
  ``op.for_slices(range(S))`` is ``op`` itself).  Indices count this operator's slices
  (``0 <= i < S``, repeats allowed), so selections compose: ``op.for_slices(a).for_slices(b)
  == op.for_slices([a[k] for k in b])``;
* ``slice_root`` is the operator for all slices it was selected from (itself for an
  operator built from a spec without ``slices``), ``slice_indices`` the root's slices it
  holds (``None`` on the root);
* ``spec()`` of a selection adds ``"slices": [...]`` (root indices) to the dict, and
  :meth:`from_spec` rebuilds the selection from it.

The default ``for_slices`` indexes axis 0 of the buffers named in ``slice_buffers`` and
shares everything else; a subclass with other per-slice state overrides ``_select``.
Every other operator (``slice_varying`` false) returns itself from ``for_slices``, so the
engine calls ``op.for_slices(batch_indices)`` on any operator.

Example (any registered operator)::

    >>> import torch, medrecon
    >>> A = medrecon.get_operator("template.scale", shape=[8, 8], factor=2.0)
    >>> y = A(torch.ones(3, 8, 8))
    >>> tuple(y.shape)
    (3, 8, 8)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from medrecon.errors import InputError, PluginError
from medrecon.operators.autograd import _AdjointFunction, _LinearFunction
from medrecon.operators.params import Param, bind, grid_params, signature_of
from medrecon.operators.params import as_json_params as as_json_params  # re-exported (its old home)
from medrecon.registry import providing_distribution

__all__ = ["Operator", "Param", "as_json_params"]


class Operator(torch.nn.Module):
    """A linear forward model ``A`` as a ``torch.nn.Module`` (see module docstring).

    Class attributes a subclass sets:

    ``name``
        The registry name users type (``"ct.parallel"``).
    ``per_slice``
        True when each batch element is measured independently (2D operators).
    ``domain_is_complex`` / ``range_is_complex``
        Whether images / measurements are complex.
    ``slice_varying``, ``slice_buffers``
        True (class or instance) for an operator whose parameters differ per slice, and
        the names of its buffers whose axis 0 is the slice axis (module docstring); such
        an operator sets ``self.n_slices``.

    ``PARAMS``
        The constructor's parameters, declared once (:mod:`medrecon.operators.params`): the
        base class binds and checks them, calls ``_build(p)`` with the checked values and
        stores them as the spec; the constructor also takes the keyword-only ``arrays``, the
        measurement arrays that ``{"array": NAME}`` parameter values refer to (kept as
        :attr:`spec_arrays`, never in the spec).

    ``_build(p)`` sets ``domain_shape`` and ``range_shape`` (tuples, without the batch axis).
    (An operator without ``PARAMS`` writes its own ``__init__``, passes its keyword
    arguments to ``super().__init__(**params)`` and sets the shapes there.)
    """

    name: ClassVar[str] = "operator"
    per_slice: ClassVar[bool] = True
    domain_is_complex: ClassVar[bool] = False
    range_is_complex: ClassVar[bool] = False
    slice_varying: bool = False
    slice_buffers: ClassVar[tuple[str, ...]] = ()
    #: names of the image's components (domain ``(n_components, *image)``), e.g. tissue and haze
    component_names: tuple[str, ...] = ()
    PARAMS: ClassVar[tuple[Param, ...]] = ()

    domain_shape: tuple[int, ...]
    range_shape: tuple[int, ...]
    n_slices: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.PARAMS and "__init__" not in cls.__dict__:
            cls.__signature__ = signature_of(cls.PARAMS)

    def __init__(self, *args: Any, arrays: dict[str, Any] | None = None, **params: Any) -> None:
        super().__init__()
        self._spec_arrays = dict(arrays or {})
        decl = type(self).PARAMS
        if not decl:  # an operator with its own __init__ and no declaration
            if args:
                raise TypeError(f"{type(self).__name__} passes its parameters to Operator.__init__ by keyword")
            self._params = as_json_params(params)
            return
        p = bind(type(self), decl, args, params)
        self._build(p)
        self._params = as_json_params({d.name: p[d.name] for d in decl if not (d.omit_default and d.is_default(p[d.name]))})

    def _build(self, p: dict[str, Any]) -> None:  # pragma: no cover - abstract for declared operators
        """Build the operator from its checked parameters ``p`` (class docstring)."""
        raise NotImplementedError(f"{type(self).__name__} declares PARAMS but no _build(p)")

    @property
    def spec_arrays(self) -> dict[str, Any]:
        """The measurement arrays this operator was built with (``arrays=``), by name: what
        :func:`medrecon.operator_from_spec` needs besides :meth:`spec` to rebuild it."""
        return dict(self.__dict__.get("_spec_arrays") or {})

    # ------------------------------------------------------ building
    @classmethod
    def for_grid(cls, shape: Sequence[int], spacing: Sequence[float] | None = None, /,
                 **params: Any) -> "Operator":
        """The operator for an image grid ``shape`` (pixels: ``[ny, nx]``, or ``[Z, Y, X]`` for a
        3D operator) with pixel sizes ``spacing`` (mm, one per axis), other parameters ``params``.

        Fills the parameters declared with a ``grid`` role (:mod:`medrecon.operators.params`)
        that ``params`` does not give: the image shape, a pixel size for square pixels, a voxel
        size.  A given shape is kept (the caller checks it against the grid); ``shape`` and
        ``spacing`` are positional, so ``params`` may hold parameters of those names.

        >>> import medrecon
        >>> cls = medrecon.operators.operator_class("template.scale")
        >>> cls.for_grid((6, 5), (0.8, 0.8), factor=3.0).spec()["params"]
        {'shape': [6, 5], 'factor': 3.0}
        """
        return cls(**grid_params(cls, shape, spacing, params))

    @classmethod
    def example(cls) -> "Operator":
        """A small valid instance (small grid, synthetic arrays) for the conformance kit.

        The default: :meth:`for_grid` on a 32 x 32 grid of 1 mm pixels (an 8 x 16 x 16 volume
        for a 3D operator) with the other parameters at their defaults; an operator with
        required parameters that no grid fills overrides it.  Raises
        :class:`~medrecon.errors.PluginError` when that does not build.

        >>> import medrecon
        >>> medrecon.operators.operator_class("template.scale").example().domain_shape
        (32, 32)
        """
        shape = (32, 32) if cls.per_slice else (8, 16, 16)
        try:
            return cls.for_grid(shape, (1.0,) * len(shape))
        except (TypeError, InputError) as exc:
            raise PluginError(f"operator {cls.name!r} has no example(): its class must define one "
                              f"(building it for a {'x'.join(map(str, shape))} grid failed: {exc})") from exc

    # ------------------------------------------------------ slice-varying
    @property
    def slice_root(self) -> "Operator":
        """The operator for all slices this one was selected from (``self`` when not a selection)."""
        root = self.__dict__.get("_slice_root")
        return self if root is None else root

    @property
    def slice_indices(self) -> tuple[int, ...] | None:
        """The root's slices this selection holds, in order; ``None`` for a root operator."""
        return self.__dict__.get("_slice_indices")

    def for_slices(self, indices: Sequence[int]) -> "Operator":
        """The operator for slices ``indices`` of this one, in that order (module docstring).

        ``self`` when the operator is not ``slice_varying`` (one operator serves every slice).
        Indices are integers in ``[0, n_slices)``; a bad one is an :class:`InputError`.

        >>> import torch, medrecon
        >>> A = medrecon.get_operator("template.scale", shape=[4, 4], factor=2.0)
        >>> A.for_slices([3, 1]) is A
        True
        """
        if not self.slice_varying:
            return self
        n = int(self.n_slices)
        try:
            raw = list(indices)
            idx = [int(i) for i in raw]
            ok = len(idx) > 0 and all(not isinstance(i, bool) and float(i) == j for i, j in zip(raw, idx, strict=True))
        except (TypeError, ValueError, RuntimeError):
            raw, ok = indices, False
        if not ok or any(not 0 <= i < n for i in idx):
            raise InputError(f"{self.name}: for_slices needs a non-empty list of slice indices in [0, {n}), "
                             f"got {_short(raw)}")
        if idx == list(range(n)):  # all its slices in order: the operator itself (no copy of its buffers)
            return self
        root = self.slice_root
        root_idx = tuple(idx) if self.slice_indices is None else tuple(self.slice_indices[i] for i in idx)
        new = self._select(idx)
        object.__setattr__(new, "_slice_root", root)  # not a submodule: .to() and state_dict() skip it
        object.__setattr__(new, "_slice_indices", root_idx)
        new.n_slices = len(idx)
        return new

    def _select(self, idx: list[int]) -> "Operator":
        """A shallow copy whose ``slice_buffers`` hold rows ``idx`` (other state is shared)."""
        new = copy.copy(self)
        new.__dict__["_buffers"] = dict(self._buffers)
        new.__dict__["_parameters"] = dict(self._parameters)
        new.__dict__["_modules"] = dict(self._modules)
        for name in self.slice_buffers:
            b = self._buffers.get(name)
            if b is not None:
                new._buffers[name] = b.index_select(0, torch.as_tensor(idx, dtype=torch.long, device=b.device))
        return new

    # ------------------------------------------------------------------ API
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``A`` to a batch ``x`` of shape ``(B, *domain_shape)``."""
        self._check(x, self.domain_shape, "image")
        if torch.is_grad_enabled() and x.requires_grad:
            return _LinearFunction.apply(x, self)
        return self._forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the exact adjoint ``A^H`` to a batch ``y`` of shape ``(B, *range_shape)``."""
        self._check(y, self.range_shape, "measurement")
        if torch.is_grad_enabled() and y.requires_grad:
            x = _AdjointFunction.apply(y, self)
        else:
            x = self._adjoint(y)
        # For a real image space the adjoint of x -> A x (real inner product
        # Re<., .> on the range) is Re(A^H y); a subclass may return either.
        if not self.domain_is_complex and x.is_complex():
            x = x.real
        return x

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the normal operator ``A^H A`` (self-adjoint, positive semi-definite) to ``x``
        ``(B, *domain_shape)``.

        A real ``x`` for a complex-domain operator gives ``Re(A^H A x)``: the normal operator of
        ``A`` restricted to real images (``x`` is cast to complex first).  Differentiable;
        without autograd it runs :meth:`_normal`, which a subclass may override with a cheaper
        form giving the same numbers.

        >>> import torch, medrecon
        >>> A = medrecon.get_operator("template.scale", shape=[2, 2], factor=3.0)
        >>> A.normal(torch.ones(1, 2, 2))[0, 0, 0].item()
        9.0
        """
        self._check(x, self.domain_shape, "image")
        xin = x.to(x.dtype.to_complex()) if self.domain_is_complex and not x.is_complex() else x
        if torch.is_grad_enabled() and x.requires_grad:
            out = self.adjoint(self.forward(xin))
        else:
            out = self._normal(xin)
        return out.real if not x.is_complex() and out.is_complex() else out

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x`` on a validated image batch: ``adjoint(forward(x))``."""
        return self.adjoint(self.forward(x))

    def norm(self, iters: int = 50, *, real_domain: bool | None = None) -> float:
        """The operator 2-norm ``||A||`` (largest singular value, in units of y per unit of x)
        by power iteration on ``A^H A`` (:func:`medrecon.operators.linalg.estimate_norm`:
        one image from a fixed seed, cached per operator, device and precision; the largest
        over all slices of a slice-varying operator).  ``real_domain``: over real images only.

        >>> import medrecon
        >>> round(medrecon.get_operator("template.scale", shape=[4, 4], factor=-3.0).norm(), 6)
        3.0
        """
        from medrecon.operators.linalg import estimate_norm

        return estimate_norm(self, iters, real_domain=real_domain)

    def classical(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The modality's classical reconstruction of ``y`` (FBP, zero-filled...)."""
        raise NotImplementedError(f"{type(self).__name__} has no classical reconstruction")

    def complex_twin(self) -> "Operator | None":
        """This operator on complex images, for an operator whose real image is a convention.

        An MRI operator with ``real_image=True`` measures a real image whose phase it carries
        itself (coil maps or a phase map); its twin measures a complex image the same way, so a
        method that can afford a free phase (``sense``, ``tv``, ``l1wavelet``) solves for the
        complex image and returns its magnitude.  None (the default) for operators whose image
        is real by nature (CT, ultrasound) or already complex.
        """
        return None

    def with_image_phase(self, phase: torch.Tensor) -> "Operator | None":
        """For an operator with a :meth:`complex_twin`: the real-image operator of the ``B`` slices
        of a batch whose image phase is ``phase`` ``(B, *domain_shape)`` radians, i.e.
        ``x -> twin(x exp(i phase))`` on real ``x`` (slice ``b`` with ``phase[b]``), so that a real
        magnitude prior meets an image whose phase came from the data.  None (the default)
        where the operator has no complex twin.
        """
        return None

    def holdout_folds(self, n_folds: int, seed: int = 0) -> list[tuple["Operator", torch.Tensor]] | None:
        """Measurement subsets for cross-validation, or None when the operator cannot hold out data.

        An operator that supports it returns ``n_folds`` pairs ``(fit_op, held)``: ``held`` is
        a boolean tensor broadcastable to ``(B, *range_shape)`` marking the measurements the
        fold holds out (disjoint across folds, each measured by ``self``), and ``fit_op`` is
        this operator measuring everything else (``fit_op(x)`` is zero where ``held``).  A
        sampler then reconstructs from ``y * ~held`` with ``fit_op`` and scores how well
        ``self`` applied to that reconstruction predicts ``y`` where ``held``
        (:mod:`medrecon.samplers.autotune`).  The split is deterministic given ``seed`` and the
        same for every slice.  The default: None.
        """
        return None

    def spec(self) -> dict[str, Any]:
        """A JSON-able dict from which :func:`medrecon.operator_from_spec` rebuilds this operator.

        ``{"name": ..., "params": {...}, "plugin": DIST}``: ``plugin`` is the distribution that
        provides the class (found from its top-level module), so that a measurement read where
        that plugin is missing can say what to install; it is left out when unknown (a class
        defined in a script or test), and for an operator that :func:`medrecon.operator_from_spec`
        rebuilt from a spec without it (older files), so that such a spec round-trips unchanged.
        :meth:`from_spec` ignores it.
        """
        out: dict[str, Any] = {"name": self.name, "params": dict(self._params)}
        dist = providing_distribution(type(self)) if getattr(self, "_spec_records_plugin", True) else None
        if dist:
            out["plugin"] = dist
        if self.slice_indices is not None:
            out["slices"] = list(self.slice_indices)
        return out

    @classmethod
    def from_spec(cls, spec: dict[str, Any], arrays: dict[str, Any] | None = None) -> "Operator":
        """Build the operator described by ``spec`` (the output of :meth:`spec`); a ``slices``
        entry selects those slices of a slice-varying operator (:meth:`for_slices`).
        ``arrays``: the measurement arrays (``Measurement.arrays``) that ``{"array": NAME}``
        parameter values refer to (coil maps); ignored by an operator without ``PARAMS``."""
        params = spec.get("params", {})
        op = cls(**params, arrays=arrays) if cls.PARAMS else cls(**params)
        slices = spec.get("slices")
        if slices is None:
            return op
        if not op.slice_varying:
            raise InputError(f"the spec of {spec.get('name')!r} selects slices, but the operator it builds "
                             "does not vary per slice")
        if not isinstance(slices, list):
            raise InputError(f"the spec's 'slices' must be a list of slice indices, got {_short(slices)}")
        return op.for_slices(slices)

    @property
    def params(self) -> dict[str, Any]:
        """The constructor parameters, as stored in the spec."""
        return dict(self._params)

    def with_precision(self, double: bool) -> "Operator":
        """Cast floating buffers to float64 (``double=True``) or float32, complex ones
        to complex128 / complex64; returns ``self``."""

        def cast(t: torch.Tensor) -> torch.Tensor:
            if t.is_complex():
                return t.to(torch.complex128 if double else torch.complex64)
            if t.is_floating_point():
                return t.to(torch.float64 if double else torch.float32)
            return t

        return self._apply(cast)

    # ------------------------------------------------------------ helpers
    def domain_dtype(self, real_dtype: torch.dtype = torch.float32) -> torch.dtype:
        """dtype of images for a given real precision."""
        return _complex_of(real_dtype) if self.domain_is_complex else real_dtype

    def range_dtype(self, real_dtype: torch.dtype = torch.float32) -> torch.dtype:
        """dtype of measurements for a given real precision."""
        return _complex_of(real_dtype) if self.range_is_complex else real_dtype

    def _check(self, t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{self.name} expects a torch.Tensor {what}, got {type(t).__name__}")
        if tuple(t.shape[1:]) != tuple(shape) or t.ndim != len(shape) + 1:
            raise InputError(
                f"{self.name} expects a {what} batch shaped (B, {', '.join(map(str, shape))}), "
                f"got {tuple(t.shape)}"
            )
        if self.slice_varying and t.shape[0] != self.n_slices:
            raise InputError(
                f"{self.name} holds per-slice parameters for {self.n_slices} slice(s), so its {what} batches "
                f"must hold exactly those {self.n_slices} slice(s) in order, got {t.shape[0]}; take the operator "
                "for a subset with for_slices(indices)"
            )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={_short(v)}" for k, v in self._params.items())


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 40 else s[:37] + "..."
