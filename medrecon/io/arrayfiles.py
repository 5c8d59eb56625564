"""Arrays an operator spec references by file (``{"file": "maps.npy"}``): where they may be, how
they are read.

An operator parameter may name its array (MRI coil maps, a phase map) by file instead of
holding it: ``{"file": "maps.npy"}``, ``{"file": "maps.h5", "dataset": "coil_maps"}`` (``.npy``,
``.npz`` or HDF5).  A spec read from a measurement file came from elsewhere, so its references
are confined to the measurement's own folder:

* the path is relative, with no ``..`` component (and no drive or backslash), and the file it
  names -- symbolic links resolved -- lies inside that folder;
* anything else is refused with one sentence (:class:`ArrayReferenceError`) saying how to embed
  the array instead: in the file's ``arrays/`` group, referenced as ``{"array": NAME}``
  (``medrecon import`` and ``medrecon simulate`` write them so).

:func:`medrecon.load_measurement` checks every reference of the spec
(:func:`check_file_references`) and :meth:`medrecon.Measurement.operator` builds the operator
inside :func:`array_folder`, so that :func:`read_array_file` resolves each reference in the
measurement's folder (not the working directory) and checks it again.  An operator built
directly in Python, outside :func:`array_folder`, reads the path it is given (the caller's own
choice).  Every read checks the array's declared size against the memory budget
(:mod:`medrecon.io.budget`) before allocating, and HDF5 files go through
:func:`medrecon.io.hdf5.open_hdf5`.

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> confined_path("maps.npy", folder).name
'maps.npy'
>>> confined_path("../maps.npy", folder)
Traceback (most recent call last):
...
medrecon.io.arrayfiles.ArrayReferenceError: the array file '../maps.npy' is outside the measurement's folder (a path with '..'); a measurement may only reference files in its own folder: embed the array in the measurement file instead (medrecon import / medrecon simulate store it in the arrays/ group, referenced as {"array": NAME}; in Python: Measurement(arrays={NAME: array}) and save_measurement)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError, InputError
from medrecon.io.budget import array_bytes, require

__all__ = ["ArrayReferenceError", "file_references", "confined_path", "check_file_references", "array_folder",
           "read_array_file", "read_npy"]

_EMBED = ("a measurement may only reference files in its own folder: embed the array in the measurement file "
          "instead (medrecon import / medrecon simulate store it in the arrays/ group, referenced as "
          '{"array": NAME}; in Python: Measurement(arrays={NAME: array}) and save_measurement)')

#: the folder array references are confined to while an operator is built from a file's spec
_FOLDER: contextvars.ContextVar[Path | None] = contextvars.ContextVar("medrecon_array_folder", default=None)


class ArrayReferenceError(FileFormatError):
    """A spec references an array file outside its measurement's folder (``why``: how it leaves it)."""

    def __init__(self, ref: Any, why: str, source: str | None = None, where: str | None = None):
        self.ref, self.why = ref, why
        head = (f"{source}: the operator parameter {where!r} refers to {ref!r}, which is" if source
                else f"the array file {ref!r} is")
        super().__init__(f"{head} outside the measurement's folder ({why}); {_EMBED}")


def file_references(spec: Any) -> list[tuple[str, dict]]:
    """Every ``{"file": ...}`` reference in an operator spec's parameters, as ``(where, value)``
    pairs (``where``: the parameter's name, e.g. ``"coil_maps"``)."""
    out: list[tuple[str, dict]] = []

    def walk(v: Any, where: str) -> None:
        if isinstance(v, dict):
            if "file" in v:
                out.append((where, v))
                return
            for k, e in v.items():
                walk(e, f"{where}.{k}" if where else str(k))
        elif isinstance(v, list):
            for i, e in enumerate(v):
                walk(e, f"{where}[{i}]")

    params = spec.get("params") if isinstance(spec, dict) else None
    walk(params if isinstance(params, dict) else {}, "")
    return out


