"""ODL operators as medrecon operators and back.

`ODL <https://odlgroup.github.io/odl/>`_ describes scanner geometries (parallel, fan,
cone, helical ray transforms) and ships solvers (PDHG, Douglas-Rachford, CG); medrecon
brings diffusion priors and the engine.  Two functions join them:

* :func:`from_odl` -- a linear ODL operator as a medrecon :class:`Operator`
  (:class:`ODLOperator`): batched, with ``adjoint``, autograd and ``classical``, so any
  sampler runs on an ODL geometry;
* :func:`to_odl` -- a medrecon operator as a linear ODL operator with ``.adjoint``, so
  ODL's solvers run on a medrecon forward model.

ODL is optional (``pip install 'medrecon[odl]'``): it is imported when one of these
functions is called, and its absence is a :class:`~medrecon.errors.MissingDependencyError`
naming that extra.

Inner products and weights
--------------------------
medrecon's adjoint is the adjoint for the plain sums ``<a, b> = sum(conj(a) b)``; an ODL
space ``X`` carries a weighting ``w_X`` (the cell volume of a ``uniform_discr``, in mm^d
for a grid in mm), ``<a, b>_X = sum(w_X a conj(b))``, and ODL's ``A.adjoint`` is the
adjoint for those.  With ``W_D``, ``W_R`` the (diagonal) weightings of domain and range::

    A^H = W_D A^* W_R^{-1}        (medrecon adjoint from ODL's, in from_odl)
    A^* = W_D^{-1} A^H W_R        (ODL adjoint from medrecon's, in to_odl)

Constant and per-element (array) weightings are supported, also of power product spaces
(the range of ``odl.Gradient``).

Array layout
------------
By default the array of an ODL element is the medrecon image as is.  ODL indexes a 2D
image ``[x, y]`` with ``y`` pointing up, medrecon ``[row (down), column]``; with
``layout="image"`` :func:`from_odl` converts (``odl_array = flipud(image).T``, see
plugins/ct/README.md), so an ODL ray transform sees a DICOM slice the right way up.

Specs
-----
A wrapped ODL operator lives in this process only: it cannot be rebuilt from JSON, so
:meth:`ODLOperator.spec` raises :class:`~medrecon.errors.InputError` and no measurement
file can be written with it (``Measurement(operator_spec=op.spec())`` refuses with that
sentence; a file that could not be reconstructed later would break medrecon's promise).
Reconstruct in Python (``sampler.sample(y, op, prior)``), or write the geometry as an
operator plugin to store measurements.  :meth:`ODLOperator.describe` gives a JSON-able
description for logs.

Example (a gradient; a ray transform works the same way, see docs/plugins.md)::

    >>> import odl, torch
    >>> from medrecon.interop.odl import from_odl, to_odl
    >>> space = odl.uniform_discr([0, 0], [1, 1], (8, 8))
    >>> D = from_odl(odl.Gradient(space))
    >>> D.domain_shape, D.range_shape
    ((8, 8), (2, 8, 8))
    >>> y = D(torch.ones(3, 8, 8))          # batch of 3 images -> (3, 2, 8, 8)
    >>> float(y.abs().max())                # 0 inside, 1/h = 8 at the far edge (zero padding)
    8.0
    >>> K = to_odl(D)                       # and back: an ODL operator with .adjoint
    >>> K.adjoint.range.shape
    (8, 8)
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.interop import odl_spaces as sp
from medrecon.operators.base import Operator

__all__ = ["ODLOperator", "from_odl", "to_odl"]


class _Shared:
    """Holds an ODL object that copies of the module share (``copy.deepcopy`` keeps it)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __deepcopy__(self, memo) -> "_Shared":
        return self


