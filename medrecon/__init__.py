"""medrecon: medical image reconstruction from scanner measurements with diffusion priors.

The package imports lazily: ``import medrecon`` is cheap (no torch), and names
such as ``medrecon.get_operator`` import their module on first use.

Data flow (each arrow one public function and one CLI command)::

    DICOM / NIfTI --load_volume--> Volume --simulate--> Measurement --reconstruct--> Volume
"""

from __future__ import annotations

import importlib
from importlib import metadata as _md

try:
    __version__ = _md.version("medrecon")
except _md.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

# public name -> module that defines it
_LAZY = {
    "MedreconError": "medrecon.errors",
    "InputError": "medrecon.errors",
    "FileFormatError": "medrecon.errors",
    "PluginError": "medrecon.errors",
    "MissingDependencyError": "medrecon.errors",
    "Operator": "medrecon.operators",
    "get_operator": "medrecon.operators",
    "operator_from_spec": "medrecon.operators",
    "Volume": "medrecon.volume",
    "load_volume": "medrecon.io",
    "save_volume": "medrecon.io",
    "Measurement": "medrecon.measurement",
    "load_measurement": "medrecon.measurement",
    "save_measurement": "medrecon.measurement",
    "simulate": "medrecon.simulation",
    "reconstruct": "medrecon.engine",
    "plan": "medrecon.engine",
    "execute": "medrecon.engine",
    "RunPlan": "medrecon.engine",
    "evaluate": "medrecon.evaluation",
    "load_prior": "medrecon.priors.model",
    "DiffusionPrior": "medrecon.priors.model",
}


# subpackages reachable as attributes after ``import medrecon`` (``medrecon.data.load_ct_sample()``)
_SUBMODULES = ("data", "io", "metrics", "priors", "samplers", "operators", "engine", "interop", "datasets")


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = importlib.import_module(f"medrecon.{name}")
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medrecon' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
