"""The reconstruction engine: slice batches on one or more devices, seeding, checkpoints, resume.

``medrecon.reconstruct`` is :func:`medrecon.engine.core.reconstruct`; see ``docs/engine.md``.
"""

from __future__ import annotations

from medrecon.engine.checkpoint import partial_path
from medrecon.engine.core import (
    PriorMismatchWarning,
    RunStopped,
    check_prior_fit,
    check_volume_geometry,
    component_names,
    component_path,
    load_input,
    part_slices,
    reconstruct,
    run_settings,
)

__all__ = ["reconstruct", "load_input", "part_slices", "partial_path", "check_prior_fit", "check_volume_geometry", "run_settings", "RunStopped",
           "PriorMismatchWarning", "component_names", "component_path"]
