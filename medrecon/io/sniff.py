"""The cheap format check every importer's ``can_read`` makes.

An importer's ``can_read(path)`` must answer quickly and never raise: a file of another
format, an unreadable file or a folder simply is "not ours".  :func:`sniff_file` holds that
guard once; the importer supplies only the format-specific probe.

One failure is an answer "ours": a probe that opens the file with
:func:`medrecon.io.hdf5.open_hdf5` and is refused because the file refers to data in other
files (:class:`~medrecon.io.hdf5.ExternalDataError`).  The importer is then chosen, and its
``read`` refuses the file with that sentence instead of "no importer reads it".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["sniff_file"]


def sniff_file(path, probe: Callable[[Path], bool]) -> bool:
    """True when ``path`` is a regular file and ``probe(Path(path))`` is true.

    Any exception raised while probing (not HDF5, truncated, permission denied, ...) means
    the file is not in the probed format: the answer is False; except an
    :class:`~medrecon.io.hdf5.ExternalDataError` (module docstring): True.
    """
    from medrecon.io.hdf5 import ExternalDataError

    p = Path(path)
    if not p.is_file():
        return False
    try:
        return bool(probe(p))
    except ExternalDataError:  # ours to refuse: read() says why
        return True
    except Exception:  # noqa: BLE001 - any failure to read it means: not ours
        return False
