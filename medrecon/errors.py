"""Exceptions raised by medrecon.

Every error a user can cause (bad path, bad file, wrong shape, NaN input, unknown
name, missing optional dependency) is a :class:`MedreconError` whose message is one
clear sentence.  The command-line interface prints that sentence without a
traceback and exits with status 2.
"""

from __future__ import annotations


class MedreconError(Exception):
    """Base class of all errors medrecon raises for bad input or bad set-up."""


class InputError(MedreconError, ValueError):
    """An argument, array or parameter is invalid (shape, dtype, range, NaN)."""


class FileFormatError(MedreconError):
    """A file is missing, truncated, corrupt or not of the expected kind."""


class PluginError(MedreconError):
    """A plugin is unknown, fails to import, or two distributions claim one name."""


class MissingDependencyError(MedreconError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def require(module: str, extra: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``extra``.

    >>> np = require("numpy", "core")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{module} is not installed; install it with: pip install 'medrecon[{extra}]'"
        ) from exc


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, or an :class:`InputError` naming ``name`` ("batch_size must be a
    positive integer, got 0")."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = None
    if n is None or n < 1 or isinstance(value, bool) or (isinstance(value, float) and n != value):
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return n
