"""The trained diffusion prior over 2D slices: network, schedule, intensity transform, storage.

A prior is a folder::

    config.json          everything but the weights (see :func:`default_config`)
    weights.safetensors  EMA weights of MONAI's DiffusionModelUNet (float16 or float32)

:class:`DiffusionPrior` satisfies :class:`medrecon.priors.protocol.PriorProtocol`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medrecon.errors import FileFormatError, InputError
from medrecon.priors.config import (  # noqa: F401 - re-exported: the config is part of the prior's API
    CONFIG_NAME,
    CT_WINDOW,
    DEFAULT_PRESET,
    FORMAT,
    FORMAT_VERSION,
    MODALITIES,
    MR_PERCENTILES,
    PREDICTIONS,
    PRESETS,
    WEIGHTS_NAME,
    default_config,
    validate_config,
)
from medrecon.priors.feature_cache import current_cache, supports
from medrecon.priors.integrity import nonfinite_tensor, verified_digest, weights_path
from medrecon.priors.intensity import bound_kinds, intensity_kind
from medrecon.priors.schedule import make_schedule


def __getattr__(name: str):
    # BOUND_KINDS: the registered intensity kinds whose map needs the data (a volume's percentiles,
    # an RF scale) before use (medrecon.priors.intensity.bound_kinds), computed on access.
    if name == "BOUND_KINDS":
        return bound_kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
      An intensity kind with companding (the ultrasound plugin's ``mulaw``) applies it after the
      affine map: x_net = C(2 (x - lo)/(hi - lo) - 1); exact inverses, not affine.

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
        self._intensity_kind = intensity_kind(inten["kind"])  # validated above
        self._lo = inten.get("lo")
        self._hi = inten.get("hi")
        #: SHA-256 of the weights file :meth:`load` read and verified; None for a network built or
        #: changed in memory (the engine's fingerprint then hashes the tensors themselves)
        self.weights_sha256: str | None = None

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

    @property
    def bound_intensity(self) -> tuple | None:
        """``(lo, hi)`` of an intensity map that needs the data (MR percentiles, the RF scale) once
        bound to a volume (:meth:`for_volume`, :meth:`with_intensity`); None before that, and for a
        fixed map (the CT window in the config)."""
        if not self._intensity_kind.bound or self._lo is None or self._hi is None:
            return None
        return self._lo, self._hi

    def for_volume(self, volume) -> DiffusionPrior:
        """Bind the intensity map to a volume (array or Volume): MR uses its p_lo/p_hi percentiles,
        ultrasound (``mulaw``) the scale s = p_scale percentile of |x| (lo = -s, hi = s).

        A Volume's in-plane spacing is checked against the training pixel size (a warning when far).
        """
        spacing = getattr(volume, "spacing", None)
        if spacing is not None and len(spacing) == 3:
            self.check_pixel_size(float(min(spacing[1], spacing[2])))
        if not self._intensity_kind.bound:
            return self
        import numpy as np

        data = getattr(volume, "data", volume)
        data = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        return self.with_intensity(*self._intensity_kind.bind(data, self.config["intensity"]))

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

    def to_net(self, x_phys: torch.Tensor) -> torch.Tensor:
        """Physical units -> network range: C(2 (x - lo)/(hi - lo) - 1), C the intensity kind's
        companding (identity for window / percentile; :mod:`medrecon.priors.intensity`)."""
        lo, hi = self._lohi(x_phys)
        v = 2 * (x_phys - lo) / (hi - lo) - 1
        return self._intensity_kind.compress(v, self.config["intensity"])

    def from_net(self, x_net: torch.Tensor) -> torch.Tensor:
        """Network range -> physical units: lo + (C^-1(x) + 1)(hi - lo)/2, the exact inverse of :meth:`to_net`."""
        lo, hi = self._lohi(x_net)
        x_net = self._intensity_kind.expand(x_net, self.config["intensity"])
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
        """Raw network output (eps or v) on a grid of any size (pad, run, crop).  Inside
        :func:`~medrecon.priors.feature_cache.cached_call` the network runs through that cache
        (a full or a shallow DeepCache pass)."""
        xp, crop = self._pad(x)
        use_ac = self.autocast and xp.device.type == "cuda"
        cache = current_cache()  # a sampler's feature cache (medrecon.priors.feature_cache), if any
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_ac):
            out = cache.run(self.net, xp, t) if cache is not None and supports(self.net) else self.net(xp, t)
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
        """Write ``config.json`` + ``weights.safetensors`` (dtype float16 or float32) into ``folder``;
        weights that are NaN or infinite in ``dtype`` (float16 overflows above 65504) are refused."""
        from safetensors.torch import save as save_bytes

        from medrecon.io.atomic import write_bytes_atomic, write_text_atomic

        folder = Path(folder)
        tdt = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        sd = {k: v.detach().to("cpu", tdt).contiguous() for k, v in self.net.state_dict().items()}
        bad = nonfinite_tensor(sd)
        if bad is not None:
            raise InputError(f"the network's tensor {bad!r} is NaN or infinite in {dtype}, so no prior is written "
                             f"to {str(folder)!r}")
        folder.mkdir(parents=True, exist_ok=True)
        wpath = folder / WEIGHTS_NAME
        # each file is replaced atomically, the weights first: a run killed in between leaves
        # the old config, whose sha256 no longer matches, and load() refuses it in one sentence
        blob = save_bytes(sd, metadata={"format": FORMAT, "dtype": dtype})
        write_bytes_atomic(wpath, lambda f: f.write(blob))
        wpath.chmod(0o644)
        cfg = copy.deepcopy(self.config)
        cfg["weights"] = {"file": WEIGHTS_NAME, "dtype": dtype, "ema": cfg.get("weights", {}).get("ema", True),
                          "sha256": hashlib.sha256(blob).hexdigest(), "parameters": count_parameters(self.net)}
        if extra:
            cfg.update(extra)
        write_text_atomic(folder / CONFIG_NAME, json.dumps(cfg, indent=2) + "\n", fsync=True)
        self.config = cfg
        return folder

    @classmethod
    def load(cls, folder, device=None, modality: str | None = None, flash: bool = True) -> DiffusionPrior:
        """Read a prior folder; weights are cast to float32 on ``device`` (cpu by default).

        ``modality`` ('ct'/'mr'/'us'), if given, must match the prior's.  Errors are one sentence.
        The weights file must be a plain name inside ``folder`` (symbolic links resolved), match
        config.json's ``weights.sha256`` when it records one, and hold finite values
        (:mod:`medrecon.priors.integrity`); its actual SHA-256 becomes :attr:`weights_sha256`.
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
        wcfg = cfg.get("weights", {})
        wfile = weights_path(folder, wcfg.get("file", WEIGHTS_NAME))
        digest = verified_digest(wfile, wcfg.get("sha256"))
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(wfile))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise FileFormatError(f"weights file {str(wfile)!r} is corrupt or not safetensors ({exc})") from exc
        bad = nonfinite_tensor(sd)
        if bad is not None:
            raise FileFormatError(f"weights file {str(wfile)!r} holds NaN or infinite values (tensor {bad!r}), "
                                  "so the prior is refused")
        prior = cls(cfg, flash=flash)
        prior.weights_sha256 = digest
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
