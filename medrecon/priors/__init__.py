"""Diffusion priors over 2D slices: the model, its storage, training, sampling, evaluation.

Import is light: torch and monai load when a name below is first used.

- :class:`DiffusionPrior`, :func:`load_prior` (``medrecon.priors.model``)
- :func:`train_prior` (``medrecon.priors.train``)
- schedule and sampler helpers (``medrecon.priors.schedule``): make_schedule, ddim_timesteps,
  tweedie_x0, eps_from_x0, ddim_step, ddim_sample, dpmpp2m_sample
- :func:`sample_prior` (``medrecon.priors.sample``)
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DiffusionPrior": "medrecon.priors.model",
    "load_prior": "medrecon.priors.model",
    "default_config": "medrecon.priors.model",
    "PRESETS": "medrecon.priors.model",
    "train_prior": "medrecon.priors.train",
    "sample_prior": "medrecon.priors.sample",
    "make_schedule": "medrecon.priors.schedule",
    "ddim_timesteps": "medrecon.priors.schedule",
    "tweedie_x0": "medrecon.priors.schedule",
    "eps_from_x0": "medrecon.priors.schedule",
    "ddim_step": "medrecon.priors.schedule",
    "ddim_sample": "medrecon.priors.schedule",
    "dpmpp2m_sample": "medrecon.priors.schedule",
    "PriorProtocol": "medrecon.priors.protocol",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medrecon.priors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
