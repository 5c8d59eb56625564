"""Everything a plugin author imports: the contracts between medrecon and its plugins.

``from medrecon.plugin import Operator, Sampler, Prior, Importer`` is the one import a plugin
needs.  Each contract is written here as wide as the engine uses it, and nothing outside it is
probed:

**Operator** (:class:`~medrecon.operators.base.Operator`, entry-point group
``medrecon.operators``) -- a linear forward model ``A`` as a ``torch.nn.Module``.  Declare the
parameters once (``PARAMS``, :class:`OperatorParam`) and build in ``_build``; implement
``_forward`` (``y = A x``), ``_adjoint`` (the exact ``A^H``) and ``classical(y)``.  The base class
gives ``normal(x)`` (``A^H A x``; override ``_normal`` with a cheaper form giving the same
numbers), ``norm()`` (``||A||`` by power iteration, cached), ``for_grid(shape, spacing, **params)``
(the operator for an image grid, used by ``simulate``), ``example()`` (a small valid instance,
used by ``medrecon plugins check NAME`` and ``--all``), ``spec()`` / ``from_spec(spec, arrays=)``.
Attributes the engine reads: ``per_slice`` (False: a 3D operator reconstructed in one piece),
``slice_varying`` and ``n_slices`` (parameters per slice, ``for_slices``), ``component_names``
(an image of several components), ``domain_is_complex`` / ``range_is_complex``.

**Sampler** (:class:`~medrecon.samplers.base.Sampler`, group ``medrecon.samplers``) -- declares
``name``, ``params`` (:class:`Param` each), ``default_steps`` and its capabilities as class
attributes, and implements ``_sample``.  Capabilities the engine reads: ``needs_prior``,
``per_slice`` (False: couples all slices, gets the whole volume), ``handles_components``,
``resumable`` (its ``sample`` takes ``checkpoint=`` and ``resume_state=``),
``generators_per_axial_slice``, ``tunable`` / ``tune_scale`` (a weight chosen per slice by
cross-validation), ``phase_free``.  The step count is resolved in one place,
:meth:`~medrecon.samplers.base.Sampler.resolve_steps` (capped at the prior's ``num_timesteps``
for a diffusion sampler): the engine's plan records it, the sampler runs it.

**Prior** (:class:`Prior`, group ``medrecon.priors``: a function returning a prior folder, or
any object with these members) -- required: ``alphas_cumprod``, ``num_timesteps``,
``eps(x_t, t)``, ``to_net`` / ``from_net``.  Optional, each used where present:

* ``config`` (dict, the prior's config.json): ``pixel_size_mm`` and ``image_size`` (grid
  warnings, running at the prior's own scale), ``recommended`` (settings for samplers),
  ``fit_reference`` (the prior-fit check), ``intensity.kind`` (whether the map needs binding);
* ``for_volume(images) -> Prior`` and ``bound_intensity`` (``(lo, hi)`` once bound, else None): an
  intensity map bound to the whole volume's classical reconstruction before the run;
* ``fingerprint() -> str``: what determines the prior's output (default: its config without
  descriptive sections, and its weights' SHA-256);
* ``autocast`` (bool): bf16 autocast of the network on CUDA (``amp``).

**Importer** (:class:`Importer`, group ``medrecon.importers``) -- ``can_read(path)`` and
``read(path, **options)`` returning a :class:`~medrecon.measurement.Measurement` or
``(y, operator, meta)``.

Metric sets and intensity kinds (groups ``medrecon.metrics`` and ``medrecon.intensities``) are
described in :mod:`medrecon.registry`.  :func:`check_operator` and :func:`check_operator_class`
are the conformance kit (:mod:`medrecon.testing`).

>>> from medrecon.operators import operator_class
>>> from medrecon.plugin import check_operator_class
>>> check_operator_class(operator_class("template.scale")).passed
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from medrecon.errors import FileFormatError, InputError, MedreconError, MissingDependencyError, PluginError
from medrecon.operators.base import Operator
from medrecon.operators.params import Param as OperatorParam
from medrecon.priors.protocol import PriorProtocol as Prior
from medrecon.samplers.base import Param, Sampler
from medrecon.testing import check_operator, check_operator_class

__all__ = ["Operator", "OperatorParam", "Sampler", "Param", "Prior", "Importer", "check_operator",
           "check_operator_class", "MedreconError", "InputError", "FileFormatError", "PluginError",
           "MissingDependencyError"]


@runtime_checkable
class Importer(Protocol):
    """A raw scanner format (entry-point group ``medrecon.importers``)."""

    def can_read(self, path: Path) -> bool:
        """Whether ``path`` is this format (cheap: a name or a few bytes; never raises)."""
        ...

    def read(self, path: Path, **options: Any) -> Any:
        """The measurement in ``path``: a Measurement, or ``(y, operator, meta)``.  ``options``
        come from ``--import-option key=value``; an unknown one is an :class:`InputError`."""
        ...
