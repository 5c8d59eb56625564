"""Forward models: the :class:`Operator` contract and the registry look-ups.

``get_operator(name, **params)`` builds a registered operator;
``operator_from_spec(spec)`` rebuilds one from the dict stored in a measurement file.
"""

from __future__ import annotations

from typing import Any

from medrecon.errors import InputError, MedreconError, PluginError
from medrecon.operators.base import Operator, as_json_params

__all__ = ["Operator", "as_json_params", "get_operator", "operator_class", "operator_from_spec"]


def operator_class(name: str) -> type[Operator]:
    """The registered :class:`Operator` subclass called ``name``."""
    from medrecon import registry

    cls = registry.load("medrecon.operators", name)
    if not (isinstance(cls, type) and issubclass(cls, Operator)):
        raise PluginError(f"operator plugin {name!r} does not name a medrecon Operator subclass")
    return cls


def get_operator(name: str, **params: Any) -> Operator:
    """Build the registered operator ``name`` with keyword parameters.

    >>> A = get_operator("template.scale", shape=[4, 4], factor=3.0)
    >>> A.spec()["name"]
    'template.scale'

    Bad parameters raise :class:`medrecon.errors.InputError` with one sentence.
    """
    cls = operator_class(name)
    try:
        return cls(**params)
    except MedreconError:
        raise
    except TypeError as exc:
        raise InputError(f"bad parameters for operator {name!r}: {exc}") from exc


def operator_from_spec(spec: dict[str, Any]) -> Operator:
    """Rebuild an operator from ``Operator.spec()`` output (as stored in measurement files)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise InputError("an operator spec must be a dict with a 'name' entry")
    cls = operator_class(spec["name"])
    try:
        return cls.from_spec(spec)
    except MedreconError:
        raise
    except TypeError as exc:
        raise InputError(f"bad operator spec for {spec['name']!r}: {exc}") from exc
