"""Declared operator parameters: one list from which the constructor, its checks and ``spec()`` come.

An operator class lists its parameters once, in order, as ``PARAMS`` (a tuple of
:class:`Param`), and builds itself from the checked values in ``_build(p)``::

    >>> import torch
    >>> from medrecon.operators import Operator, Param
    >>> class Gain(Operator):
    ...     '''``y = g x`` on images of ``shape``.'''
    ...     name = "doc.gain"
    ...     PARAMS = (Param("shape", check=lambda s: [int(v) for v in s], grid="shape", doc="[ny, nx] pixels"),
    ...               Param("gain", 1.0, check=float, doc="g, dimensionless"))
    ...     def _build(self, p):
    ...         self.domain_shape = self.range_shape = tuple(p["shape"])
    ...     def _forward(self, x):
    ...         return self.params["gain"] * x
    ...     _adjoint = _forward
    >>> Gain([2, 3], gain=4).spec()["params"]
    {'shape': [2, 3], 'gain': 4.0}
    >>> Gain.for_grid((8, 8), (0.5, 0.5)).domain_shape
    (8, 8)

From that one list the base class (:class:`medrecon.operators.Operator`)

* binds the constructor's arguments (positional in ``PARAMS`` order, or by keyword; an
  unknown or missing one is a ``TypeError``, which :func:`medrecon.get_operator` reports as
  an :class:`~medrecon.errors.InputError`), fills defaults and runs each parameter's
  ``check`` (``value -> stored value``, raising :class:`~medrecon.errors.InputError`);
* calls ``_build(p)`` with the checked values (a dict in ``PARAMS`` order): it validates
  what involves several parameters, sets ``domain_shape`` / ``range_shape`` and buffers, and
  may replace an entry of ``p`` with its canonical stored form;
* stores ``p`` as the spec's ``params`` (an entry with ``omit_default`` is left out while
  it equals its default, so older specs round-trip unchanged);
* gives the class an ``inspect.signature`` (for ``help()``), and :meth:`for_grid` fills the
  parameters marked ``grid``.

Grid roles (``Param.grid``), filled by ``for_grid(shape, spacing)`` when not given:

``"shape"``
    the image grid, ``[ny, nx]`` (or ``[Z, Y, X]`` for a 3D operator), pixels;
``"pixel_size"``
    one number, mm: the in-plane pixel side, filled only for square pixels;
``"spacing"``
    the list of pixel (voxel) sizes in mm, one per grid axis (``[dz, dy, dx]``).

Operators written before this declaration (``__init__`` passing its keyword arguments to
``super().__init__(**params)``) keep working; :func:`grid_params` fills their grid
parameters from the constructor's argument names (``shape`` / ``image_shape`` /
``img_shape``, a square ``n`` / ``size`` / ``image_size``, ``pixel_size``, ``voxel_size``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from medrecon.errors import InputError


def as_json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Return ``params`` with tuples, numpy and torch values turned into JSON types.

    Raises :class:`InputError` if a value cannot be represented in JSON.

    >>> import numpy as np
    >>> as_json_params({"shape": (2, np.int64(3))})
    {'shape': [2, 3]}
    """

    def conv(v):
        if hasattr(v, "detach"):  # a torch tensor
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

