"""A prior's config.json: its format, the network presets, the defaults of a new prior
(:func:`default_config`) and the check of a config read from disk (:func:`validate_config`).

The config holds everything but the weights: network (MONAI DiffusionModelUNet widths),
schedule, prediction, intensity map (physical units <-> network range, :mod:`medrecon.priors.intensity`),
padding, pixel size, training record, provenance, recommended sampler settings, fit reference and
the calibration of the posterior draws' spread (``uncertainty_calibration``, :mod:`medrecon.uncertainty`).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from medrecon.errors import FileFormatError, InputError
from medrecon.priors.intensity import default_intensity, intensity_problem
from medrecon.priors.schedule import SCHEDULES

__all__ = ["FORMAT", "FORMAT_VERSION", "CONFIG_NAME", "WEIGHTS_NAME", "MODALITIES", "PREDICTIONS", "PRESETS",
           "DEFAULT_PRESET", "CT_WINDOW", "MR_PERCENTILES", "default_config", "validate_config"]

FORMAT = "medrecon-prior"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
MODALITIES = ("ct", "mr", "us")
PREDICTIONS = ("epsilon", "v")

#: Network width presets (MONAI DiffusionModelUNet, 2D, 1 channel in/out, attention at the two
#: lowest resolutions).  Parameter counts measured with monai 1.6.1.
PRESETS: dict[str, dict[str, Any]] = {
    # ~0.10M: tests only
    "tiny": dict(channels=[8, 16, 16, 16], attention_levels=[False, False, False, True],
                 num_res_blocks=1, num_head_channels=8, norm_num_groups=8),
    # ~1.1M
    "xs": dict(channels=[16, 32, 64, 64], attention_levels=[False, False, True, True],
               num_res_blocks=1, num_head_channels=16, norm_num_groups=16),
    # ~4.5M, 9.1 MB in float16: the shipped priors
    "small": dict(channels=[32, 64, 128, 128], attention_levels=[False, False, True, True],
                  num_res_blocks=1, num_head_channels=32, norm_num_groups=32),
    # ~6.7M
    "medium": dict(channels=[32, 64, 128, 128], attention_levels=[False, False, True, True],
                   num_res_blocks=2, num_head_channels=32, norm_num_groups=32),
}
DEFAULT_PRESET = "small"

#: CT window mapped linearly onto [-1, 1] (the pancreas CT spans -1000..1988 HU).
CT_WINDOW = (-1000.0, 2000.0)
#: MR percentiles (of the whole volume) mapped onto [-1, 1].
MR_PERCENTILES = (0.5, 99.5)


def default_config(
    modality: str = "ct",
    image_size: int = 128,
    pixel_size_mm: float | None = None,
    preset: str = DEFAULT_PRESET,
    schedule: str = "linear",
    prediction: str = "epsilon",
    num_timesteps: int = 1000,
) -> dict[str, Any]:
    """A complete, valid config.json dict.

    ``intensity`` is ``{"kind": "window", "lo": -1000, "hi": 2000}`` for CT: x_net = 2 (x - lo)/(hi - lo) - 1.
    For MR it is ``{"kind": "percentile", "p_lo": 0.5, "p_hi": 99.5}``: lo and hi are the
    volume's own percentiles, supplied with the data (:meth:`DiffusionPrior.with_intensity`).
    Other modalities take the ``default()`` of the registered intensity kind that declares them
    (:func:`medrecon.priors.intensity.default_intensity`): for ultrasound (beamformed RF, plugin
    kind ``mulaw``) ``{"kind": "mulaw", "mu": 255, "p_scale": 99.9}``: x_net = C(x / s) with the
    mu-law C and s the p_scale percentile of |x| over the data, supplied with it as lo = -s, hi = s.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown network preset {preset!r}; use one of {', '.join(PRESETS)}")
    if modality == "ct":
        intensity = {"kind": "window", "lo": CT_WINDOW[0], "hi": CT_WINDOW[1], "units": "HU"}
    elif modality == "mr":
        intensity = {"kind": "percentile", "p_lo": MR_PERCENTILES[0], "p_hi": MR_PERCENTILES[1],
                     "units": "arbitrary"}
    else:
        intensity = default_intensity(modality) if modality in MODALITIES else None
        if intensity is None:
            raise InputError(f"unknown modality {modality!r}; use {', '.join(MODALITIES[:-1])} or {MODALITIES[-1]}"
                             if modality not in MODALITIES else
                             f"no intensity kind is registered for modality {modality!r}; install its plugin")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "modality": modality,
        "image_size": int(image_size),
        "pixel_size_mm": None if pixel_size_mm is None else float(pixel_size_mm),
        "network": {"type": "monai.DiffusionModelUNet", "preset": preset, **copy.deepcopy(PRESETS[preset])},
        "schedule": {"kind": schedule, "num_timesteps": int(num_timesteps), "beta_start": 1e-4, "beta_end": 0.02},
        "prediction": prediction,
        "intensity": intensity,
        "padding": "reflect",
        "weights": {"file": WEIGHTS_NAME, "dtype": "float32", "ema": True},
        "training": {},
    }


