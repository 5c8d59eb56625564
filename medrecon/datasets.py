"""Dataset manifests: what each real data set is, where it comes from, and its checksums.

One JSON file per data set (schema ``medrecon-dataset/1``; see ``docs/volumes.md``,
section *Data sets*).  ``data_manifests/*.json`` in the source tree is the source of
truth; identical copies ship inside the package as ``medrecon/data/manifests/*.json``
so that an installed medrecon can list and verify data sets (``tests/test_datasets.py``
fails when the two differ; :func:`sync_package_manifests` copies them over).

Required keys of a manifest: ``name`` (also the folder name under the data root),
``title``, ``modality``, ``licence``, ``citation``, ``source_url`` (or ``doi``),
``redistribution``, ``shape``, ``spacing_mm`` (``null`` when not an image grid) and
``files``: a list of ``{"path": relative path under the data set folder, "sha256",
"bytes"}``.  Optional: ``download`` -- ``{"base_url": URL}`` (each file at
``base_url + path``) or a ``"url"`` on individual files -- for :func:`fetch`;
``how_to_get``, the sentence shown when there is nothing to download;
``local_evaluation_only``: true for data that must never be redistributed.

A manifest comes from a folder anyone may point ``$MEDRECON_MANIFESTS`` at, so its names are
checked before any path is built from them: ``name`` is one plain folder name (letters,
digits, ``.``, ``_``, ``-``; not starting with a dot; no separators), every file ``path`` is
relative with ``/`` separators and no empty, ``.`` or ``..`` component.  :func:`verify`,
:func:`fetch` and :func:`presence` also refuse symbolic links that lead out of the data root
(a data set folder) or out of the data set folder (a file): they never read or write a path
outside the root.  (The root itself may be a link.)  Refusals are one sentence
(:class:`~medrecon.errors.FileFormatError` / :class:`~medrecon.errors.InputError`).

The data root is ``--root`` / ``root=``, else ``$MEDRECON_DATA``, else ``../shared/data``
next to the repository (the source tree's parent).  Extra manifests can be added with
``$MEDRECON_MANIFESTS`` (a folder of JSON files, searched first) or ``manifest_dir=``.

Example::

    >>> from medrecon.datasets import list_manifests
    >>> "ct-pancreas-tcia" in [m["name"] for m in list_manifests()]
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from medrecon.errors import FileFormatError, InputError

__all__ = ["SCHEMA", "REQUIRED_KEYS", "list_manifests", "get_manifest", "default_root", "dataset_dir",
           "verify", "fetch", "sha256_file", "sha256_file_cached", "package_manifest_dir", "source_manifest_dir",
           "sync_package_manifests", "validate_manifest", "presence", "is_plain_name"]

SCHEMA = "medrecon-dataset/1"
REQUIRED_KEYS = ("name", "title", "modality", "licence", "citation", "redistribution", "shape",
                 "spacing_mm", "files")
_REPO = Path(__file__).resolve().parent.parent
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def package_manifest_dir() -> Path:
    """``medrecon/data/manifests`` (shipped with the package)."""
    return Path(__file__).resolve().parent / "data" / "manifests"


def source_manifest_dir() -> Path | None:
    """``data_manifests/`` of the source tree, or None in an installed package."""
    d = _REPO / "data_manifests"
    return d if d.is_dir() else None


def default_root() -> Path:
    """``$MEDRECON_DATA`` if set, else ``../shared/data`` relative to the repository."""
    env = os.environ.get("MEDRECON_DATA")
    return Path(env) if env else _REPO.parent / "shared" / "data"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 (64 hex digits) of a file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


#: (resolved path, size, mtime_ns, ctime_ns, inode) -> digest; bounded to _SHA_CACHE_MAX entries.
_SHA_CACHE: dict[tuple, str] = {}
_SHA_CACHE_MAX = 256


def sha256_file_cached(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, remembered for this process by (resolved path, size, mtime_ns,
    ctime_ns, inode): repeated loads of an unchanged file cost one ``stat``.

    Replacing the file (a new inode), writing to it (size, mtime) or restoring its mtime with
    ``os.utime`` (ctime changes) all miss the cache, so the digest is computed again."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    digest = _SHA_CACHE.get(key)
    if digest is None:
        digest = sha256_file(p)
        if len(_SHA_CACHE) >= _SHA_CACHE_MAX:
            _SHA_CACHE.pop(next(iter(_SHA_CACHE)))
        _SHA_CACHE[key] = digest
    return digest


def is_plain_name(name: Any) -> bool:
    """Whether ``name`` can be a data set folder name: letters, digits, ``.``, ``_``, ``-``, not
    starting with a dot (so no separator, no ``..``).

    >>> is_plain_name("ct-pancreas-tcia"), is_plain_name("../etc"), is_plain_name("a/b")
    (True, False, False)
    """
    return isinstance(name, str) and _NAME_RE.match(name) is not None


def _bad_file_path(path: str) -> bool:
    parts = path.split("/")
    return (not path or "\\" in path or "\0" in path or path.startswith("/")
            or re.match(r"^[A-Za-z]:", path) is not None or any(part in ("", ".", "..") for part in parts))


def validate_manifest(m: Any, where: str = "manifest") -> dict:
    """Check the keys, the name and the ``files`` list; raise :class:`FileFormatError` otherwise."""
    if not isinstance(m, dict):
        raise FileFormatError(f"{where} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise FileFormatError(f"{where} lacks the key(s) {', '.join(missing)}")
    if not is_plain_name(m["name"]):
        raise FileFormatError(f"{where}: the name must be a plain folder name (letters, digits, '.', '_', '-'; "
                              f"no separators or '..'), got {m['name']!r}")
    if not (m.get("source_url") or m.get("doi")):
        raise FileFormatError(f"{where} needs a source_url or a doi")
    files = m["files"]
    if not isinstance(files, list) or not files:
        raise FileFormatError(f"{where}: 'files' must be a non-empty list")
    for f in files:
        ok = (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
              and len(f["sha256"]) == 64 and isinstance(f.get("bytes"), int))
        if not ok:
            raise FileFormatError(f"{where}: every file needs path, sha256 (64 hex digits) and bytes, got {f!r}")
        if _bad_file_path(f["path"]):
            raise FileFormatError(f"{where}: file paths must be relative and inside the data set ('/' separators, "
                                  f"no empty, '.' or '..' parts), got {f['path']!r}")
    return m


def _manifest_dirs(manifest_dir: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if manifest_dir is not None:
        if not Path(manifest_dir).is_dir():
            raise InputError(f"the manifests folder {str(manifest_dir)!r} is not a folder of manifest JSON files")
        dirs.append(Path(manifest_dir))
    env = os.environ.get("MEDRECON_MANIFESTS")
    if env:
        dirs.append(Path(env))
    dirs.append(package_manifest_dir())
    return dirs


def list_manifests(manifest_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every manifest, sorted by name (an earlier folder wins on equal names)."""
    found: dict[str, dict] = {}
    for d in _manifest_dirs(manifest_dir):
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.json")):
            try:
                m = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise FileFormatError(f"dataset manifest {str(p)!r} is not valid JSON ({exc})") from None
            validate_manifest(m, f"dataset manifest {str(p)!r}")
            found.setdefault(m["name"], dict(m, _manifest_path=str(p)))
    return [found[k] for k in sorted(found)]


