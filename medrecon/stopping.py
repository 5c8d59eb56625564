"""Stopping a worker thread at its next iteration, wherever it is.

A run with several workers computes in threads; Ctrl-C and SIGTERM reach only the main thread,
which then asks every worker to stop.  Each worker runs inside :func:`stoppable` with the run's
stop event, and every iterative loop of the package (sampler steps, the PDHG / FISTA / CG
iterations, each candidate of a cross-validated weight) calls :func:`check`, which raises
:class:`Stopped` once the event is set.  So a worker stops within one iteration (milliseconds
to a second), not at the end of its batch: a weight search on one batch can take minutes.

Outside :func:`stoppable` (the main thread of a one-worker run, library use) :func:`check` is
a no-op: there the interrupt itself is raised where the code is.

>>> import threading
>>> ev = threading.Event()
>>> with stoppable(ev):
...     check()            # not set: nothing happens
...     ev.set()
...     try:
...         check()
...     except Stopped:
...         print("stopped")
stopped
>>> check()                # outside: a no-op
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Stopped", "stoppable", "check"]

_local = threading.local()


class Stopped(Exception):
    """Raised by :func:`check` in a thread whose run is stopping (not a user error)."""


@contextmanager
def stoppable(event: threading.Event) -> Iterator[None]:
    """Within the block, :func:`check` in this thread raises :class:`Stopped` once ``event`` is set."""
    before = getattr(_local, "event", None)
    _local.event = event
    try:
        yield
    finally:
        _local.event = before


def check() -> None:
    """Raise :class:`Stopped` if this thread runs inside :func:`stoppable` and its event is set."""
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise Stopped
