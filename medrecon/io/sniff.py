"""The cheap format check every importer's ``can_read`` makes.

An importer's ``can_read(path)`` must answer quickly and never raise: a file of another
format, an unreadable file or a folder simply is "not ours".  :func:`sniff_file` holds that
guard once; the importer supplies only the format-specific probe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["sniff_file"]


def sniff_file(path, probe: Callable[[Path], bool]) -> bool:
    """True when ``path`` is a regular file and ``probe(Path(path))`` is true.

    Any exception raised while probing (not HDF5, truncated, permission denied, ...) means
    the file is not in the probed format: the answer is False.
    """
    p = Path(path)
    if not p.is_file():
        return False
    try:
        return bool(probe(p))
    except Exception:  # noqa: BLE001 - any failure to read it means: not ours
        return False
