"""Samplers: from measurements (and a diffusion prior) to images.

``get_sampler(name, **params)`` builds a registered sampler (entry-point group
``medrecon.samplers``): ``classical``, ``tv``, ``l1wavelet``, ``dds``, ``dps``, ``reddiff`` ship
with medrecon.  The contract is :class:`~medrecon.samplers.base.Sampler`; see ``docs/samplers.md``
for each sampler's update rule.

>>> s = get_sampler("tv", lam=0.01)
>>> s.spec()["name"]
'tv'
"""

from __future__ import annotations

from typing import Any

from medrecon.errors import InputError, MedreconError, PluginError
from medrecon.samplers.base import Sampler
from medrecon.streams import randn_per_slice, slice_generators

__all__ = ["Sampler", "get_sampler", "randn_per_slice", "sampler_class", "sampler_from_spec", "slice_generators"]


def sampler_class(name: str) -> type[Sampler]:
    """The registered :class:`Sampler` subclass called ``name``."""
    from medrecon import registry

    cls = registry.load("medrecon.samplers", name)
    if not (isinstance(cls, type) and issubclass(cls, Sampler)):
        raise PluginError(f"sampler plugin {name!r} does not name a medrecon Sampler subclass")
    return cls


def get_sampler(name: str, **params: Any) -> Sampler:
    """Build the registered sampler ``name``; bad parameters raise :class:`InputError` (one sentence)."""
    cls = sampler_class(name)
    try:
        return cls(**params)
    except MedreconError:
        raise
    except TypeError as exc:
        raise InputError(f"bad parameters for sampler {name!r}: {exc}") from exc


def sampler_from_spec(spec: dict[str, Any]) -> Sampler:
    """Rebuild a sampler from :meth:`Sampler.spec` output."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise InputError("a sampler spec must be a dict with a 'name' entry")
    return get_sampler(spec["name"], **spec.get("params", {}))
