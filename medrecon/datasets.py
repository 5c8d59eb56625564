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
import shutil
from pathlib import Path
from typing import Any

from medrecon.errors import FileFormatError, InputError

__all__ = ["SCHEMA", "REQUIRED_KEYS", "list_manifests", "get_manifest", "default_root", "dataset_dir",
           "verify", "fetch", "sha256_file", "sha256_file_cached", "package_manifest_dir", "source_manifest_dir",
           "sync_package_manifests", "validate_manifest", "presence"]

SCHEMA = "medrecon-dataset/1"
REQUIRED_KEYS = ("name", "title", "modality", "licence", "citation", "redistribution", "shape",
                 "spacing_mm", "files")
_REPO = Path(__file__).resolve().parent.parent


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


def validate_manifest(m: Any, where: str = "manifest") -> dict:
    """Check the keys and the ``files`` list; raise :class:`FileFormatError` otherwise."""
    if not isinstance(m, dict):
        raise FileFormatError(f"{where} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise FileFormatError(f"{where} lacks the key(s) {', '.join(missing)}")
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
        p = Path(f["path"])
        if p.is_absolute() or ".." in p.parts:
            raise FileFormatError(f"{where}: file paths must be relative and inside the data set, got {f['path']!r}")
    return m


def _manifest_dirs(manifest_dir: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if manifest_dir is not None:
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


def get_manifest(name: str, manifest_dir: str | os.PathLike | None = None) -> dict:
    ms = {m["name"]: m for m in list_manifests(manifest_dir)}
    if name not in ms:
        raise InputError(f"no dataset named {name!r}; known: {', '.join(ms) or 'none'}")
    return ms[name]


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    return Path(root if root is not None else default_root()) / name


def presence(m: dict, root: str | os.PathLike | None = None) -> str:
    """``"yes"`` (every file there with the right size), ``"partial"``, or ``"no"``."""
    d = dataset_dir(m["name"], root)
    if not d.is_dir():
        return "no"
    n_ok = sum(1 for f in m["files"] if (d / f["path"]).is_file() and (d / f["path"]).stat().st_size == f["bytes"])
    return "yes" if n_ok == len(m["files"]) else ("partial" if n_ok or any(d.iterdir()) else "no")


def verify(name: str, root: str | os.PathLike | None = None,
           manifest_dir: str | os.PathLike | None = None) -> dict:
    """sha256 of every file of data set ``name`` under ``root/name`` against its manifest.

    Returns ``{"folder", "ok": [...], "missing": [...], "mismatch": [(path, why)], "extra": [...]}``
    (``extra``: files in the folder the manifest does not list; informative only).
    """
    m = get_manifest(name, manifest_dir)
    d = dataset_dir(name, root)
    if not d.is_dir():
        raise FileFormatError(f"dataset {name!r} is not present: no folder {str(d)!r} "
                              f"(set --root or $MEDRECON_DATA)")
    report: dict[str, Any] = {"folder": str(d), "ok": [], "missing": [], "mismatch": [], "extra": []}
    for f in m["files"]:
        p = d / f["path"]
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
    report["extra"] = sorted(p.relative_to(d).as_posix() for p in d.rglob("*")
                             if p.is_file() and p.relative_to(d).as_posix() not in listed)
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
    out = Path(dest) / name
    for f, url in zip(m["files"], urls, strict=True):
        target = out / f["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
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
