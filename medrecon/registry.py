"""Plugin discovery through Python entry points.

Four groups hold medrecon's plugins:

============================  ===========================================
group                         an entry point names
============================  ===========================================
``medrecon.operators``        an :class:`~medrecon.operators.Operator` subclass
``medrecon.samplers``         a sampler class or factory
``medrecon.priors``           a function returning a prior folder path
``medrecon.importers``        an importer class for a raw scanner format
============================  ===========================================

The entry name is what users type (``ct.parallel``, ``dds``).  Discovery reads
installed distributions' metadata only: listing plugins imports no plugin and
not torch.  A plugin is imported the first time it is used; if that import
fails the error names the plugin and its distribution, and other plugins keep
working.  Two distributions that claim the same name in one group are an error
naming both.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from medrecon.errors import PluginError

GROUPS = ("medrecon.operators", "medrecon.samplers", "medrecon.priors", "medrecon.importers")
_KIND = {g: g.split(".", 1)[1].rstrip("s") for g in GROUPS}


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
