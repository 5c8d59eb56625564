"""Plugin discovery through Python entry points.

Six groups hold medrecon's plugins:

============================  ===========================================
group                         an entry point names
============================  ===========================================
``medrecon.operators``        an :class:`~medrecon.operators.Operator` subclass
``medrecon.samplers``         a sampler class or factory
``medrecon.priors``           a function returning a prior folder path
``medrecon.importers``        an importer class for a raw scanner format
``medrecon.metrics``          a metric set: a modality's evaluation (see below)
``medrecon.intensities``      an intensity kind: a prior's map between physical
                              units and the network range (see below)
============================  ===========================================

The entry name is what users type (``ct.parallel``, ``dds``).  Discovery reads
installed distributions' metadata only: listing plugins imports no plugin and
not torch.  A plugin is imported the first time it is used; if that import
fails the error names the plugin and its distribution, and other plugins keep
working.  Two distributions that claim the same name in one group are an error
naming both.

**Metric sets** (``medrecon.metrics``, :func:`metric`, :func:`find_metrics`) are objects (a
class with static methods, or an instance) with ``modality`` (the Volume modality they score,
e.g. ``"US"``) and any of: ``evaluate_regions(recon, *, targets, backgrounds, classical, haze,
reference, units, dynamic_range_db, image, frame, json_path, png) -> dict`` and
``read_regions_file(path) -> (targets, backgrounds, units)`` (``medrecon evaluate --regions``),
and ``display(panels, *, std, spacing, title, path, dpi) -> list of panel names`` (how
:func:`medrecon.figures.reconstruction_figure` shows that modality).

**Intensity kinds** (``medrecon.intensities``, :func:`intensity_kind`; the entry name is the
``intensity.kind`` of a prior's config.json) are objects with ``bound`` (True when the map
needs the data before use), ``problem(intensity) -> str | None``, ``bind(data, intensity) ->
(lo, hi)``, ``compress(v, intensity)`` / ``expand(u, intensity)`` (applied after / before the
affine map onto [-1, 1]) and optionally ``modality`` with ``default() -> dict`` (the intensity
section of a new prior of that modality); see :mod:`medrecon.priors.intensity`.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from medrecon.errors import PluginError

METRICS = "medrecon.metrics"
INTENSITIES = "medrecon.intensities"
GROUPS = ("medrecon.operators", "medrecon.samplers", "medrecon.priors", "medrecon.importers", METRICS, INTENSITIES)
_KIND = {g: g.split(".", 1)[1].rstrip("s") for g in GROUPS} | {METRICS: "metric set", INTENSITIES: "intensity kind"}


@dataclass(frozen=True)
class PluginInfo:
    """One entry point, as read from distribution metadata (nothing imported)."""

    name: str
    group: str
    value: str
    distribution: str
    version: str

    def load(self) -> Any:
        """Import and return the object the entry point names."""
        return _load(self)


def discover(group: str | None = None) -> list[PluginInfo]:
    """All entry points in medrecon's groups (or one group), sorted by group and name.

    Reads metadata only.  Duplicates are listed here, and reported as an error
    when the name is used (see :func:`lookup`).
    """
    groups = (group,) if group else GROUPS
    infos = [i for i in _scan() if i.group in groups]
    return sorted(infos, key=lambda i: (i.group, i.name, i.distribution))


@functools.lru_cache(maxsize=1)
def _scan() -> tuple[PluginInfo, ...]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for dist in metadata.distributions():
        dname = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            if ep.group in GROUPS:
                key = (ep.group, ep.name, dname.lower().replace("_", "-"))
                if key in seen:  # the same distribution found twice on sys.path
                    continue
                seen.add(key)
                out.append(PluginInfo(ep.name, ep.group, ep.value, dname, dist.version or "?"))
    return tuple(out)


def refresh() -> None:
    """Forget cached discovery results (after installing a plugin at run time)."""
    _scan.cache_clear()
    _load_cached.cache_clear()


def lookup(group: str, name: str) -> PluginInfo:
    """The entry point ``name`` in ``group``.

    Raises :class:`PluginError` when the name is unknown (suggesting the
    closest known names) or claimed by two distributions (naming both).
    """
    matches = [i for i in discover(group) if i.name == name]
    kind = _KIND.get(group, group)
    if not matches:
        known = sorted({i.name for i in discover(group)})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        listing = f" (known: {', '.join(known)})" if known and not close else ""
        raise PluginError(f"unknown {kind} {name!r}{hint}{listing}")
    if len(matches) > 1:
        owners = " and ".join(f"{m.distribution} {m.version}" for m in matches)
        raise PluginError(f"{kind} name {name!r} is claimed by two distributions: {owners}")
    return matches[0]


def load(group: str, name: str) -> Any:
    """Import and return the plugin object ``name`` of ``group``."""
    return lookup(group, name).load()


def _load(info: PluginInfo) -> Any:
    return _load_cached(info)


@functools.cache
def _load_cached(info: PluginInfo) -> Any:
    ep = metadata.EntryPoint(info.name, info.value, info.group)
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - any failure of a third-party import
        raise PluginError(
            f"plugin {info.name!r} from {info.distribution} {info.version} failed to import "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def metric(name: str) -> Any:
    """The metric set registered as ``name`` in ``medrecon.metrics`` (imported on first use)."""
    return load(METRICS, name)


def find_metrics(modality: str | None = None) -> dict[str, Any]:
    """Every registered metric set, name -> object, or those whose ``modality`` is ``modality``
    (case-insensitive).  Imports them; one that fails to import is left out with a warning naming it."""
    found = _load_group(METRICS)
    if modality is None:
        return found
    return {n: m for n, m in found.items() if str(getattr(m, "modality", "")).upper() == str(modality).upper()}


def intensity_kind(name: str) -> Any:
    """The intensity kind registered as ``name`` in ``medrecon.intensities`` (imported on first use)."""
    return load(INTENSITIES, name)


def intensity_kinds() -> dict[str, Any]:
    """Every registered intensity kind, name -> object.  Imports them; one that fails to import is
    left out with a warning naming it."""
    return _load_group(INTENSITIES)


def _load_group(group: str) -> dict[str, Any]:
    """name -> loaded object for every name in ``group``; a name claimed twice raises
    :class:`PluginError` (naming both), a plugin that fails to import is warned about and left out."""
    import warnings

    found = {}
    for name in sorted({i.name for i in discover(group)}):
        info = lookup(group, name)
        try:
            found[name] = info.load()
        except PluginError as exc:
            warnings.warn(str(exc), stacklevel=3)
    return found


def status(info: PluginInfo) -> str:
    """'ok' if the plugin imports, otherwise the one-line reason it does not."""
    try:
        info.load()
    except PluginError as exc:
        cause = exc.__cause__
        return f"error: {type(cause).__name__}: {cause}" if cause else f"error: {exc}"
    return "ok"


def lazy_exports(package: str, where: dict[str, str]):
    """A module ``__getattr__`` for a plugin package that exports classes without importing them
    (nor torch) until first use: ``where`` maps each exported name to the module defining it.

    In a plugin's ``__init__.py``::

        __getattr__ = lazy_exports(__name__, {"ParallelBeam2D": "medrecon_ct.parallel"})
    """
    import importlib

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


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