def _check_name(name: Any) -> str:
    if not is_plain_name(name):
        raise InputError(f"a data set name is a plain folder name (letters, digits, '.', '_', '-'; no separators "
                         f"or '..'), got {name!r}")
    return name


def get_manifest(name: str, manifest_dir: str | os.PathLike | None = None) -> dict:
    """The manifest of data set ``name`` (an :class:`InputError` naming the known ones otherwise)."""
    _check_name(name)
    ms = {m["name"]: m for m in list_manifests(manifest_dir)}
    if name not in ms:
        raise InputError(f"no dataset named {name!r}; known: {', '.join(ms) or 'none'}")
    return ms[name]


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """``root/name`` (``name`` checked to be a plain folder name)."""
    return Path(root if root is not None else default_root()) / _check_name(name)


def _inside(base: Path, p: Path) -> bool:
    """Whether ``p``, symbolic links resolved, is ``base`` (resolved) or lies inside it."""
    b, q = base.resolve(), p.resolve()
    return q == b or b in q.parents


def _checked_dir(name: str, root: str | os.PathLike | None) -> Path:
    """:func:`dataset_dir`, refused when it is a symbolic link leading out of the root."""
    d = dataset_dir(name, root)
    if not _inside(d.parent, d):
        raise FileFormatError(f"{str(d)!r} is a symbolic link leading out of the data root {str(d.parent)!r}; "
                              "medrecon does not follow it (move the data set into the root, or link the whole root)")
    return d


def _checked_file(d: Path, rel: str) -> Path:
    """``d/rel``, refused when a symbolic link leads it out of the data set folder ``d``."""
    p = d / rel
    if not _inside(d, p):
        raise FileFormatError(f"{str(p)!r} is a symbolic link leading out of the data set folder {str(d)!r}; "
                              "medrecon does not follow it (put the file itself there)")
    return p


def presence(m: dict, root: str | os.PathLike | None = None) -> str:
    """``"yes"`` (every file there with the right size), ``"partial"``, or ``"no"``; ``"refused"`` when
    a symbolic link leads out of the root or out of the data set folder (nothing is read there)."""
    try:
        d = _checked_dir(m["name"], root)
        if not d.is_dir():
            return "no"
        paths = [(_checked_file(d, f["path"]), f["bytes"]) for f in m["files"]]
    except FileFormatError:
        return "refused"
    n_ok = sum(1 for p, size in paths if p.is_file() and p.stat().st_size == size)
    return "yes" if n_ok == len(m["files"]) else ("partial" if n_ok or any(d.iterdir()) else "no")


