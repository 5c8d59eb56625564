"""A prior is what its config.json says it is: the weights file it names, that file's SHA-256,
and finite weights.

:meth:`medrecon.priors.model.DiffusionPrior.load` calls :func:`weights_path`,
:func:`verified_digest` and :func:`nonfinite_tensor` before it builds a network; the digest it
verified (the SHA-256 of the file's bytes, never the config's claim alone) is what the engine's
prior fingerprint (:func:`medrecon.engine.settings.prior_fingerprint`) hashes, so a weights file
replaced under a stopped run changes the run's settings hash and ``--resume`` is refused.
Training (:mod:`medrecon.priors.train`) and :meth:`~medrecon.priors.model.DiffusionPrior.save`
use :func:`nonfinite_tensor` to write no prior and no checkpoint with NaN or infinite weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from medrecon.datasets import sha256_file_cached
from medrecon.errors import FileFormatError

__all__ = ["weights_name_problem", "weights_path", "verified_digest", "nonfinite_tensor"]


def weights_name_problem(name) -> str | None:
    """Why ``name`` (config.json ``weights.file``) is not a plain file name, or None when it is.

    A plain name has no path separator (``/`` or ``\\``), is not absolute, is not ``.`` or ``..``
    and holds no NUL byte: the file can only be looked up inside the prior folder.
    """
    if not isinstance(name, str) or not name:
        return f"'weights.file' must be a file name, got {name!r}"
    if "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or Path(name).is_absolute():
        return f"'weights.file' must be a plain file name inside the prior folder, got {name!r}"
    return None


def weights_path(folder: Path, name: str) -> Path:
    """The weights file ``name`` of the prior in ``folder``, which must exist and, once symbolic
    links are resolved, lie inside ``folder``; a :class:`FileFormatError` (one sentence) otherwise.

    ``name`` is assumed checked by :func:`weights_name_problem` (``validate_config`` does it).
    """
    path = folder / name
    if not path.is_file():
        raise FileFormatError(f"prior {str(folder)!r} has no weights file {name!r}")
    real, root = path.resolve(), folder.resolve()
    if not real.is_relative_to(root):
        raise FileFormatError(
            f"weights file {str(path)!r} links to {str(real)!r}, outside the prior folder {str(root)!r}, "
            "so the prior is refused")
    return path


def verified_digest(path: Path, claimed) -> str:
    """The SHA-256 (64 hex digits) of the file at ``path``; a :class:`FileFormatError` naming both
    digests when ``claimed`` (config.json ``weights.sha256``; None: nothing claimed) differs.

    The digest is cached per process by (path, size, mtime, ctime, inode)
    (:func:`medrecon.datasets.sha256_file_cached`): a replaced or rewritten file is hashed again.
    """
    actual = sha256_file_cached(path)
    if claimed is not None and str(claimed).strip().lower() != actual:
        raise FileFormatError(
            f"weights file {str(path)!r} has SHA-256 {actual}, but its config.json records {claimed}, "
            "so the file was replaced or damaged and the prior is refused")
    return actual


def nonfinite_tensor(tensors: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or +-inf, or None when all are finite."""
    items = tensors.items() if isinstance(tensors, dict) else tensors
    for key, value in items:
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            return key
    return None
