"""Which process owns a file: lock and temporary-file owners, and whether they still run.

A lock records its owner as ``{"host", "pid", "started"}``.  ``started`` is the process's start
time (clock ticks after boot, from ``/proc/PID/stat`` field 22 on Linux; None elsewhere), so a
PID the system has since reused for another process is told apart from the owner: the owner
runs only if a process with that PID runs *and* started at that time.

>>> me = owner()
>>> owner_alive(me)
True
>>> owner_alive({**me, "pid": 0})
False
"""

from __future__ import annotations

import os
import signal
import socket
import threading

__all__ = ["pid_alive", "process_start", "owner", "owner_alive", "Terminated", "sigterm_as_interrupt"]


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (any owner)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot), or None when unknown."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: count after the last ")"
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


def owner() -> dict:
    """This process as a lock owner: ``{"host", "pid", "started"}``."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start(os.getpid())}


def owner_alive(rec: dict) -> bool:
    """Whether the owner ``rec`` (from :func:`owner`, maybe without ``started``) still runs on this
    host: its PID runs and, when both are known, started at the recorded time.  False for another
    host's owner (it cannot be checked from here)."""
    if rec.get("host") != socket.gethostname():
        return False
    try:
        pid = int(rec.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if not pid_alive(pid):
        return False
    started, now = rec.get("started"), process_start(pid)
    return started is None or now is None or int(started) == now


class Terminated(KeyboardInterrupt):
    """SIGTERM (what job schedulers and ``kill`` send) received: handled like Ctrl-C, so the same
    clean-up runs (finished slices checkpointed, lock released); the CLI exits with 143."""


def _raise_terminated(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated


def sigterm_as_interrupt() -> bool:
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns whether it was installed
    (only the main thread of the main interpreter can install signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _raise_terminated)
    return True
