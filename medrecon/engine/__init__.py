"""The reconstruction engine: plan a run, then execute it.

``medrecon.reconstruct`` is :func:`medrecon.engine.execute.reconstruct`, i.e.
``execute(plan(...))``; see ``docs/engine.md``.  The modules, in the order a run meets them:

* :mod:`~medrecon.engine.inputs` -- the measurement, sampler, prior and devices from what the caller gave;
* :mod:`~medrecon.engine.checks` -- the checks before any work; components, parts;
* :mod:`~medrecon.engine.settings` -- what determines the result, and its hash;
* :mod:`~medrecon.engine.plan` -- :func:`plan` and :class:`RunPlan`, every decision resolved once;
* :mod:`~medrecon.engine.execute` -- :func:`execute` (and :func:`reconstruct`);
* :mod:`~medrecon.engine.workers` -- workers, batches, draws, volume runs, progress;
* :mod:`~medrecon.engine.checkpoint` -- ``OUT.partial/`` for resume and parts;
* :mod:`~medrecon.engine.output` -- the result's metadata record and files;
* :mod:`~medrecon.engine.prior_fit` -- how familiar the study is to the prior;
* :mod:`~medrecon.engine.distributed` -- many studies over a Ray cluster.
"""

from __future__ import annotations

from medrecon.engine.checkpoint import partial_path
from medrecon.engine.checks import (
    PriorMismatchWarning,
    check_prior_fit,
    check_volume_geometry,
    component_names,
    component_path,
    part_slices,
)
from medrecon.engine.execute import execute, reconstruct
from medrecon.engine.inputs import load_input
from medrecon.engine.plan import RunPlan, plan
from medrecon.engine.settings import run_settings
from medrecon.engine.workers import RunStopped

__all__ = ["reconstruct", "plan", "execute", "RunPlan", "load_input", "part_slices", "partial_path",
           "check_prior_fit", "check_volume_geometry", "run_settings", "RunStopped", "PriorMismatchWarning",
           "component_names", "component_path"]
