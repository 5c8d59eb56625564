"""The priors shipped with medrecon (entry points ``ct-default`` and ``mr-default``).

Each entry point is a zero-argument function returning the prior's folder
(``config.json`` + ``weights.safetensors``) inside this package.
"""

from __future__ import annotations

from pathlib import Path

from medrecon.errors import FileFormatError

HERE = Path(__file__).resolve().parent


def _folder(name: str) -> Path:
    folder = HERE / name
    if not (folder / "config.json").is_file() or not (folder / "weights.safetensors").is_file():
        raise FileFormatError(
            f"the shipped prior {name!r} is not present in this installation ({folder}); "
            "train one with 'medrecon train-prior' and load it by path"
        )
    return folder


def ct_default() -> Path:
    """Folder of the default CT prior (abdomen CT, HU window [-1000, 2000] -> [-1, 1])."""
    return _folder("ct-default")


def mr_default() -> Path:
    """Folder of the default MR prior (T1 head MR, per-volume p0.5/p99.5 -> [-1, 1])."""
    return _folder("mr-default")


BY_NAME = {"ct-default": ct_default, "mr-default": mr_default}
