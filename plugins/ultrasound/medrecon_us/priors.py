"""The ultrasound priors shipped with the plugin (entry points ``us-tissue`` and ``us-haze``).

Each entry point is a zero-argument function returning the prior's folder (``config.json`` +
``weights.safetensors`` + ``train_report.json`` + ``samples.png``) inside this package, so
``--prior us-tissue`` and the ``dehaze`` sampler's ``haze_prior=us-haze`` find them.

Both are small MONAI diffusion UNets (preset ``xs``) trained on simulated beamformed RF
(:mod:`medrecon_us.simulate`): speckle from random scatterers through ``us.planewave`` and
delay-and-sum (tissue), and depth-decaying, laterally broad clutter in the RF band (haze);
intensity: robust RF scale then mu-law (mu = 255).  Their ``config.json`` records the
commands that reproduce them (``provenance.reproduce``); docs/dehazing.md explains how to
retrain on your own scanner data.
"""

from __future__ import annotations

from pathlib import Path

from medrecon.errors import FileFormatError

HERE = Path(__file__).resolve().parent / "shipped"

__all__ = ["haze_prior_folder", "tissue_prior_folder"]


def _folder(name: str) -> Path:
    folder = HERE / name
    if not (folder / "config.json").is_file() or not (folder / "weights.safetensors").is_file():
        raise FileFormatError(
            f"the shipped ultrasound prior {name!r} is not present in this installation ({folder}); "
            "train one with 'medrecon train-prior' (docs/dehazing.md) and load it by path"
        )
    return folder


def tissue_prior_folder() -> Path:
    """Folder of ``us-tissue``: speckle + inclusions + point targets, beamformed RF, mu-law."""
    return _folder("us-tissue")


def haze_prior_folder() -> Path:
    """Folder of ``us-haze``: reverberation-like haze on the beamformed RF grid, mu-law."""
    return _folder("us-haze")