# --------------------------------------------------------------------------- ODL -> medrecon
class ODLOperator(Operator):
    """A linear ODL operator ``A: X -> Y`` as a medrecon :class:`Operator` (see :func:`from_odl`).

    ``forward(x)`` applies ``A`` to each of the ``B`` images of ``x`` ``(B, *domain_shape)``
    in turn; ``adjoint(y) = W_D A^* W_R^{-1} y`` (module docstring), the adjoint for plain
    sums; autograd's backward of ``forward`` is ``adjoint`` (the base class).  Arithmetic is
    ODL's, in the dtype of its spaces (build them with ``dtype="float64"`` for a float64
    adjoint test); results come back in the input's precision and on its device.

    Attributes: ``odl_operator`` (the wrapped ODL operator), ``layout`` and the usual
    ``domain_shape``, ``range_shape``, ``domain_is_complex``, ``range_is_complex``,
    ``per_slice``.
    """

    name = "odl"

    def __init__(self, odl_op, *, classical=None, layout: str = "array", per_slice: bool | None = None,
                 adjoint_tol: float | None = 1e-4, classical_iters: int = 30, name: str | None = None) -> None:
        odl = sp.odl_module()
        super().__init__()
        if not isinstance(odl_op, odl.Operator):
            raise InputError(f"from_odl needs an odl.Operator, got {type(odl_op).__name__}")
        if not odl_op.is_linear:
            raise InputError(f"from_odl needs a linear ODL operator, and {sp.safe_repr(odl_op)} is not linear")
        sp.check_space(odl_op.domain, "domain")
        sp.check_space(odl_op.range, "range")
        if layout not in ("array", "image"):
            raise InputError(f"layout must be 'array' or 'image', got {layout!r}")
        odl_shape = tuple(int(s) for s in odl_op.domain.shape)
        if layout == "image" and len(odl_shape) != 2:
            raise InputError(f"layout='image' needs a 2D ODL domain ([x, y]), got shape {odl_shape}")
        if classical is not None and not isinstance(classical, odl.Operator):
            raise InputError("classical must be an ODL operator from the range to the domain (e.g. "
                             f"odl.applications.tomo.fbp_op(ray)) or None, got {type(classical).__name__}")
        if classical is not None and (classical.domain != odl_op.range or classical.range != odl_op.domain):
            raise InputError("the classical ODL operator must map the wrapped operator's range to its domain")
        if int(classical_iters) < 1:
            raise InputError(f"classical_iters must be a positive integer, got {classical_iters!r}")
        self._odl = _Shared(odl_op)
        self._classical = _Shared(classical)
        self.layout = layout
        self.classical_iters = int(classical_iters)
        if name is not None:
            self.name = str(name)
        self.domain_shape = odl_shape[::-1] if layout == "image" else odl_shape
        self.range_shape = tuple(int(s) for s in odl_op.range.shape)
        self.domain_is_complex = sp.is_complex(odl_op.domain)
        self.range_is_complex = sp.is_complex(odl_op.range)
        self.per_slice = len(self.domain_shape) <= 2 if per_slice is None else bool(per_slice)
        self._w_dom = sp.weight(odl_op.domain)
        self._w_ran = sp.weight(odl_op.range)
        self._wd_image = self._to_image_layout_weight(self._w_dom)
        if adjoint_tol is not None:
            err = self.adjoint_error()
            if not err <= float(adjoint_tol):
                raise InputError(
                    f"the adjoint of the ODL operator {type(odl_op).__name__} is not exact (dot-product error "
                    f"{err:.1e} > adjoint_tol {float(adjoint_tol):.0e}), and medrecon's samplers need the exact "
                    "adjoint; use an exact ODL backend (impl='astra_cpu' for ray transforms) or pass "
                    "adjoint_tol=None to accept it")

    # ------------------------------------------------------------- the ODL objects
    @property
    def odl_operator(self):
        """The wrapped ODL operator."""
        return self._odl.obj

    def _to_image_layout_weight(self, w):
        if isinstance(w, float) or self.layout == "array":
            return w
        return np.ascontiguousarray(np.flipud(np.broadcast_to(w, self.odl_operator.domain.shape).T))

    def _image_to_odl(self, t: torch.Tensor) -> torch.Tensor:
        return torch.flip(t, (0,)).T if self.layout == "image" else t

    def _odl_to_image(self, t: torch.Tensor) -> torch.Tensor:
        return torch.flip(t.T, (0,)) if self.layout == "image" else t

    def _run_odl(self, op, space_in, x: torch.Tensor, to_image: bool, from_image: bool, complex_out: bool):
        real = torch.float64 if sp.real_of(x.dtype) == torch.float64 else torch.float32
        out_dtype = (torch.complex128 if real == torch.float64 else torch.complex64) if complex_out else real
        outs = []
        for b in range(x.shape[0]):
            xb = self._image_to_odl(x[b]) if from_image else x[b]
            r = sp.from_odl_element(op(sp.to_odl_element(space_in, xb)))
            outs.append(self._odl_to_image(r) if to_image else r)
        out = torch.stack(outs).to(device=x.device)
        if out.is_complex() and not complex_out:
            out = out.real
        return out.to(out_dtype)

    # ------------------------------------------------------------- the contract
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_complex() and not self.domain_is_complex:
            raise InputError(f"{self.name} measures real images, got a complex batch")
        A = self.odl_operator
        return self._run_odl(A, A.domain, x, to_image=False, from_image=True, complex_out=self.range_is_complex)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        A = self.odl_operator
        if y.is_complex() and not self.range_is_complex:
            raise InputError(f"{self.name} has real measurements, got a complex batch")
        y = sp.scale(y, self._w_ran, inverse=True)
        x = self._run_odl(A.adjoint, A.range, y, to_image=True, from_image=False, complex_out=self.domain_is_complex)
        return sp.scale(x, self._wd_image, inverse=False)

    def classical(self, y: torch.Tensor) -> torch.Tensor:
        """The given ``classical`` ODL operator (FBP from ``odl.applications.tomo.fbp_op``)
        applied per batch entry; without one, ``classical_iters`` conjugate-gradient steps on
        the normal equations ``A^H A x = A^H y`` from ``x = 0`` (least squares, minimum norm)."""
        self._check(y, self.range_shape, "measurement")
        cl = self._classical.obj
        if cl is not None:
            return self._run_odl(cl, cl.domain, y, to_image=True, from_image=False, complex_out=self.domain_is_complex)
        from medrecon.operators.linalg import cg, normal

        with torch.no_grad():
            b = self.adjoint(y)
            return cg(lambda v: normal(self, v), b, torch.zeros_like(b), self.classical_iters)

    def adjoint_error(self, seed: int = 0) -> float:
        """The relative dot-product error ``|<A x, y> - <x, A^H y>| / (||A x|| ||y||)`` of this
        wrapper for random ``x``, ``y`` (one image), in the ODL spaces' precision."""
        gen = torch.Generator().manual_seed(int(seed))

        def rnd(shape, cplx):
            t = torch.randn(shape, generator=gen, dtype=torch.float64)
            return torch.complex(t, torch.randn(shape, generator=gen, dtype=torch.float64)) if cplx else t

        x = rnd((1, *self.domain_shape), self.domain_is_complex)
        y = rnd((1, *self.range_shape), self.range_is_complex)
        with torch.no_grad():
            ax, aty = self._forward(x), self._adjoint(y)
        lhs = torch.sum(ax.conj() * y)
        rhs = torch.sum(x.conj() * aty)
        if not self.domain_is_complex:
            lhs = lhs.real
        den = float(torch.linalg.vector_norm(ax) * torch.linalg.vector_norm(y))
        return float(abs(complex(lhs - rhs))) / den if den > 0 else 0.0

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for logs and provenance (not a spec: it cannot rebuild the operator)."""
        return {"name": self.name, "odl": type(self.odl_operator).__name__,
                "odl_repr": sp.safe_repr(self.odl_operator, 500), "layout": self.layout,
                "domain_shape": list(self.domain_shape), "range_shape": list(self.range_shape),
                "rebuildable": False}

    def spec(self) -> dict[str, Any]:
        """Refuses: a wrapped ODL operator cannot be rebuilt from JSON (module docstring)."""
        raise InputError(
            f"the ODL operator wrapped by medrecon.interop.odl.from_odl ({type(self.odl_operator).__name__}) "
            "cannot be rebuilt from a spec, so it cannot be stored in a measurement file; reconstruct in "
            "Python with sampler.sample(y, op, prior), or write the geometry as an operator plugin")

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "ODLOperator":
        """Refuses, as :meth:`spec` does."""
        raise InputError("an ODL operator wrapped by medrecon.interop.odl.from_odl cannot be rebuilt from a spec")

    def extra_repr(self) -> str:
        return f"odl={type(self.odl_operator).__name__}, layout={self.layout!r}"


def from_odl(odl_op, *, classical=None, layout: str = "array", per_slice: bool | None = None,
             adjoint_tol: float | None = 1e-4, classical_iters: int = 30, name: str | None = None) -> ODLOperator:
    """Wrap the linear ODL operator ``odl_op`` as a medrecon operator.

    Parameters
    ----------
    odl_op : odl.Operator
        Linear, between spaces of arrays (``uniform_discr``, ``rn``/``cn``, ``tensor_space``,
        a power of one such as ``odl.Gradient``'s range), real or complex, numpy or pytorch
        backed.  Its images enter as ``(B, *domain.shape)``, measurements leave as
        ``(B, *range.shape)``.
    classical : odl.Operator, optional
        The classical reconstruction, from ``odl_op.range`` to ``odl_op.domain``
        (``odl.applications.tomo.fbp_op(ray)``).  Default: ``classical_iters`` conjugate
        gradient steps on ``A^H A x = A^H y``.
    layout : ``"array"`` (default) or ``"image"``
        ``"image"``: medrecon images are ``[row (down), column]`` and enter a 2D ODL domain as
        ``flipud(image).T`` (ODL's ``[x, y]``), so ``domain_shape`` is the ODL shape reversed.
    per_slice : bool, optional
        Default: True for a 2D (or 1D) domain, False otherwise.
    adjoint_tol : float or None
        The wrapper's dot-product error (:meth:`ODLOperator.adjoint_error`, one forward and
        one adjoint at construction) must not exceed it, else :class:`InputError`; None skips
        the test (accept an approximate adjoint such as ODL's ``skimage`` ray transform's).
    name : str, optional
        The name in messages (default ``"odl"``).

    >>> import odl, torch
    >>> from medrecon.interop.odl import from_odl
    >>> A = from_odl(odl.ScalingOperator(odl.rn((4, 4)), 3.0))
    >>> A(torch.ones(2, 4, 4))[0, 0, 0].item(), A.adjoint(torch.ones(2, 4, 4))[1, 3, 3].item()
    (3.0, 3.0)
    """
    return ODLOperator(odl_op, classical=classical, layout=layout, per_slice=per_slice, adjoint_tol=adjoint_tol,
                       classical_iters=classical_iters, name=name)


# --------------------------------------------------------------------------- medrecon -> ODL
def _working(op: Operator, fallback: torch.dtype) -> tuple[torch.dtype, torch.device]:
    """The real precision and device of ``op``'s tensors (``fallback``, CPU without any)."""
    for t in list(op.buffers()) + list(op.parameters()):
        if t.is_floating_point() or t.is_complex():
            return sp.real_of(t.dtype), t.device
    for t in list(op.buffers()) + list(op.parameters()):
        return fallback, t.device
    return fallback, torch.device("cpu")


@functools.lru_cache(maxsize=1)
def _odl_classes():
    odl = sp.odl_module()

    class MedreconODL(odl.Operator):
        """A medrecon operator as a linear ODL operator (made by :func:`to_odl`)."""

        def __init__(self, op, domain, range, batched: bool, adjoint_of=None):
            super().__init__(domain, range, linear=True)
            self.medrecon_operator = op
            self._batched = batched
            self._is_adjoint = adjoint_of is not None
            self._adj = adjoint_of
            self._wd, self._wr = sp.weight(domain), sp.weight(range)

        def _call(self, x):
            op = self.medrecon_operator
            real = torch.float64 if sp.dtype_name(self.domain) in ("float64", "complex128") else torch.float32
            work, dev = _working(op, real)
            t = sp.from_odl_element(x).to(dev)
            if not self._batched:
                t = t[None]
            src_complex = op.range_is_complex if self._is_adjoint else op.domain_is_complex
            t = t.to((torch.complex128 if work == torch.float64 else torch.complex64) if src_complex else work)
            with torch.no_grad():
                if self._is_adjoint:  # A^* = W_D^{-1} A^H W_R, here D = this range, R = this domain
                    out = sp.scale(op.adjoint(sp.scale(t, self._wd, inverse=False)), self._wr, inverse=True)
                else:
                    out = op(t)
            if not self._batched:
                out = out[0]
            if out.is_complex() and not sp.is_complex(self.range):
                out = out.real
            return sp.to_odl_element(self.range, out)

        @property
        def adjoint(self):
            if self._adj is None:
                self._adj = MedreconODL(self.medrecon_operator, self.range, self.domain, self._batched,
                                        adjoint_of=self)
            return self._adj

        def __repr__(self):
            kind = "adjoint of " if self._is_adjoint else ""
            return f"to_odl({kind}{self.medrecon_operator.name})"

    return MedreconODL


def _default_space(shape: tuple[int, ...], cplx: bool, dtype: str, impl: str):
    odl = sp.odl_module()
    dt = {"float64": "complex128", "float32": "complex64"}[dtype] if cplx else dtype
    return odl.uniform_discr([0.0] * len(shape), [float(s) for s in shape], shape, dtype=dt, impl=impl)


def to_odl(op: Operator, *, domain=None, range=None, batch: int | None = None, dtype: str = "float64",
           impl: str = "numpy"):
    """The medrecon operator ``op`` as a linear ODL operator, with ``.adjoint``.

    Parameters
    ----------
    op : Operator
        Any medrecon operator; it computes in its own precision and on its own device (call
        ``op.with_precision(True)`` first for float64 arithmetic).
    domain, range : ODL spaces, optional
        Of shape ``domain_shape`` / ``range_shape`` (with ``batch`` first when given).
        Default: ``odl.uniform_discr`` with unit cells (``[0, n]`` per axis, weighting 1, so
        ``.adjoint`` is ``op.adjoint`` itself) of ``dtype`` (complex when the operator's side
        is).  A space with another weighting gets the weighted adjoint
        ``A^* = W_D^{-1} A^H W_R`` (module docstring).
    batch : int, optional
        None: one image per ODL element (shape ``domain_shape``); ``k``: ``k`` slices
        (shape ``(k, *domain_shape)``, needed for a slice-varying operator: ``k = n_slices``).
    dtype : ``"float64"`` or ``"float32"``
        Real precision of the default spaces.
    impl : ``"numpy"`` or ``"pytorch"``
        Array backend of the default spaces.

    >>> import medrecon, odl
    >>> from medrecon.interop.odl import to_odl
    >>> A = to_odl(medrecon.get_operator("template.scale", shape=[4, 4], factor=2.0))
    >>> x = A.domain.one()
    >>> float(A(x).asarray()[0, 0]), float(A.adjoint(A(x)).asarray()[0, 0])
    (2.0, 4.0)
    """
    odl = sp.odl_module()
    if not isinstance(op, Operator):
        raise InputError(f"to_odl needs a medrecon Operator, got {type(op).__name__}")
    if dtype not in ("float64", "float32"):
        raise InputError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    if batch is not None:
        if isinstance(batch, bool) or not float(batch).is_integer() or int(batch) < 1:
            raise InputError(f"batch must be a positive integer or None, got {batch!r}")
        batch = int(batch)
    n = 1 if batch is None else batch
    if getattr(op, "slice_varying", False) and op.n_slices != n:
        raise InputError(f"{op.name} holds parameters for {op.n_slices} slice(s): call to_odl(op, batch="
                         f"{op.n_slices}) or to_odl(op.for_slices([i]))")
    lead = () if batch is None else (batch,)
    dshape, rshape = lead + tuple(op.domain_shape), lead + tuple(op.range_shape)
    spaces = []
    for given, shape, cplx, what in ((domain, dshape, op.domain_is_complex, "domain"),
                                     (range, rshape, op.range_is_complex, "range")):
        if given is None:
            spaces.append(_default_space(shape, cplx, dtype, impl))
            continue
        if not isinstance(given, odl.LinearSpace) or tuple(getattr(given, "shape", ())) != shape:
            raise InputError(f"the {what} given to to_odl must be an ODL space of shape {shape}, got {sp.safe_repr(given)}")
        if sp.is_complex(given) != cplx:
            kind = "complex" if cplx else "real"
            raise InputError(f"the {what} given to to_odl must be {kind}, as {op.name}'s {what} is")
        sp.weight(given)
        spaces.append(given)
    return _odl_classes()(op, spaces[0], spaces[1], batch is not None)
