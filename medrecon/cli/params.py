"""Parsing of repeated ``--param key=value`` options shared by several commands."""

from __future__ import annotations

import json
from typing import Any

from medrecon.errors import InputError


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["n_views=8", "angles=[0, 90]", "window=hann"]`` into a dict.

    Each value is read as JSON when it parses (numbers, lists, true/false/null)
    and kept as a string otherwise.

    >>> parse_params(["n=8", "w=hann", "a=[0, 1.5]"])
    {'n': 8, 'w': 'hann', 'a': [0, 1.5]}
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--param expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