def verify(name: str, root: str | os.PathLike | None = None,
           manifest_dir: str | os.PathLike | None = None) -> dict:
    """sha256 of every file of data set ``name`` under ``root/name`` against its manifest.

    Returns ``{"folder", "ok": [...], "missing": [...], "mismatch": [(path, why)], "extra": [...]}``
    (``extra``: files in the folder the manifest does not list; informative only).
    """
    m = get_manifest(name, manifest_dir)
    d = _checked_dir(name, root)
    if not d.is_dir():
        raise FileFormatError(f"dataset {name!r} is not present: no folder {str(d)!r} "
                              f"(set --root or $MEDRECON_DATA)")
    report: dict[str, Any] = {"folder": str(d), "ok": [], "missing": [], "mismatch": [], "extra": []}
    for f in m["files"]:
        p = _checked_file(d, f["path"])
        if not p.is_file():
            report["missing"].append(f["path"])
            continue
        size = p.stat().st_size
        if size != f["bytes"]:
            report["mismatch"].append((f["path"], f"{size} bytes, expected {f['bytes']}"))
            continue
        digest = sha256_file(p)
        if digest != f["sha256"]:
            report["mismatch"].append((f["path"], f"sha256 {digest[:12]}..., expected {f['sha256'][:12]}..."))
        else:
            report["ok"].append(f["path"])
    listed = {f["path"] for f in m["files"]}
    found = []
    for dirpath, _, filenames in os.walk(d):  # links to folders are not followed
        for fn in filenames:
            p = Path(dirpath) / fn
            if not p.is_symlink() and p.is_file():
                found.append(p.relative_to(d).as_posix())
    report["extra"] = sorted(f for f in found if f not in listed)
    return report


def _file_url(m: dict, f: dict) -> str | None:
    if f.get("url"):
        return str(f["url"])
    dl = m.get("download") or {}
    base = dl.get("base_url") if isinstance(dl, dict) else None
    return (base.rstrip("/") + "/" + f["path"]) if base else None


def _local_downloader(url: str, output_file, pooch_obj) -> None:
    """pooch downloader for ``file://`` URLs (local mirrors, offline tests)."""
    from urllib.parse import unquote, urlparse
    from urllib.request import url2pathname

    src = Path(url2pathname(unquote(urlparse(url).path)))
    if not src.is_file():
        raise FileNotFoundError(f"no file at {url}")
    if hasattr(output_file, "write"):
        with open(src, "rb") as fh:
            shutil.copyfileobj(fh, output_file)
    else:
        shutil.copyfile(src, output_file)


def fetch(name: str, dest: str | os.PathLike, manifest_dir: str | os.PathLike | None = None,
          progressbar: bool = False) -> Path:
    """Download every file of data set ``name`` into ``dest/name`` through pooch, checking sha256.

    Files already there with the right hash are kept (pooch does not download them again).
    Data sets without a download URL (all shipped manifests: they are local-only or have
    no direct file URLs) raise :class:`InputError` saying where to get them.
    """
    from medrecon.errors import require

    m = get_manifest(name, manifest_dir)
    urls = [_file_url(m, f) for f in m["files"]]
    if not all(urls):
        how = m.get("how_to_get") or f"see {m.get('source_url') or m.get('doi')}"
        extra = " (local evaluation only: no redistribution)" if m.get("local_evaluation_only") else ""
        raise InputError(f"dataset {name!r} has no download URL{extra}; {how}, into "
                         f"{str(Path(dest) / name)!r}")
    pooch = require("pooch", "core")
    out = _checked_dir(name, dest)
    for f, url in zip(m["files"], urls, strict=True):
        target = _checked_file(out, f["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target = _checked_file(out, f["path"])  # again: no link put in place meanwhile
        downloader = _local_downloader if url.startswith("file:") else None
        try:
            pooch.retrieve(url, known_hash=f"sha256:{f['sha256']}", fname=target.name, path=target.parent,
                           downloader=downloader, progressbar=progressbar)
        except ValueError as exc:  # pooch: hash mismatch (the partial file is removed)
            raise FileFormatError(f"{f['path']} of dataset {name!r} from {url} failed its sha256 check: "
                                  f"{str(exc).splitlines()[0]}") from None
        except (OSError, RuntimeError) as exc:
            raise FileFormatError(f"could not download {url} ({type(exc).__name__}: {exc})") from None
    return out


def sync_package_manifests() -> list[Path]:
    """Copy ``data_manifests/*.json`` to ``medrecon/data/manifests`` (developer helper)."""
    src = source_manifest_dir()
    if src is None:
        raise FileFormatError("no data_manifests/ folder: not a source tree")
    dst = package_manifest_dir()
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(src.glob("*.json")):
        shutil.copyfile(p, dst / p.name)
        out.append(dst / p.name)
    return out


if __name__ == "__main__":  # pragma: no cover
    for p in sync_package_manifests():
        print(f"copied {p}")
