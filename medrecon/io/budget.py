"""The memory budget: how many bytes one file read may allocate, checked before it allocates.

A file from elsewhere may declare far more data than it holds on disk: a deflated DICOM
whose pixels inflate to gigabytes, a gzip NIfTI of zeros, an HDF5 dataset of 2.5e9
chunks that were never written.  Every reader computes the size it is about to allocate
from the headers (shape x bytes per element, or the inflated size counted in bounded
chunks) and calls :func:`require` first, which refuses with one sentence
(:class:`MemoryBudgetError`, exit status 2 on the command line) when it is over the budget.

The budget, in bytes, is the first of:

1. ``$MEDRECON_MAX_MEMORY`` -- set by the ``--max-memory`` option of the commands that read
   files (``info``, ``convert``, ``simulate``, ``import``, ``reconstruct``) through
   :func:`set_max_memory`, so that worker processes inherit it; a size such as ``8G``,
   ``512M``, ``1.5T`` or a plain number of bytes (K, M, G, T are powers of 1024);
2. half of what the machine can give now: the smallest of ``MemAvailable``
   (``/proc/meminfo``), the room left under a cgroup memory limit and the room left under
   the process's address-space limit (``ulimit -v``); where none of these can be read,
   half of the physical memory, else 4 GiB.

The budget applies to one read (a volume, a dataset, a decoded DICOM file), not to the
whole run.

>>> parse_size("8G")
8589934592
>>> with max_memory("1M"):
...     require(512 * 1024, "a small array")
...     require(3 * 1024 * 1024, "a 3 MiB array")
Traceback (most recent call last):
...
medrecon.io.budget.MemoryBudgetError: a 3 MiB array needs 3.0M of memory, over the 1.0M limit; if the file is trusted, raise the limit with --max-memory 4M (or $MEDRECON_MAX_MEMORY)
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Sequence

from medrecon.errors import InputError, MedreconError

__all__ = ["ENV", "MemoryBudgetError", "parse_size", "format_size", "max_memory_bytes", "set_max_memory",
           "max_memory", "require", "array_bytes"]

#: the environment variable holding the budget (``--max-memory`` sets it)
ENV = "MEDRECON_MAX_MEMORY"
_FALLBACK = 4 << 30
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class MemoryBudgetError(MedreconError):
    """A file declares more data than the memory budget allows (the sentence names both sizes)."""


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``"8G"``, ``"512M"``, ``"1.5T"``, ``"2000000"`` (K/M/G/T = 1024^n;
    ``GB`` and ``GiB`` read as ``G``); an :class:`~medrecon.errors.InputError` otherwise.

    >>> parse_size("512M"), parse_size("1.5k"), parse_size(100)
    (536870912, 1536, 100)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = _SIZE_RE.match(str(text))
        if m is None:
            raise InputError(f"a memory size is a number with an optional unit K, M, G or T (e.g. 8G), got {text!r}")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n < 1:
        raise InputError(f"a memory size must be at least 1 byte, got {text!r}")
    return n


def format_size(n: float) -> str:
    """``n`` bytes as a short size with a K/M/G/T unit (powers of 1024): ``format_size(3 << 30) == "3.0G"``."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f}{unit}"
    return f"{int(n)}B"


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes left under a cgroup v2 memory limit, or None without one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as fh:
            return max(int(limit) - int(fh.read().strip()), 0)
    except (OSError, ValueError):
        return None


def _address_space_room() -> int | None:
    """Bytes left under this process's address-space limit (``ulimit -v``), or None without one."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as fh:
            used = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        return max(int(soft) - used, 0)
    except (ImportError, OSError, ValueError, StopIteration):
        return None


def _physical() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _default() -> int:
    rooms = [r for r in (_meminfo_available(), _cgroup_room(), _address_space_room()) if r is not None]
    if not rooms:
        phys = _physical()
        return phys // 2 if phys else _FALLBACK
    return max(min(rooms) // 2, 1 << 20)


def max_memory_bytes() -> int:
    """The budget in bytes now: ``$MEDRECON_MAX_MEMORY`` if set, else the machine's default
    (module docstring)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        try:
            return parse_size(text)
        except InputError:
            raise InputError(f"${ENV} must be a memory size such as 8G or 512M, got {text!r}") from None
    return _default()


def set_max_memory(size: str | int | None) -> int | None:
    """Set the budget for this process and the processes it starts (``$MEDRECON_MAX_MEMORY``);
    None leaves it as it is.  Returns the budget in bytes (None when unchanged)."""
    if size is None:
        return None
    n = parse_size(size)
    os.environ[ENV] = str(n)
    return n


@contextlib.contextmanager
def max_memory(size: str | int) -> Iterator[int]:
    """Within the block, the budget is ``size`` (then the previous setting returns)."""
    old = os.environ.get(ENV)
    try:
        yield set_max_memory(size)
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def array_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of an array of ``shape`` with ``itemsize``-byte elements (Python integers: no overflow)."""
    return math.prod(int(s) for s in shape) * int(itemsize)


def require(nbytes: int, what: str) -> None:
    """Refuse (:class:`MemoryBudgetError`) to allocate ``nbytes`` for ``what`` (e.g. ``"'y' of
    scan.h5 (50000 x 50000 float32)"``) when it is over the budget."""
    limit = max_memory_bytes()
    if int(nbytes) > limit:
        suggest = format_size(1 << max(int(nbytes) - 1, 1).bit_length()).replace(".0", "")
        raise MemoryBudgetError(
            f"{what} needs {format_size(nbytes)} of memory, over the {format_size(limit)} limit; if the file is "
            f"trusted, raise the limit with --max-memory {suggest} (or ${ENV})")
