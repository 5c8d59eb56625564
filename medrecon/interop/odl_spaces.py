"""ODL spaces and elements as medrecon sees them: the inner-product weights of a space, batches of
torch tensors in and out of ODL elements, and the lazy ``odl`` import (used by :mod:`medrecon.interop.odl`).

ODL's inner product on a space ``X`` is ``<a, b>_X = sum(w_X a conj(b))`` with a diagonal
weighting ``w_X`` (a number, e.g. the cell volume of a ``uniform_discr`` in mm^d, or an array);
:func:`weight` returns it, :func:`scale` applies it to a batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medrecon.errors import InputError, require

__all__ = ["odl_module", "safe_repr", "check_space", "weight", "is_complex", "scale", "real_of", "dtype_name",
           "to_odl_element", "from_odl_element"]


def odl_module():
    """The ``odl`` module, or :class:`MissingDependencyError` with the install line."""
    return require("odl", "odl")


def safe_repr(obj: Any, limit: int = 200) -> str:
    """``repr(obj)`` cut to ``limit`` characters (ODL's repr of some spaces raises)."""
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001 - a broken repr must not hide the real message
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_space(space, what: str) -> None:
    odl = odl_module()
    if not isinstance(space, odl.LinearSpace) or not hasattr(space, "shape"):
        raise InputError(f"the ODL operator's {what} must be a linear space of arrays (uniform_discr, rn, "
                         f"tensor_space, or a power of one), got {type(space).__name__}")
    if isinstance(space, odl.ProductSpace) and not space.is_power_space:
        raise InputError(f"the ODL operator's {what} is a product of different spaces ({safe_repr(space)}); only powers "
                         "of one space (like the range of odl.Gradient) have one array shape")


def weight(space) -> float | np.ndarray:
    """The diagonal weighting ``w`` of ``space``'s inner product ``sum(w a conj(b))``: a
    number, or an array broadcastable to ``space.shape``."""
    odl = odl_module()
    w = getattr(space, "weighting", None)
    if w is None or getattr(w, "exponent", 2.0) != 2.0 or not hasattr(w, "weight"):
        raise InputError(f"the ODL space {safe_repr(space)} has no weighted inner product medrecon can use "
                         f"(weighting {safe_repr(w)}); use a space with constant or array weighting")
    outer = w.weight
    if hasattr(outer, "detach"):
        outer = outer.detach().cpu().numpy()
    if isinstance(space, odl.ProductSpace):
        inner = weight(space[0])
        if np.ndim(outer) == 0:
            return float(outer) * inner
        outer = np.asarray(outer, dtype=np.float64).reshape((-1,) + (1,) * len(space[0].shape))
        return outer * inner
    if np.ndim(outer) == 0:
        return float(outer)
    return np.asarray(outer, dtype=np.float64)


def is_complex(space) -> bool:
    return bool(space[0].is_complex if isinstance(space, odl_module().ProductSpace) else space.is_complex)


def scale(t: torch.Tensor, w: float | np.ndarray, inverse: bool) -> torch.Tensor:
    """``w t`` (``t / w`` when ``inverse``) for a batch ``t`` ``(B, *shape)``."""
    if isinstance(w, float):
        if w == 1.0:
            return t
        return t / w if inverse else t * w
    wt = torch.as_tensor(w, device=t.device, dtype=t.real.dtype)
    return t / wt if inverse else t * wt


def real_of(dtype: torch.dtype) -> torch.dtype:
    return {torch.complex128: torch.float64, torch.complex64: torch.float32}.get(dtype, dtype)


def dtype_name(space) -> str:
    space = space[0] if isinstance(space, odl_module().ProductSpace) else space
    return str(getattr(space, "dtype_identifier", None) or space.dtype).replace("torch.", "")


def to_odl_element(space, t: torch.Tensor):
    """The ODL element of ``space`` holding the array ``t`` (one batch entry)."""
    impl = getattr(space[0] if isinstance(space, odl_module().ProductSpace) else space, "impl", "numpy")
    name = dtype_name(space)
    if impl == "pytorch":
        dev = getattr(space[0] if isinstance(space, odl_module().ProductSpace) else space, "device", "cpu")
        return space.element(t.detach().resolve_conj().resolve_neg().to(device=dev, dtype=getattr(torch, name)))
    arr = t.detach().cpu().resolve_conj().resolve_neg().numpy()
    if np.iscomplexobj(arr) and not np.issubdtype(np.dtype(name), np.complexfloating):
        raise InputError(f"a complex array cannot enter the real ODL space {safe_repr(space)}")
    return space.element(np.ascontiguousarray(arr.astype(name, copy=False)))


def from_odl_element(el) -> torch.Tensor:
    arr = el.asarray()
    return arr if isinstance(arr, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(arr))
