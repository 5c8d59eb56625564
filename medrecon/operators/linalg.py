"""Linear algebra on batches of slices: the normal operator, conjugate gradients, norms.

Every function here treats axis 0 as the slice axis and keeps the slices independent:
inner products and norms are per slice (shape ``(B,)``), never batch-global, so a slice's
result does not depend on the batch it was computed in.  The inner product is the
Hermitian one, ``<a, b> = sum(conj(a) * b)``, so the same code serves real and complex
images.

A real image measured by a complex-domain operator (a real prior on MRI k-space) is cast
to complex on the way in (:func:`apply_forward`) and keeps only the real part on the way
back (:func:`apply_adjoint_real`, :func:`normal`): that is the adjoint of ``A`` restricted
to real images, ``Re(A^H r)``.

* :func:`normal` -- ``A^H A x``;
* :func:`cg` -- conjugate gradients for ``M x = b``, one system per slice;
* :func:`estimate_norm` -- the operator norm ``||A||`` by power iteration (cached).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch

from medrecon.streams import randn_per_slice

__all__ = [
    "apply_adjoint_real",
    "apply_forward",
    "bcast",
    "cg",
    "estimate_norm",
    "norm_per_slice",
    "normal",
    "set_norm",
    "vdot_per_slice",
]


# --------------------------------------------------------------------------- per-slice reductions
def vdot_per_slice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hermitian inner products ``<a_b, b_b> = sum(conj(a_b) * b_b)``, one per slice: shape (B,)."""
    prod = a.conj() * b if a.is_complex() else a * b
    return prod.reshape(prod.shape[0], -1).sum(dim=1)


def norm_per_slice(a: torch.Tensor) -> torch.Tensor:
    """Euclidean norm ``||a_b||_2`` of each slice (real output, shape (B,))."""
    return torch.linalg.vector_norm(a.reshape(a.shape[0], -1), dim=1)


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-slice vector ``v`` (shape (B,)) viewed as ``(B, 1, ..., 1)`` to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.ndim - 1)))


# --------------------------------------------------------------------------- applying A
def normal(operator, x: torch.Tensor) -> torch.Tensor:
    """The normal operator ``A^H A x``, keeping ``x``'s real/complex kind.

    A real ``x`` and a complex-domain operator: ``Re(A^H A x)`` (``x`` cast to complex first).
    """
    if callable(getattr(operator, "normal", None)):
        return operator.normal(x)  # an Operator's own (possibly cheaper) form: the same numbers
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
    """``A^H r``; ``Re(A^H r)`` when ``real`` (a real image measured by a complex operator)."""
    out = operator.adjoint(r)
    if real and out.is_complex():
        out = out.real
    return out


# --------------------------------------------------------------------------- conjugate gradients
def cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor,
       iters: int, tol: float = 0.0) -> torch.Tensor:
    """Conjugate gradients for ``M x = b`` with ``M`` Hermitian positive (semi-)definite.

    With residual ``r = b - M x`` and search direction ``p`` (``p = r`` at the start), one
    iteration is, per slice::

        alpha = <r, r> / <p, M p>,   x += alpha p,   r -= alpha M p,
        beta  = <r_new, r_new> / <r, r>,   p = r_new + beta p

    Each slice of the batch is an independent system: step lengths use per-slice Hermitian
    inner products (:func:`vdot_per_slice`), so each slice solves its own system whatever the
    batch (equal up to rounding: docs/engine.md, "Seeding and determinism") and the method is
    correct for complex images.  Starts at ``x0`` (not modified) and runs ``iters``
    iterations; a slice whose residual norm falls below ``tol * ||b||`` stops moving (``tol``
    is at least ``100 * eps`` of the working precision).
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
        x = x + bcast(alpha, x).to(x.dtype) * p
        r = r - bcast(alpha, r).to(r.dtype) * ap
        rs_new = vdot_per_slice(r, r).real
        beta = torch.where(active & (rs > 0), rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)),
                           torch.zeros_like(rs))
        p = r + bcast(beta, p).to(p.dtype) * p
        rs = torch.where(active, rs_new, rs)
    return x


# --------------------------------------------------------------------------- operator norm
#: operator -> {(iters, complex_domain, device): ||A||}; filled by :func:`estimate_norm`
_NORM_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def estimate_norm(operator, iters: int = 50, *, device=None, real_domain: bool | None = None) -> float:
    """Operator norm ``||A||`` (largest singular value) by power iteration on ``A^H A``::

        x <- x / ||x||,   lam = <x, A^H A x>,   x <- A^H A x,   ||A|| ~ sqrt(lam)

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
    key = _norm_key(operator, iters, device, real_domain)
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
            z = normal(operator, x)
            lam = float(vdot_per_slice(x, z).real.sum())
            x = z
    val = math.sqrt(max(lam, 0.0))
    cache[key] = val
    return val


def set_norm(operator, value: float, iters: int = 50, *, device, real_domain: bool | None = None) -> None:
    """Record ``value`` as what :func:`estimate_norm` returns for this operator object with these
    arguments (an operator derived from another with the same norm, e.g. one carrying an image
    phase, takes its parent's norm instead of a fresh power iteration).  The entry is kept on
    ``operator`` itself (not on its ``slice_root``)."""
    _NORM_CACHE.setdefault(operator, {})[_norm_key(operator, iters, device, real_domain)] = value


def _norm_key(operator, iters: int, device, real_domain: bool | None) -> tuple[int, bool, str]:
    """The cache key of :func:`estimate_norm`: (iterations, complex domain, device)."""
    return (int(iters), bool(operator.domain_is_complex) and not real_domain, str(device))


def _device_of(operator) -> torch.device:
    """The device of the operator's first buffer or parameter (the CPU when it has none)."""
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
                x = x / bcast(torch.where(n > 0, n, torch.ones_like(n)), x)
                z = normal(op, x)
                lam = vdot_per_slice(x, z).real.to(torch.float64)
                x = z
            best = max(best, float(lam.max()))
    return math.sqrt(max(best, 0.0))


def _weakrefable(obj) -> bool:
    """Whether ``obj`` can key the weak norm cache."""
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


def _is_double(operator) -> bool:
    """Whether the operator's first floating buffer or parameter is double precision."""
    for t in list(operator.buffers()) + list(operator.parameters()):
        if t.dtype in (torch.float64, torch.complex128):
            return True
        if t.is_floating_point() or t.is_complex():
            return False
    return False
