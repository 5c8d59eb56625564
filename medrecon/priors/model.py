"""The trained diffusion prior over 2D slices: network, schedule, intensity transform, storage.

A prior is a folder::

    config.json          everything but the weights (see :func:`default_config`)
    weights.safetensors  EMA weights of MONAI's DiffusionModelUNet (float16 or float32)

:class:`DiffusionPrior` satisfies :class:`medrecon.priors.protocol.PriorProtocol`.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medrecon.datasets import sha256_file
from medrecon.errors import FileFormatError, InputError
from medrecon.priors.schedule import SCHEDULES, make_schedule

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
#: Ultrasound: percentile of |x| (beamformed RF) used as the robust scale s, then mu-law (mu = 255).
US_SCALE_PERCENTILE = 99.9
#: Intensity kinds whose map needs the data (a volume's percentiles, an RF scale) before use.
BOUND_KINDS = ("percentile", "mulaw")


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
    For ultrasound (beamformed RF) it is ``{"kind": "mulaw", "mu": 255, "p_scale": 99.9}``:
    x_net = C(x / s) with the mu-law C (:mod:`medrecon.priors.intensity`) and s the p_scale
    percentile of |x| over the data, supplied with it as lo = -s, hi = s.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown network preset {preset!r}; use one of {', '.join(PRESETS)}")
    if modality == "ct":
        intensity = {"kind": "window", "lo": CT_WINDOW[0], "hi": CT_WINDOW[1], "units": "HU"}
    elif modality == "mr":
        intensity = {"kind": "percentile", "p_lo": MR_PERCENTILES[0], "p_hi": MR_PERCENTILES[1],
                     "units": "arbitrary"}
    elif modality == "us":
        from medrecon.priors.intensity import MU

        intensity = {"kind": "mulaw", "mu": MU, "p_scale": US_SCALE_PERCENTILE, "units": "arbitrary"}
    else:
        raise InputError(f"unknown modality {modality!r}; use ct, mr or us")
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
    if int(cfg.get("format_version", -1)) > FORMAT_VERSION:
        bad(f"format_version {cfg.get('format_version')} is newer than this medrecon reads ({FORMAT_VERSION})")
    if cfg.get("modality") not in MODALITIES:
        bad(f"modality {cfg.get('modality')!r} is not one of {', '.join(MODALITIES)}")
    net = cfg.get("network")
    if not isinstance(net, dict) or not isinstance(net.get("channels"), list) or not net["channels"]:
        bad("'network.channels' is missing")
    if len(net.get("attention_levels", [])) != len(net["channels"]):
        bad("'network.attention_levels' and 'network.channels' differ in length")
    sch = cfg.get("schedule")
    if not isinstance(sch, dict) or sch.get("kind") not in SCHEDULES:
        bad(f"'schedule.kind' must be one of {', '.join(SCHEDULES)}")
    if cfg.get("prediction", "epsilon") not in PREDICTIONS:
        bad(f"'prediction' must be one of {', '.join(PREDICTIONS)}")
    inten = cfg.get("intensity")
    if not isinstance(inten, dict) or inten.get("kind") not in ("window", *BOUND_KINDS):
        bad("'intensity.kind' must be window, percentile or mulaw")
    if inten["kind"] == "mulaw" and not float(inten.get("mu", 0)) > 0:
        bad("'intensity' mulaw needs mu > 0")
    if inten["kind"] == "window" and not float(inten.get("hi", 0)) > float(inten.get("lo", 0)):
        bad("'intensity' window needs hi > lo")
    if cfg.get("padding", "reflect") not in ("reflect", "zeros"):
        bad("'padding' must be reflect or zeros")
    if "recommended" in cfg:
        from medrecon.priors.recommended import validate_recommended

        validate_recommended(cfg["recommended"], where, sch.get("num_timesteps"))
    return cfg


def build_unet(net_cfg: dict[str, Any], flash: bool = True) -> torch.nn.Module:
    """MONAI's 2D DiffusionModelUNet (1 channel in/out) from the config's ``network`` section.

    ``use_flash_attention=True`` routes attention through torch's scaled_dot_product_attention
    (flash / memory-efficient kernels on CUDA), so memory stays linear in the token count.
    """
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(net_cfg["channels"]),
        attention_levels=tuple(bool(a) for a in net_cfg["attention_levels"]),
        num_res_blocks=net_cfg.get("num_res_blocks", 1),
        num_head_channels=net_cfg.get("num_head_channels", 32),
        norm_num_groups=net_cfg.get("norm_num_groups", 32),
        use_flash_attention=flash,
    )


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class DiffusionPrior(torch.nn.Module):
    """A diffusion prior over 2D slices (MONAI DiffusionModelUNet + VP schedule + intensity map).

    Members (the sampler contract, :class:`~medrecon.priors.protocol.PriorProtocol`):

    - ``alphas_cumprod``: float64 (T,) abar_t on the prior's device.
    - ``num_timesteps``: T.
    - ``eps(x_t, t)``: predicted noise, x_t (B, 1, H, W) any H, W (reflect-padded to a multiple
      of :attr:`downsample_factor` and cropped back), t (B,) or scalar int.  With v prediction
      eps = sqrt(abar) v + sqrt(1 - abar) x_t.
    - ``to_net(x_phys)`` / ``from_net(x_net)``: x_net = 2 (x - lo)/(hi - lo) - 1, elementwise.
      ``scale`` = (hi - lo)/2 and ``offset`` = (hi + lo)/2 give x_phys = scale x_net + offset.
      Ultrasound priors (intensity kind ``mulaw``) compand after the affine map:
      x_net = C(2 (x - lo)/(hi - lo) - 1) with the mu-law C; exact inverses, not affine.

    Also: ``config`` (dict), ``modality``, ``image_size``, ``pixel_size_mm``, ``net`` (the UNet),
    ``autocast`` (bf16 autocast of the network on CUDA; default True), ``x0(x_t, t)`` (Tweedie),
    ``with_intensity(lo, hi)`` / ``for_volume(array)`` (MR: bind the volume's percentiles),
    ``check_pixel_size(mm)``, ``save(folder, dtype)``, :meth:`load`.
    """

    def __init__(self, config: dict[str, Any], net: torch.nn.Module | None = None, flash: bool = True):
        super().__init__()
        self.config = validate_config(copy.deepcopy(config))
        self.net = net if net is not None else build_unet(self.config["network"], flash=flash)
        sch = self.config["schedule"]
        abar = make_schedule(sch["kind"], int(sch["num_timesteps"]), sch.get("beta_start", 1e-4),
                             sch.get("beta_end", 0.02))
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.autocast = True
        inten = self.config["intensity"]
        self._lo = inten.get("lo")
        self._hi = inten.get("hi")

    # -- properties -------------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def modality(self) -> str:
        return self.config["modality"]

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def pixel_size_mm(self) -> float | None:
        return self.config.get("pixel_size_mm")

    @property
    def prediction(self) -> str:
        return self.config.get("prediction", "epsilon")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config["network"]["channels"]) - 1)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    # -- intensity --------------------------------------------------------------------------
    def with_intensity(self, lo, hi) -> DiffusionPrior:
        """A shallow copy whose intensity map uses ``lo``/``hi`` (floats, or (B,) tensors per slice).

        For MR priors lo, hi are the volume's p0.5 and p99.5 percentiles (see :meth:`for_volume`);
        for ultrasound priors lo = -s, hi = s with s the robust RF scale.
        The network and buffers are shared with ``self``.
        """
        other = copy.copy(self)
        other._lo, other._hi = lo, hi
        return other

    def for_volume(self, volume) -> DiffusionPrior:
        """Bind the intensity map to a volume (array or Volume): MR uses its p_lo/p_hi percentiles,
        ultrasound (``mulaw``) the scale s = p_scale percentile of |x| (lo = -s, hi = s).

        A Volume's in-plane spacing is checked against the training pixel size (a warning when far).
        """
        spacing = getattr(volume, "spacing", None)
        if spacing is not None and len(spacing) == 3:
            self.check_pixel_size(float(min(spacing[1], spacing[2])))
        if self.config["intensity"]["kind"] == "window":
            return self
        import numpy as np

        data = getattr(volume, "data", volume)
        data = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        inten = self.config["intensity"]
        if inten["kind"] == "mulaw":
            s = float(np.percentile(np.abs(data.astype(np.float32)), inten.get("p_scale", US_SCALE_PERCENTILE)))
            if not s > 0:
                raise InputError("the ultrasound data are all zero; there is no RF scale to normalise by")
            return self.with_intensity(-s, s)
        lo, hi = np.percentile(data.astype(np.float32), [inten["p_lo"], inten["p_hi"]])
        return self.with_intensity(float(lo), float(hi))

    def _lohi(self, like: torch.Tensor):
        if self._lo is None or self._hi is None:
            raise InputError(
                f"this {self.modality.upper()} prior needs the data's intensity range (percentiles or RF "
                "scale); call prior.for_volume(volume) or prior.with_intensity(lo, hi) first"
            )
        lo = torch.as_tensor(self._lo, dtype=like.dtype, device=like.device)
        hi = torch.as_tensor(self._hi, dtype=like.dtype, device=like.device)
        if lo.ndim == 1:
            lo = lo.view(-1, *([1] * (like.ndim - 1)))
            hi = hi.view(-1, *([1] * (like.ndim - 1)))
        return lo, hi

    @property
    def scale(self):
        lo, hi = self._lohi(torch.zeros(()))
        return (hi - lo) / 2

    @property
    def offset(self):
        lo, hi = self._lohi(torch.zeros(()))
        return (hi + lo) / 2

    @property
    def _mu(self) -> float | None:
        inten = self.config["intensity"]
        return float(inten["mu"]) if inten["kind"] == "mulaw" else None

    def to_net(self, x_phys: torch.Tensor) -> torch.Tensor:
        """Physical units -> network range: 2 (x - lo)/(hi - lo) - 1 (then mu-law for ``mulaw``)."""
        lo, hi = self._lohi(x_phys)
        v = 2 * (x_phys - lo) / (hi - lo) - 1
        if self._mu is not None:
            from medrecon.priors.intensity import mulaw

            v = mulaw(v, self._mu)
        return v

    def from_net(self, x_net: torch.Tensor) -> torch.Tensor:
        """Network range -> physical units: lo + (x + 1)(hi - lo)/2 (after mu-law expansion for ``mulaw``)."""
        lo, hi = self._lohi(x_net)
        if self._mu is not None:
            from medrecon.priors.intensity import mulaw_inv

            x_net = mulaw_inv(x_net, self._mu)
        return lo + (x_net + 1) * (hi - lo) / 2

    # -- network ----------------------------------------------------------------------------
    def check_pixel_size(self, pixel_size_mm: float | None, tolerance: float = 0.25) -> bool:
        """Warn (``warnings.warn``) when ``pixel_size_mm`` differs from training by more than 25%."""
        train = self.pixel_size_mm
        if pixel_size_mm is None or not train:
            return True
        if abs(math.log(float(pixel_size_mm) / float(train))) > math.log1p(tolerance):
            warnings.warn(
                f"pixel size {float(pixel_size_mm):.3g} mm is far from the prior's training pixel size "
                f"{float(train):.3g} mm; resample the images or expect a weaker prior",
                stacklevel=2,
            )
            return False
        return True

    def _pad(self, x: torch.Tensor):
        m = self.downsample_factor
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph == 0 and pw == 0:
            return x, None
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # left, right, top, bottom
        mode = "reflect" if self.config.get("padding", "reflect") == "reflect" else "constant"
        if mode == "reflect" and (max(pad[0], pad[1]) >= w or max(pad[2], pad[3]) >= h):
            mode = "replicate"  # reflect needs pad < size (tiny images)
        return F.pad(x, pad, mode=mode), (pad[2], pad[2] + h, pad[0], pad[0] + w)

    def net_output(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Raw network output (eps or v) on a grid of any size (pad, run, crop)."""
        xp, crop = self._pad(x)
        use_ac = self.autocast and xp.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_ac):
            out = self.net(xp, t)
        out = out.to(x.dtype)
        if crop is not None:
            out = out[..., crop[0]:crop[1], crop[2]:crop[3]]
        return out

    def _t(self, t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return t.long()

    def eps(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Predicted noise for x_t (B, 1, H, W), any H, W, at integer steps t ((B,) or scalar)."""
        if x_t.ndim != 4 or x_t.shape[1] != 1:
            raise InputError(f"x_t must be shaped (B, 1, H, W), got {tuple(x_t.shape)}")
        t = self._t(t, x_t)
        out = self.net_output(x_t, t)
        if self.prediction == "v":
            a = self.alphas_cumprod[t].to(x_t.dtype).view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * x_t
        return out

    def x0(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Tweedie estimate of the clean image (network range)."""
        t = self._t(t, x_t)
        a = self.alphas_cumprod[t].to(x_t.dtype).view(-1, 1, 1, 1)
        return (x_t - (1 - a).sqrt() * self.eps(x_t, t)) / a.sqrt()

    def forward(self, x_t: torch.Tensor, t) -> torch.Tensor:
        return self.eps(x_t, t)

    # -- storage ----------------------------------------------------------------------------
    def save(self, folder, dtype: str = "float16", extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``weights.safetensors`` (dtype float16 or float32) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tdt = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        sd = {k: v.detach().to("cpu", tdt).contiguous() for k, v in self.net.state_dict().items()}
        wpath = folder / WEIGHTS_NAME
        save_file(sd, str(wpath), metadata={"format": FORMAT, "dtype": dtype})
        wpath.chmod(0o644)
        cfg = copy.deepcopy(self.config)
        cfg["weights"] = {"file": WEIGHTS_NAME, "dtype": dtype, "ema": cfg.get("weights", {}).get("ema", True),
                          "sha256": sha256_file(wpath), "parameters": count_parameters(self.net)}
        if extra:
            cfg.update(extra)
        (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        self.config = cfg
        return folder

    @classmethod
    def load(cls, folder, device=None, modality: str | None = None, flash: bool = True) -> DiffusionPrior:
        """Read a prior folder; weights are cast to float32 on ``device`` (cpu by default).

        ``modality`` ('ct'/'mr'/'us'), if given, must match the prior's.  Errors are one sentence.
        """
        folder = Path(folder)
        cfg_path = folder / CONFIG_NAME
        if not folder.is_dir():
            raise FileFormatError(f"prior folder {str(folder)!r} does not exist")
        if not cfg_path.is_file():
            raise FileFormatError(f"{str(folder)!r} is not a medrecon prior (no {CONFIG_NAME})")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FileFormatError(f"{str(cfg_path)!r} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from exc
        validate_config(cfg, where=str(cfg_path))
        if modality is not None and cfg["modality"] != modality:
            raise InputError(
                f"prior {str(folder)!r} is a {cfg['modality'].upper()} prior, but a {modality.upper()} prior was asked for"
            )
        wfile = folder / cfg.get("weights", {}).get("file", WEIGHTS_NAME)
        if not wfile.is_file():
            raise FileFormatError(f"prior {str(folder)!r} has no weights file {wfile.name!r}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(wfile))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise FileFormatError(f"weights file {str(wfile)!r} is corrupt or not safetensors ({exc})") from exc
        prior = cls(cfg, flash=flash)
        try:
            prior.net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise FileFormatError(
                f"weights file {str(wfile)!r} does not match the network in config.json ({first})"
            ) from exc
        prior.eval().requires_grad_(False)
        if device is not None:
            prior.to(device)
        return prior



def load_prior(name_or_path, device=None, modality: str | None = None) -> DiffusionPrior:
    """Load a prior by entry-point name (``ct-default``) or folder path.

    Names are looked up in the ``medrecon.priors`` entry-point group (each entry point is a
    zero-argument function returning the folder).  A path that exists is used directly.
    ``device``: cpu / cuda / cuda:N / auto.  ``modality``: optional check ('ct' or 'mr').
    """
    from medrecon.devices import resolve_device

    p = Path(str(name_or_path)).expanduser()
    if not p.exists() and "/" not in str(name_or_path) and "\\" not in str(name_or_path):
        folder = _folder_from_name(str(name_or_path))
    else:
        folder = p
    dev = resolve_device(device) if device is not None else None
    return DiffusionPrior.load(folder, device=dev, modality=modality)


def _folder_from_name(name: str) -> Path:
    from medrecon.errors import PluginError

    try:
        from medrecon import registry

        fn = registry.load("medrecon.priors", name)
    except PluginError:
        # running from a source tree without an installed distribution: shipped names still work
        from medrecon.priors import shipped

        fn = shipped.BY_NAME.get(name)
        if fn is None:
            raise
    folder = fn()
    return Path(folder)
