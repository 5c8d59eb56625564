"""The intensity window ``[lo, hi]`` (physical units) on which images are scored and shown.

Metrics (:mod:`medrecon.metrics`) clip both images to the window and use its width
``L = hi - lo`` as the data range; figures (:mod:`medrecon.figures`) map it to grey.

Default (:func:`default_window`): CT in HU (units ``HU``, or modality ``CT`` with no units
and air at about -1000) ``[-1000, 1000]`` HU, air to dense bone; anything else (MR,
arbitrary units, CT in attenuation per mm) the reference's own ``[min, max]``.

>>> default_window(np.array([0.0, 5.0]))
(0.0, 5.0)
>>> default_window(np.zeros(3), {"units": "HU"})
(-1000.0, 1000.0)
"""

from __future__ import annotations

import math

import numpy as np

from medrecon.errors import InputError

__all__ = ["CT_WINDOW", "parse_window", "default_window"]

#: Default CT evaluation window in HU (air .. dense bone).
CT_WINDOW = (-1000.0, 1000.0)


def parse_window(window, ref: np.ndarray) -> tuple[float, float]:
    """``(lo, hi)`` as floats from ``window`` (two numbers, finite, ``lo < hi``); ``None`` gives the
    reference's ``[min, max]`` (``[v, v + 1]`` for a constant reference).  Raises :class:`InputError`."""
    if window is None:
        lo, hi = float(ref.min()), float(ref.max())
        if hi <= lo:
            hi = lo + 1.0
        return lo, hi
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise InputError(f"a window is two numbers lo, hi; got {window!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InputError(f"a window needs finite lo < hi; got {lo}, {hi}")
    return lo, hi


def default_window(reference, meta: dict | None = None) -> tuple[float, float]:
    """The window metrics use when none is given: ``CT_WINDOW`` for CT / HU data, else the
    reference's ``[min, max]``.  ``reference`` is a Volume (its meta is read unless ``meta``
    is given) or an array."""
    if meta is None:
        meta = getattr(reference, "meta", None) or {}
    modality = str(meta.get("modality") or "").upper()
    units = str(meta.get("units") or "").upper()
    data = np.asarray(getattr(reference, "data", reference), dtype=np.float64)
    if units == "HU":
        return CT_WINDOW
    # CT without stated units: HU if it looks like HU (air at about -1000), else e.g. attenuation / mm
    if modality == "CT" and not units and data.size and float(data.min()) < -500:
        return CT_WINDOW
    return parse_window(None, data)
