"""Forward models: the :class:`Operator` contract and the registry look-ups.

``get_operator(name, **params)`` builds a registered operator;
``operator_from_spec(spec)`` rebuilds one from the dict stored in a measurement file.
"""

from __future__ import annotations

from typing import Any

from medrecon.errors import InputError, MedreconError, PluginError
from medrecon.operators.base import Operator
from medrecon.operators.params import REQUIRED, Param, as_json_params

__all__ = ["Operator", "Param", "REQUIRED", "as_json_params", "get_operator", "operator_class",
           "operator_for_grid", "operator_from_spec"]


def operator_class(name: str) -> type[Operator]:
    """The registered :class:`Operator` subclass called ``name``, or, for ``"module:Class"``,
    that class of an importable module (an operator not installed as a plugin)."""
    if ":" in name:
        cls = _import_class(name)
    else:
        from medrecon import registry

        cls = registry.load("medrecon.operators", name)
    if not (isinstance(cls, type) and issubclass(cls, Operator)):
        raise PluginError(f"operator {name!r} does not name a medrecon Operator subclass")
    return cls


def _import_class(ref: str):
    import importlib

    mod, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(mod.strip())
        for part in attr.strip().split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - any failure of a user's module is one sentence
        raise PluginError(f"cannot load operator class {ref!r} ({type(exc).__name__}: {exc})") from exc
    return obj


def get_operator(name: str, **params: Any) -> Operator:
    """Build the registered operator ``name`` with keyword parameters.

    >>> A = get_operator("template.scale", shape=[4, 4], factor=3.0)
    >>> A.spec()["name"]
    'template.scale'

    Bad parameters raise :class:`medrecon.errors.InputError` with one sentence.  An operator
    declaring ``PARAMS`` also takes ``arrays=`` (the measurement arrays that
    ``{"array": NAME}`` values refer to).
    """
    return _built(name, operator_class(name), params)


def operator_for_grid(name: str, shape, spacing=None, /, **params: Any) -> Operator:
    """The registered operator ``name`` for an image grid ``shape`` (pixels) with pixel sizes
    ``spacing`` (mm): :meth:`Operator.for_grid`, bad parameters reported as by :func:`get_operator`.

    >>> operator_for_grid("template.scale", (3, 5), (1.0, 1.0), factor=2.0).domain_shape
    (3, 5)
    """
    cls = operator_class(name)
    return _built(name, cls.for_grid, params, shape, spacing)


def _built(name: str, factory, params: dict[str, Any], *args: Any) -> Operator:
    """``factory(*args, **params)``; a ``TypeError`` (unknown or missing parameter) becomes an
    :class:`InputError` naming the operator."""
    try:
        return factory(*args, **params)
    except MedreconError:
        raise
    except TypeError as exc:
        raise InputError(f"bad parameters for operator {name!r}: {exc}") from exc


def _missing_plugin_hint(spec: dict[str, Any]) -> str | None:
    """One sentence naming the plugin to install (or upgrade) for a spec whose operator is unknown."""
    from importlib.metadata import PackageNotFoundError, version

    plugin = spec.get("plugin")
    if not isinstance(plugin, str) or not plugin.strip():
        return None
    name, plugin = spec["name"], plugin.strip()
    try:
        have = version(plugin)
    except PackageNotFoundError:
        return (f"this measurement needs operator {name!r} from the plugin {plugin}, which is not installed "
                f"(pip install {plugin})")
    return (f"this measurement needs operator {name!r} from the plugin {plugin}, but the installed {plugin} "
            f"{have} does not provide it (pip install --upgrade {plugin})")


def operator_from_spec(spec: dict[str, Any], arrays: dict[str, Any] | None = None) -> Operator:
    """Rebuild an operator from ``Operator.spec()`` output (as stored in measurement files).

    ``arrays``: the measurement's arrays (``Measurement.arrays``) that ``{"array": NAME}``
    parameter values refer to (MRI coil maps); :meth:`medrecon.Measurement.operator` passes
    them.
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise InputError("an operator spec must be a dict with a 'name' entry")
    try:
        cls = operator_class(spec["name"])
    except PluginError as exc:
        hint = _missing_plugin_hint(spec)
        if hint is None:
            raise
        raise PluginError(hint) from exc
    try:
        op = cls.from_spec(spec, arrays=arrays) if arrays else cls.from_spec(spec)
        if "plugin" not in spec:  # an older spec: the rebuilt operator reports the same dict
            op._spec_records_plugin = False
        return op
    except MedreconError:
        raise
    except TypeError as exc:
        raise InputError(f"bad operator spec for {spec['name']!r}: {exc}") from exc
