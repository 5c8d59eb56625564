"""Intensity kinds: the map of a prior between physical units and the network range.

A prior's ``config.json`` names its kind in ``intensity.kind``; the map is::

    x_net = C(2 (x - lo) / (hi - lo) - 1)          (physical units -> network range)
    x     = lo + (C^-1(x_net) + 1) (hi - lo) / 2   (exact inverse)

with ``C`` the kind's companding (``compress``; ``C^-1`` = ``expand``) and the bounds
``lo``, ``hi`` either fixed in the config or **bound** to the data before use (``bind``):

=============  ======  ========================================================  ==========
kind           bound   lo, hi                                                    C
=============  ======  ========================================================  ==========
``window``     no      ``intensity.lo``, ``intensity.hi`` (CT: -1000, 2000 HU)   identity
``percentile`` yes     the volume's ``p_lo``, ``p_hi`` percentiles (MR)           identity
=============  ======  ========================================================  ==========

Other kinds come from plugins (the ultrasound plugin's ``mulaw``: ``lo = -s, hi = s`` with
``s`` a percentile of ``|x|``, then mu-law companding).  Every kind, these two included, is
registered in the entry-point group ``medrecon.intensities`` and found through the registry
(:func:`intensity_kind`); the contract a kind object meets:

- ``bound``: True when ``bind`` needs the data (the engine binds it once per volume);
- ``problem(intensity) -> str | None``: what is wrong with a config's intensity section;
- ``bind(data, intensity) -> (lo, hi)``: the bounds for ``data`` (a NumPy array, physical units);
- ``compress(v, intensity)`` / ``expand(u, intensity)``: ``C`` and ``C^-1``, elementwise,
  NumPy arrays and torch tensors alike;
- optional ``modality`` and ``default() -> dict``: the intensity section of a new prior of
  that modality (:func:`default_intensity`).

>>> WINDOW.bind(None, {"kind": "window", "lo": -1000, "hi": 2000})
(-1000.0, 2000.0)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["WINDOW", "PERCENTILE", "intensity_kind", "intensity_problem", "bound_kinds", "default_intensity"]


class Window:
    """Intensity kind ``window``: fixed bounds ``intensity.lo`` < ``intensity.hi``, no companding."""

    name = "window"
    bound = False

    def problem(self, intensity: dict) -> str | None:
        """None when ``lo`` and ``hi`` are finite numbers (physical units) with hi > lo."""
        lo, hi = intensity.get("lo"), intensity.get("hi")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)):
            return f"'intensity' window needs finite numbers lo and hi, got {lo!r} and {hi!r}"
        return None if hi > lo else "'intensity' window needs hi > lo"

    def bind(self, data, intensity: dict) -> tuple[float, float]:  # noqa: ARG002 - the data do not matter
        return float(intensity["lo"]), float(intensity["hi"])

    def compress(self, v, intensity: dict):  # noqa: ARG002
        return v

    def expand(self, u, intensity: dict):  # noqa: ARG002
        return u


class Percentile(Window):
    """Intensity kind ``percentile``: ``lo``, ``hi`` = the data's ``intensity.p_lo`` and ``intensity.p_hi``
    percentiles (computed in float32), no companding."""

    name = "percentile"
    bound = True

    def problem(self, intensity: dict) -> str | None:
        """None when the percentiles ``p_lo`` < ``p_hi`` are finite numbers in [0, 100]."""
        p_lo, p_hi = intensity.get("p_lo"), intensity.get("p_hi")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 100 for v in (p_lo, p_hi)) \
                or not p_lo < p_hi:
            return f"'intensity' percentiles need 0 <= p_lo < p_hi <= 100, got {p_lo!r} and {p_hi!r}"
        return None

    def bind(self, data, intensity: dict) -> tuple[float, float]:
        lo, hi = np.percentile(np.asarray(data).astype(np.float32), [intensity["p_lo"], intensity["p_hi"]])
        return float(lo), float(hi)


#: The core kinds (registered under these names in medrecon's own pyproject.toml).
WINDOW = Window()
PERCENTILE = Percentile()


def intensity_kind(name: str):
    """The intensity kind registered as ``name`` (:func:`medrecon.registry.intensity_kind`);
    :class:`~medrecon.errors.PluginError` naming the known kinds when there is none."""
    from medrecon import registry

    return registry.intensity_kind(str(name))


def intensity_problem(intensity) -> str | None:
    """What is wrong with a prior config's ``intensity`` section (no ``kind``, a kind nobody
    registered, or the kind's own ``problem``), or None."""
    from medrecon.errors import PluginError

    if not isinstance(intensity, dict) or not isinstance(intensity.get("kind"), str):
        return "'intensity.kind' is missing"
    try:
        kind = intensity_kind(intensity["kind"])
    except PluginError as exc:
        return f"'intensity.kind': {exc}"
    return kind.problem(intensity)


def bound_kinds() -> tuple[str, ...]:
    """Names of the registered kinds whose map must be bound to the data (``bound`` is True), sorted."""
    from medrecon import registry

    return tuple(name for name, kind in registry.intensity_kinds().items() if getattr(kind, "bound", False))


def default_intensity(modality: str) -> dict | None:
    """The intensity section for a new prior of ``modality`` from the registered kind that declares
    that ``modality`` (and a ``default()``), or None when no kind does."""
    from medrecon import registry

    for kind in registry.intensity_kinds().values():
        if getattr(kind, "modality", None) == modality and callable(getattr(kind, "default", None)):
            return kind.default()
    return None