def confined_path(ref: Any, folder: str | os.PathLike) -> Path:
    """The file ``ref`` names inside ``folder`` (symbolic links resolved), or an
    :class:`ArrayReferenceError` when it is absolute, climbs with ``..`` or leads out of the folder."""
    text = ref if isinstance(ref, str) else None

    def refuse(why: str) -> ArrayReferenceError:
        return ArrayReferenceError(ref, why)

    if not text or "\0" in text:
        raise refuse("not a file name")
    pure = PurePosixPath(text)
    if pure.is_absolute() or Path(text).is_absolute() or PureWindowsPath(text).drive:
        raise refuse("an absolute path")
    if "\\" in text:
        raise refuse("a backslash: use '/' between folder names")
    if ".." in pure.parts:
        raise refuse("a path with '..'")
    base = Path(folder).resolve()
    target = (base / Path(*pure.parts)).resolve()
    if target != base and base not in target.parents:
        raise refuse("a symbolic link leading out of it")
    return target


def check_file_references(spec: Any, folder: str | os.PathLike, source: str) -> None:
    """Refuse (:class:`ArrayReferenceError`, naming ``source`` and the parameter) every file
    reference of ``spec`` that :func:`confined_path` refuses in ``folder``."""
    for where, value in file_references(spec):
        try:
            confined_path(value.get("file"), folder)
        except ArrayReferenceError as exc:
            raise ArrayReferenceError(exc.ref, exc.why, source, where) from None


@contextlib.contextmanager
def array_folder(folder: str | os.PathLike | None) -> Iterator[None]:
    """Within the block, :func:`read_array_file` resolves references in ``folder`` and refuses
    those outside it (None: no confinement, paths as given)."""
    token = _FOLDER.set(Path(folder) if folder is not None else None)
    try:
        yield
    finally:
        _FOLDER.reset(token)


def _npy_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from the header of a ``.npy`` stream (nothing else is read)."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = reader(fh)
    return tuple(shape), dtype


def read_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """A ``.npy`` file's array, its declared shape x dtype checked against the memory budget
    first (no pickles)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            shape, dtype = _npy_header(fh)
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{what}: {str(p)!r} is not a readable .npy file ({exc})") from None
    require(array_bytes(shape, dtype.itemsize), f"{what} in {str(p)!r} ({' x '.join(map(str, shape))} {dtype})")
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{what}: {str(p)!r} is truncated or corrupt ({exc})") from None


def _read_npz(p: Path, dataset: str | None, what: str) -> np.ndarray:
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{what}: {str(p)!r} is not a readable .npz file ({exc})") from None
    with z:
        key = dataset or (z.files[0] if len(z.files) == 1 else None)
        if key not in z.files:
            raise InputError(f"{what}: name the array in {str(p)!r} with 'dataset' (it has {z.files})")
        try:
            with z.zip.open(f"{key}.npy") as fh:
                shape, dtype = _npy_header(fh)
        except (OSError, ValueError, KeyError) as exc:
            raise FileFormatError(f"{what}: {str(p)!r} is a corrupt .npz file ({exc})") from None
        require(array_bytes(shape, dtype.itemsize), f"{what} {key!r} in {str(p)!r} "
                                                     f"({' x '.join(map(str, shape))} {dtype})")
        return z[key]


def read_array_file(path: str | os.PathLike, dataset: str | None, what: str,
                    default_dataset: str | None = None) -> np.ndarray:
    """The array a ``{"file": path, "dataset": dataset}`` reference names (``.npy``, ``.npz`` or
    HDF5; ``default_dataset``: the HDF5 dataset read when ``dataset`` is None).

    Inside :func:`array_folder`, ``path`` is resolved in that folder by :func:`confined_path`.
    """
    from medrecon.io.hdf5 import open_hdf5, read_dataset

    folder = _FOLDER.get()
    p = confined_path(os.fspath(path), folder) if folder is not None else Path(path)
    if not p.is_file():
        raise InputError(f"{what}: no such file {str(path)!r}" + (f" in {str(folder)!r}" if folder else ""))
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return read_npy(p, what)
    if suffix == ".npz":
        return _read_npz(p, dataset, what)
    key = dataset or default_dataset
    with open_hdf5(p, f".npy, .npz or HDF5 file ({what})") as f:
        if key is None or key not in f:
            raise InputError(f"{what}: {str(p)!r} has no dataset {key!r}")
        return np.asarray(read_dataset(f, key, p))
