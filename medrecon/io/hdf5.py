"""Reading HDF5 files from elsewhere: only what the file itself holds, never more than the budget.

Every HDF5 reader of medrecon (measurement files, and the importers of the plugins: fastMRI /
ISMRMRD k-space, zea RF data, Data Exchange projections) opens files through :func:`open_hdf5`
and reads datasets through :func:`read_dataset` (or checks a partial read with
:func:`require_dataset`):

* :func:`open_hdf5` refuses, in one sentence (:class:`ExternalDataError`), a file that refers
  to data in other files: an **external link** (``h5py.ExternalLink``: an entry that is really
  an object of another HDF5 file), a dataset with **external storage** (its bytes kept in
  other, raw files: ``create_dataset(..., external=[(path, offset, size)])``) or a **virtual
  dataset** (mapped from datasets of other files).  Following them would let a file from
  elsewhere make medrecon read any file on the machine.  The whole file is checked when it
  is opened (links are listed without being followed).
* :func:`read_dataset` / :func:`require_dataset` compute the bytes a read allocates from
  the dataset's shape and dtype and refuse it over the memory budget
  (:mod:`medrecon.io.budget`) before anything is read: an HDF5 dataset may declare
  2.5e9 chunks that were never written, which costs a few kB on disk and 10 GB in memory.

>>> import h5py, numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "f.h5")
>>> with h5py.File(path, "w") as f:
...     _ = f.create_dataset("y", data=np.arange(6.0).reshape(2, 3))
>>> with open_hdf5(path) as f:
...     read_dataset(f, "y", path).shape
(2, 3)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medrecon.errors import FileFormatError
from medrecon.io.budget import array_bytes, require

__all__ = ["ExternalDataError", "open_hdf5", "check_self_contained", "require_dataset", "read_dataset"]

_KEEP_INSIDE = "medrecon reads only data stored inside the file, so copy the data into the file first (e.g. with h5py)"


class ExternalDataError(FileFormatError):
    """An HDF5 file refers to data in other files (external link, external storage, virtual dataset)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def open_hdf5(path: str | os.PathLike, what: str = "HDF5 file") -> Any:
    """The ``h5py.File`` of ``path`` opened read-only, once :func:`check_self_contained` found no
    reference to other files; a :class:`~medrecon.errors.FileFormatError` when it is not HDF5.
    Use it as a context manager (``with open_hdf5(p) as f: ...``).  ``what`` names the kind of
    file in the messages (``"measurement file"``)."""
    import h5py

    p = Path(path)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise FileFormatError(
            f"{str(p)!r} is not a readable {what} (truncated or not HDF5): {_first_line(exc)}") from exc
    try:
        check_self_contained(f, p)
    except BaseException:
        f.close()
        raise
    return f


def check_self_contained(f: Any, path: str | os.PathLike | None = None) -> None:
    """Raise :class:`ExternalDataError` when the open HDF5 file ``f`` holds an external link, a
    dataset with external storage or a virtual dataset (module docstring).  Links are listed
    without being followed; soft links stay inside the file."""
    import h5py
    from h5py import h5l

    where = repr(str(path if path is not None else f.filename))
    problems: list[str] = []
    failures: list[Exception] = []

    def problem(name: str) -> str | None:
        """Why the link ``name`` reaches out of the file, or None."""
        kind = f.id.links.get_info(name.encode()).type
        if kind == h5l.TYPE_SOFT:
            return None
        if kind == h5l.TYPE_EXTERNAL:
            link = f.get(name, getlink=True)
            return (f"{name!r} is an HDF5 external link to {getattr(link, 'path', '?')!r} in the file "
                    f"{getattr(link, 'filename', '?')!r}")
        if kind != h5l.TYPE_HARD:
            return f"{name!r} is a user-defined HDF5 link"
        obj = f.get(name)
        if not isinstance(obj, h5py.Dataset):
            return None
        if obj.is_virtual:
            return f"dataset {name!r} is a virtual dataset mapped from other files"
        plist = obj.id.get_create_plist()
        if plist.get_external_count() > 0:
            target = plist.get_external(0)[0]
            target = target.decode(errors="replace") if isinstance(target, bytes) else str(target)
            return f"dataset {name!r} keeps its data in another file ({target!r}, HDF5 external storage)"
        return None

    def visit(name: bytes, info: Any) -> int | None:
        # exceptions must not cross h5py's C callback: collect the first problem and stop
        try:
            why = problem(name.decode("utf-8", errors="replace"))
        except Exception as exc:  # noqa: BLE001 - reported below as a corrupt file
            failures.append(exc)
            return 1
        if why is not None:
            problems.append(why)
            return 1
        return None

    try:
        f.id.links.visit(visit, info=True)
    except Exception as exc:  # noqa: BLE001 - h5py raises many kinds on damaged link tables
        failures.append(exc)
    if failures:
        raise FileFormatError(f"{where} is a corrupt HDF5 file ({_first_line(failures[0])})") from failures[0]
    if problems:
        raise ExternalDataError(f"{where}: {problems[0]}; {_KEEP_INSIDE}")


def _shape_text(shape) -> str:
    return " x ".join(str(int(s)) for s in shape) if len(shape) else "scalar"


def require_dataset(dset: Any, path: str | os.PathLike | None = None, shape=None) -> None:
    """Refuse (:class:`~medrecon.io.budget.MemoryBudgetError`) reading ``dset`` -- or a selection
    of it shaped ``shape`` -- when its bytes (shape x dtype size) are over the memory budget."""
    shape = tuple(dset.shape if shape is None else shape) if dset.shape is not None else ()
    where = f" of {str(path)!r}" if path is not None else ""
    require(array_bytes(shape, dset.dtype.itemsize),
            f"dataset {dset.name!r}{where} ({_shape_text(shape)} {dset.dtype})")


def read_dataset(group: Any, name: str, path: str | os.PathLike | None = None) -> Any:
    """``group[name][()]`` once :func:`require_dataset` allowed it (a numpy array, or a scalar);
    a ``KeyError`` when there is no such entry, a :class:`~medrecon.errors.FileFormatError`
    when it is a group rather than a dataset."""
    import h5py

    obj = group[name]
    if not isinstance(obj, h5py.Dataset):
        where = f"{str(path)!r}: " if path is not None else ""
        raise FileFormatError(f"{where}{obj.name!r} is an HDF5 group, not a dataset")
    require_dataset(obj, path)
    return obj[()]
