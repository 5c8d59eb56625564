"""Bridges between medrecon and other reconstruction toolkits.

Each submodule is named for the toolkit it bridges and imports that toolkit only when one
of its functions is called, so ``import medrecon.interop`` never needs an optional
dependency:

* :mod:`medrecon.interop.odl` -- ODL (``pip install 'medrecon[odl]'``):
  :func:`~medrecon.interop.odl.from_odl` wraps a linear ODL operator (a ray transform of
  any ODL geometry) as a medrecon :class:`~medrecon.operators.Operator`, and
  :func:`~medrecon.interop.odl.to_odl` hands a medrecon operator to ODL's solvers.

>>> import medrecon.interop
>>> sorted(medrecon.interop.__all__)
['odl']
"""

from __future__ import annotations

__all__ = ["odl"]
