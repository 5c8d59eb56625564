"""Atomic output: write to a temporary sibling, then rename onto the target.

A reader never sees a half-written file or folder, and an existing output is
replaced only when the caller passed ``overwrite=True``.

* :func:`atomic_file` / :func:`atomic_dir` -- user-facing outputs (checked against
  ``overwrite``, parent folders created);
* :func:`write_bytes_atomic` / :func:`write_text_atomic` -- internal state files
  (checkpoints, locks, training state) that are always replaced: written to a temporary
  sibling in the same folder, optionally fsynced, then ``os.replace`` d onto the target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from medrecon.errors import InputError
from medrecon.processes import pid_alive

__all__ = ["check_target", "check_outputs", "atomic_file", "atomic_dir", "tmp_sibling", "write_bytes_atomic",
           "write_text_atomic", "remove_stale_temps"]


def check_target(path: Path, overwrite: bool) -> None:
    """Raise :class:`InputError` if ``path`` exists and ``overwrite`` is false, or
    if its parent is not a folder.  (Missing parent folders are created on write.)"""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise InputError(f"output {str(path)!r} already exists; pass overwrite=True (--overwrite) to replace it")
    if path.parent.exists() and not path.parent.is_dir():
        raise InputError(f"cannot write {str(path)!r}: {str(path.parent)!r} is not a folder")


def check_outputs(outputs: dict[str, Any], inputs: dict[str, Any], overwrite: bool) -> None:
    """Before any work: each output path (``{"--json": path, ...}``; None entries skipped) may be
    written (:func:`check_target`), and none is, or holds, an input path (``{"reference": path}``;
    entries that are not paths are skipped).  One-sentence :class:`InputError` otherwise."""
    srcs = {what: Path(p).resolve() for what, p in inputs.items() if isinstance(p, (str, os.PathLike)) and str(p)}
    for name, out in outputs.items():
        if out is None:
            continue
        target = Path(out).resolve()
        for what, src in srcs.items():
            if src == target or target in src.parents:
                raise InputError(f"the output {(name + ' ') if name else ''}{str(out)!r} would overwrite the {what} {str(src)!r}; write it "
                                 "somewhere else")
        check_target(Path(out), overwrite)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {str(path.parent)!r}: {exc.strerror}") from exc


def tmp_sibling(path: Path, suffix: str = "") -> Path:
    """A fresh hidden name next to ``path``: ``.NAME.tmp-PID-RANDOM8`` + ``suffix``."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` (:func:`tmp_sibling` names) left by a process of
    this host that no longer runs (a write killed half-way); returns what was removed.  Those of a
    live process (a write in progress) are kept."""
    path = Path(path)
    prefix = f".{path.name}.tmp-"
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        _remove(path.parent / name)
        removed.append(path.parent / name)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_file(path: Path, overwrite: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    ``suffix`` is appended to the temporary name (``.nii.gz`` lets nibabel pick
    compression from the name).  On error the temporary file is removed and
    ``path`` is untouched.
    """
    path = Path(path)
    check_target(path, overwrite)
    _make_parent(path)
    tmp = tmp_sibling(path, suffix)
    try:
        yield tmp
        # os.replace cannot put a file over a folder: a folder is moved aside first
        _put_in_place(tmp, path, aside=path.is_dir() and not path.is_symlink())
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``path``; on success it becomes ``path``.

    An existing ``path`` (with ``overwrite=True``) is moved aside first and
    deleted only after the new folder is in place.
    """
    path = Path(path)
    check_target(path, overwrite)
    _make_parent(path)
    tmp = tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        _put_in_place(tmp, path, aside=path.exists() or path.is_symlink())
    finally:
        if tmp.exists():
            _remove(tmp)


def _put_in_place(tmp: Path, path: Path, aside: bool) -> None:
    """Rename ``tmp`` to ``path``; with ``aside`` the old ``path`` is moved away first and
    deleted only once the new one is in place."""
    if aside:
        old = tmp_sibling(path, ".old")
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def write_bytes_atomic(path: Path, write: Callable[[IO[bytes]], Any], *, fsync: bool = True) -> None:
    """Replace ``path`` atomically with what ``write(f)`` writes to a binary file ``f``.

    ``write`` fills a temporary sibling in the same folder (so the rename stays on one file
    system); with ``fsync`` the data reaches the disk before ``os.replace`` puts it in place,
    so a crash leaves the old file or the new one, never a torn one.  The temporary file is
    removed on error.  The folder must exist; an existing ``path`` is always replaced.
    """
    path = Path(path)
    tmp = tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str, *, fsync: bool = False) -> None:
    """Replace ``path`` atomically with ``text`` (UTF-8); see :func:`write_bytes_atomic`."""
    data = text.encode("utf-8")
    write_bytes_atomic(path, lambda f: f.write(data), fsync=fsync)
