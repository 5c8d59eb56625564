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

The base class adds what every operator needs and nobody should write twice:
shape checks with one-sentence errors, autograd whose backward *is* the
adjoint (so a custom kernel never needs a hand-written gradient), the normal
operator ``A^H A``, precision changes, and ``spec()`` / ``from_spec()`` so that a
measurement file can rebuild the same operator a year later.

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
  ``op.for_slices(range(S))`` is ``op`` itself).  Indices count
  this operator's slices (``0 <= i < S``, repeats allowed), so selections compose:
  ``op.for_slices(a).for_slices(b) == op.for_slices([a[k] for k in b])``;
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
import functools
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from medrecon.errors import InputError

__all__ = ["Operator", "as_json_params"]


def as_json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Return ``params`` with tuples, numpy and torch values turned into JSON types.

    Raises :class:`InputError` if a value cannot be represented in JSON.
    """

    def conv(v):
        if isinstance(v, torch.Tensor):
            return conv(v.detach().cpu().tolist())
        if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # numpy
            return conv(v.tolist())
        if isinstance(v, (list, tuple)):
            return [conv(e) for e in v]
        if isinstance(v, dict):
            return {str(k): conv(e) for k, e in v.items()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise InputError(f"operator parameter value {v!r} cannot be stored in JSON")

    out = {k: conv(v) for k, v in params.items()}
    json.dumps(out)
    return out


class _LinearFunction(torch.autograd.Function):
    """Autograd node for ``y = A x`` whose backward is ``A^H``.

    For a linear map the vector-Jacobian product is the adjoint applied to the
    incoming gradient (PyTorch's conjugate-Wirtinger convention makes this hold
    for complex tensors too).  When ``x`` is real and ``A^H g`` complex (a real
    image measured in k-space), the gradient is its real part.
    """

    @staticmethod
    def forward(ctx, x, op):
        ctx.op = op
        ctx.x_is_complex = x.is_complex()
        return op._forward(x)

    @staticmethod
    def backward(ctx, grad_y):
        g = ctx.op._adjoint(grad_y)
        if not ctx.x_is_complex and g.is_complex():
            g = g.real
        return g, None


@functools.lru_cache(maxsize=1)
def _module_distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    try:
        return dict(packages_distributions())
    except Exception:  # noqa: BLE001 - broken metadata must not break spec()
        return {}


def providing_distribution(cls: type) -> str | None:
    """The installed distribution whose files hold ``cls``'s top-level module, or None
    (unknown, or several claim it)."""
    top = (getattr(cls, "__module__", "") or "").split(".", 1)[0]
    if not top or top in ("__main__", "builtins"):
        return None
    dists = sorted(set(_module_distributions().get(top, [])))
    return dists[0] if len(dists) == 1 else None


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

    Instance attributes the subclass sets in ``__init__``: ``domain_shape`` and
    ``range_shape`` (tuples, without the batch axis).  It passes its
    constructor's keyword arguments to ``super().__init__(**params)`` so that
    ``spec()`` can rebuild it.
    """

    name: ClassVar[str] = "operator"
    per_slice: ClassVar[bool] = True
    domain_is_complex: ClassVar[bool] = False
    range_is_complex: ClassVar[bool] = False
    slice_varying: bool = False
    slice_buffers: ClassVar[tuple[str, ...]] = ()

    domain_shape: tuple[int, ...]
    range_shape: tuple[int, ...]
    n_slices: int | None = None

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self._params = as_json_params(params)

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
        """Apply the normal operator ``A^H A`` (self-adjoint, positive semi-definite)."""
        return self.adjoint(self.forward(x))

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
    def from_spec(cls, spec: dict[str, Any]) -> "Operator":
        """Build the operator described by ``spec`` (the output of :meth:`spec`); a ``slices``
        entry selects those slices of a slice-varying operator (:meth:`for_slices`)."""
        op = cls(**spec.get("params", {}))
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


class _AdjointFunction(torch.autograd.Function):
    """Autograd node for ``x = A^H y`` whose backward is ``A``."""

    @staticmethod
    def forward(ctx, y, op):
        ctx.op = op
        ctx.y_is_complex = y.is_complex()
        return op._adjoint(y)

    @staticmethod
    def backward(ctx, grad_x):
        g = ctx.op._forward(grad_x)
        if not ctx.y_is_complex and g.is_complex():
            g = g.real
        return g, None


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 40 else s[:37] + "..."