def validate_config(cfg: Any, where: str = "config") -> dict[str, Any]:
    """Check a config dict; raise a one-sentence :class:`FileFormatError` naming the problem."""
    def bad(msg: str):
        raise FileFormatError(f"{where} is not a valid medrecon prior config: {msg}")

    if not isinstance(cfg, dict):
        bad("it is not a JSON object")
    if cfg.get("format") != FORMAT:
        bad(f"'format' is {cfg.get('format')!r}, expected {FORMAT!r}")
    version = cfg.get("format_version", -1)
    if not _is_int(version):
        bad(f"'format_version' must be an integer, got {version!r}")
    if int(version) > FORMAT_VERSION:
        bad(f"format_version {version} is newer than this medrecon reads ({FORMAT_VERSION})")
    if cfg.get("modality") not in MODALITIES:
        bad(f"modality {cfg.get('modality')!r} is not one of {', '.join(MODALITIES)}")
    net = cfg.get("network")
    if not isinstance(net, dict) or not isinstance(net.get("channels"), list) or not net["channels"]:
        bad("'network.channels' is missing")
    if not isinstance(net.get("attention_levels", []), list) or len(net.get("attention_levels", [])) != len(net["channels"]):
        bad("'network.attention_levels' and 'network.channels' differ in length")
    sch = cfg.get("schedule")
    if not isinstance(sch, dict) or sch.get("kind") not in SCHEDULES:
        bad(f"'schedule.kind' must be one of {', '.join(SCHEDULES)}")
    problem = _numbers_problem(cfg)
    if problem:
        bad(problem)
    if cfg.get("prediction", "epsilon") not in PREDICTIONS:
        bad(f"'prediction' must be one of {', '.join(PREDICTIONS)}")
    problem = intensity_problem(cfg.get("intensity"))
    if problem:
        bad(problem)
    if cfg.get("padding", "reflect") not in ("reflect", "zeros"):
        bad("'padding' must be reflect or zeros")
    problem = _weights_problem(cfg.get("weights", {}))
    if problem:
        bad(problem)
    if "recommended" in cfg:
        from medrecon.priors.recommended import validate_recommended

        validate_recommended(cfg["recommended"], where, sch.get("num_timesteps"))
    if "uncertainty_calibration" in cfg:
        from medrecon.uncertainty import validate_calibration

        validate_calibration(cfg["uncertainty_calibration"], where)
    return cfg


def _weights_problem(weights: Any) -> str | None:
    """What is wrong with the ``weights`` section (``file`` a plain name inside the prior folder,
    ``sha256`` absent or 64 hex digits), or None."""
    from medrecon.priors.integrity import weights_name_problem

    if not isinstance(weights, dict):
        return "'weights' must be a JSON object"
    problem = weights_name_problem(weights.get("file", WEIGHTS_NAME))
    if problem:
        return problem
    sha = weights.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                and all(c in "0123456789abcdefABCDEF" for c in sha)):
        return f"'weights.sha256' must be 64 hex digits, got {sha!r}"
    return None


#: the most diffusion timesteps a config may ask for (abar_t is a float64 (T,) vector)
MAX_TIMESTEPS = 100_000


def _is_int(v: Any) -> bool:
    """Whether ``v`` is an integer (a JSON integer, or a float with an integral value), not a bool."""
    return not isinstance(v, bool) and (isinstance(v, int) or (isinstance(v, float) and v.is_integer()))


def _is_finite(v: Any) -> bool:
    """Whether ``v`` is a finite real number, not a bool."""
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


def _numbers_problem(cfg: dict) -> str | None:
    """What is wrong with the numbers the prior is built from, or None: ``image_size`` an integer
    >= 1; ``pixel_size_mm`` None or finite > 0 (mm); ``network.channels`` integers >= 1;
    ``schedule.num_timesteps`` T an integer in 2..MAX_TIMESTEPS; ``beta_start``, ``beta_end``
    finite with 0 < beta_start <= beta_end < 1 (the linear schedule's beta_t range)."""
    size = cfg.get("image_size")
    if not _is_int(size) or size < 1:
        return f"'image_size' must be an integer >= 1, got {size!r}"
    px = cfg.get("pixel_size_mm")
    if px is not None and not (_is_finite(px) and px > 0):
        return f"'pixel_size_mm' must be a finite number > 0 (mm) or null, got {px!r}"
    channels = cfg["network"]["channels"]
    if not all(_is_int(c) and c >= 1 for c in channels):
        return f"'network.channels' must be integers >= 1, got {channels!r}"
    sch = cfg["schedule"]
    steps = sch.get("num_timesteps")
    if not _is_int(steps) or not 2 <= steps <= MAX_TIMESTEPS:
        return f"'schedule.num_timesteps' must be an integer from 2 to {MAX_TIMESTEPS}, got {steps!r}"
    b0, b1 = sch.get("beta_start", 1e-4), sch.get("beta_end", 0.02)
    if not (_is_finite(b0) and _is_finite(b1) and 0 < b0 <= b1 < 1):
        return f"'schedule.beta_start' and 'beta_end' must be finite with 0 < start <= end < 1, got {b0!r} and {b1!r}"
    return None