__all__ = ["Param", "REQUIRED", "as_given", "as_json_params", "bind", "grid_params", "signature_of"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a parameter that has none (the caller must give it).
REQUIRED: Any = _Required()

_GRID_ROLES = ("shape", "pixel_size", "spacing")


@dataclass(frozen=True)
class Param:
    """One operator parameter: its name, default, check, documentation and grid role.

    ``check(value) -> stored value`` converts a given (or default) value to the form the
    spec stores (JSON types: numbers, strings, lists, dicts) and raises
    :class:`~medrecon.errors.InputError` with one sentence for a bad one; None stores the
    value as given.  ``doc`` says what it is, with units.  ``grid`` is the role
    :meth:`~medrecon.operators.Operator.for_grid` fills (module docstring).  ``omit_default``
    leaves the parameter out of the spec while it equals its default.
    """

    name: str
    default: Any = REQUIRED
    check: Callable[[Any], Any] | None = None
    doc: str = ""
    grid: str | None = None
    omit_default: bool = False

    def __post_init__(self) -> None:
        if self.grid is not None and self.grid not in _GRID_ROLES:
            raise ValueError(f"Param {self.name!r}: grid must be one of {_GRID_ROLES}, got {self.grid!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def is_default(self, value: Any) -> bool:
        """Whether ``value`` is this parameter's default (arrays and tensors never are)."""
        return value is self.default or (not hasattr(value, "shape") and type(value) is type(self.default)
                                          and value == self.default)


def as_given(validate: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A ``Param.check`` that runs ``validate(value)`` (which raises
    :class:`~medrecon.errors.InputError` for a bad value) and stores the value as given, for
    specs that record what the user wrote (``shape=64`` stays ``64``).

    >>> as_given(int)("7")
    '7'
    """

    def check(value: Any) -> Any:
        validate(value)
        return value

    return check


def bind(cls: type, decl: Sequence[Param], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The checked values of ``decl`` for a call ``cls(*args, **kwargs)``, in declaration order.

    Too many positional arguments, an unknown keyword, a parameter given twice or a missing
    required one raise ``TypeError`` (as a Python function would); a bad value raises the
    parameter's :class:`~medrecon.errors.InputError`.
    """
    label = getattr(cls, "name", None) or cls.__name__
    if len(args) > len(decl):
        raise TypeError(f"{label} takes at most {len(decl)} positional parameter(s) ({len(args)} given)")
    names = [p.name for p in decl]
    given = dict(zip(names, args, strict=False))
    for k, v in kwargs.items():
        if k not in names:
            raise TypeError(f"{label} got an unexpected parameter {k!r} (it takes: {', '.join(names)})")
        if k in given:
            raise TypeError(f"{label} got parameter {k!r} twice")
        given[k] = v
    out: dict[str, Any] = {}
    for p in decl:
        if p.name in given:
            value = given[p.name]
        elif p.required:
            raise TypeError(f"{label} is missing the required parameter {p.name!r}")
        else:
            value = p.default
        out[p.name] = p.check(value) if p.check is not None else value
    return out


def signature_of(decl: Sequence[Param]) -> inspect.Signature:
    """``inspect.Signature`` of a constructor taking ``decl`` and the keyword-only ``arrays``."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    ps = [inspect.Parameter(p.name, kind, default=inspect.Parameter.empty if p.required else p.default)
          for p in decl]
    ps.append(inspect.Parameter("arrays", inspect.Parameter.KEYWORD_ONLY, default=None))
    return inspect.Signature(ps)


#: pixels whose sides differ by at most this fraction count as square: an in-plane resampling that
#: keeps the field of view rounds each pixel count (up to 0.5/n per axis: 1.011 x 0.985 mm at 26 px)
SQUARE_TOLERANCE = 0.05


def _square(spacing: Sequence[float]) -> bool:
    dy, dx = (float(v) for v in spacing[-2:])
    return abs(dy - dx) <= SQUARE_TOLERANCE * max(dy, dx)


def _pixel(spacing: Sequence[float]) -> float:
    """The side (mm) of square pixels: the geometric mean of the two (equal up to the tolerance)."""
    dy, dx = (float(v) for v in spacing[-2:])
    return dx if dy == dx else float((dy * dx) ** 0.5)


def _not_square(cls: type, spacing: Sequence[float]) -> float:
    """Refuse a grid of non-square pixels for an operator with one ``pixel_size`` (never 1 mm silently)."""
    dy, dx = (float(v) for v in list(spacing)[-2:])
    raise InputError(f"operator {getattr(cls, 'name', cls.__name__)!r} needs square pixels but the grid's are "
                     f"{dy:.4g} x {dx:.4g} mm (rows x columns); resample in-plane first (simulate --pixel-size MM, "
                     "or medrecon.simulation.resample_inplane)")


def grid_params(cls: type, shape: Sequence[int], spacing: Sequence[float] | None,
                params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with ``cls``'s grid parameters filled in for an image grid ``shape`` (pixels)
    with pixel sizes ``spacing`` (mm, one per axis), where the caller did not give them.

    Declared operators (``PARAMS``): the parameters with a ``grid`` role (module docstring).
    Others: by constructor argument name (module docstring); a square-size parameter
    (``n``) on a non-square grid is an :class:`~medrecon.errors.InputError`.
    """
    shape = [int(v) for v in shape]
    out = dict(params)
    decl = getattr(cls, "PARAMS", ())
    if decl:
        for p in decl:
            if p.name in out or p.grid is None:
                continue
            if p.grid == "shape":
                out[p.name] = list(shape)
            elif spacing is not None and p.grid == "spacing":
                out[p.name] = [float(v) for v in spacing]
            elif spacing is not None and p.grid == "pixel_size":
                out[p.name] = _pixel(spacing) if _square(spacing) else _not_square(cls, spacing)
        return out
    try:
        names = set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return out
    shape_name = next((n for n in ("shape", "image_shape", "img_shape") if n in names), None)
    size_name = next((n for n in ("n", "size", "image_size") if n in names), None)
    if shape_name is not None:
        out.setdefault(shape_name, list(shape))
    elif size_name is not None and size_name not in out and len(shape) == 2:
        if len(set(shape)) != 1:
            raise InputError(f"operator {getattr(cls, 'name', cls.__name__)!r} takes a square image size "
                             f"{size_name!r} but the grid is {'x'.join(map(str, shape))}")
        out[size_name] = shape[0]
    if spacing is not None and len(shape) == 2 and "pixel_size" in names and "pixel_size" not in out:
        out["pixel_size"] = _pixel(spacing) if _square(spacing) else _not_square(cls, spacing)
    if spacing is not None and len(shape) == 3 and "voxel_size" in names and "voxel_size" not in out:
        out["voxel_size"] = [float(v) for v in spacing]
    return out
