"""Prior fit: how familiar a study's images are to a diffusion prior (a diagnostic, no sampling).

The prior's own training loss, measured on the study's images.  For a slice x (physical units:
HU for CT; an MR or ultrasound prior must first be bound to the data with ``prior.for_volume``),
x_0 = to_net(x) in the network range, and for each timestep t in ``timesteps`` and draw d::

    x_t  = sqrt(abar_t) x_0 + sqrt(1 - abar_t) e,    e ~ N(0, I) seeded by (seed, d, t)
    L(t) = mean over draws and pixels of (eps_hat(x_t, t) - e)^2          (dimensionless)

eps_hat is the prior's noise prediction (:func:`medrecon.samplers.prior_ops.prior_eps`, as the samplers
call it; a v-prediction prior is compared in the epsilon parameterisation).  The noise field
e (H, W) is the same for every slice of a call (common random numbers), so a slice's L is a
function of that slice alone: independent of batch size, order and device (up to float rounding).

The reference R(t) is L(t) averaged over the prior's validation slices, written by training to
config.json as ``"fit_reference"`` (:func:`fit_reference`).  The fit of a slice is the geometric
mean over the timesteps of L(t) / R(t); the score of a study is the median over its slices:
1.0 = as familiar as the validation data, larger = less familiar; above :data:`FIT_WARN` the
images are unlike the training data.  A prior without ``fit_reference`` falls back to
``training.final_val_loss`` for every t (mean of the training loss at other timesteps, in the
training parameterisation): an approximate score, reported as such.

Timesteps: :data:`FIT_TIMESTEPS` (mid to high noise) for a T = 1000 step prior; for another T,
each t becomes round(t T / 1000), clipped to 0..T-1 (:func:`fit_timesteps`).

>>> import numpy as np
>>> from medrecon.testing import tiny_network_prior
>>> prior = tiny_network_prior(16)
>>> images = np.full((2, 16, 16), 40.0, np.float32)           # HU
>>> denoising_loss(prior, images).shape
(2, 3)
>>> prior.config["fit_reference"] = fit_reference(prior, images)
>>> fit = fit_score(prior, images)
>>> round(fit.score, 4), fit.reference, fit.warn
(1.0, 'config', False)
>>> fit.sentence()
"prior fit 1.00 (1.0 = like the prior's validation data; above 1.3 the data are unlike what the prior was trained on)"
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from medrecon.errors import InputError, positive_int

__all__ = ["FIT_TIMESTEPS", "FIT_WARN", "FIT_REF_SLICES", "FitScore", "denoising_loss", "fit_reference",
           "record_fit_reference", "fit_score",
           "fit_timesteps"]

#: Timesteps of a 1000-step schedule at which the loss is measured (mid to high noise).  Lower
#: ones measure the streaks and noise of the reconstruction being scored more than its anatomy:
#: on ct-default, the 8-view TV reconstruction of its own held-out slices scored 5.6 at t = 50
#: and 0.84 at t = 500 (docs/priors.md, prior fit).
FIT_TIMESTEPS = (300, 500, 700)
#: A score above this is flagged (``FitScore.warn``).  Measured with ct-default on 8- and 16-view TV
#: reconstructions (1 % noise): its own held-out slices 0.89-0.98, an abdomen CT of another patient
#: 1.06-1.14, upper abdomen, chest, chest CTA and head CT 1.37-1.72 (benchmarks/generalization.py).
FIT_WARN = 1.3
APPROXIMATE = "final_val_loss (approximate)"


def fit_timesteps(num_timesteps: int) -> tuple[int, ...]:
    """:data:`FIT_TIMESTEPS` scaled to a T-step schedule: round(t T / 1000), clipped to 0..T-1."""
    T = positive_int("num_timesteps", num_timesteps)
    return tuple(sorted({min(T - 1, max(0, round(t * T / 1000))) for t in FIT_TIMESTEPS}))


def _noise_generator(seed: int, draw: int, t: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(draw), int(t)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


@torch.no_grad()
def denoising_loss(prior, images, *, timesteps=None, draws: int = 2, seed: int = 0, batch: int = 8,
                   net_range: bool = False) -> np.ndarray:
    """L(t) per slice and timestep, float64 (B, len(timesteps)) (see the module docstring).

    images: (B, H, W) or (H, W), numpy or torch, in physical units (already in the network
    range with ``net_range=True``).  timesteps: None = :func:`fit_timesteps` of the prior.
    """
    from medrecon.samplers.prior_ops import prior_eps, to_net_real

    T = int(prior.num_timesteps)
    ts = fit_timesteps(T) if timesteps is None else tuple(int(t) for t in timesteps)
    if not ts or any(not 0 <= t < T for t in ts):
        raise InputError(f"fit timesteps must be a non-empty list of integers in 0..{T - 1}, got {list(ts)}")
    draws, batch = positive_int("draws", draws), positive_int("batch", batch)
    if int(seed) < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    x = images.detach() if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] == 0:
        raise InputError(f"images must be shaped (B, H, W) with B >= 1, got {tuple(x.shape)}")
    dev = getattr(prior, "device", None) or torch.device("cpu")
    x = x.to(dev)
    x = (x.real if x.is_complex() else x).float()
    if not bool(torch.isfinite(x).all()):
        raise InputError("images contain NaN or infinite values")
    x0 = x if net_range else to_net_real(prior, x).float()
    abar = prior.alphas_cumprod
    out = torch.zeros(x0.shape[0], len(ts), dtype=torch.float64)
    for j, t in enumerate(ts):
        a = float(abar[t])
        for d in range(draws):
            e = torch.randn(tuple(x0.shape[1:]), generator=_noise_generator(seed, d, t)).to(dev)
            for i in range(0, x0.shape[0], batch):
                xt = math.sqrt(a) * x0[i:i + batch] + math.sqrt(1 - a) * e
                tt = torch.full((xt.shape[0],), t, dtype=torch.long, device=dev)
                err = (prior_eps(prior, xt, tt).float() - e) ** 2
                out[i:i + batch, j] += err.flatten(1).mean(1).double().cpu()
    return (out / draws).numpy()


def fit_reference(prior, images, *, timesteps=None, draws: int = 2, seed: int = 0, batch: int = 8,
                  net_range: bool = False) -> dict[str, Any]:
    """R(t): :func:`denoising_loss` averaged over the slices, as stored in config.json ``fit_reference``."""
    loss = denoising_loss(prior, images, timesteps=timesteps, draws=draws, seed=seed, batch=batch,
                          net_range=net_range)
    T = int(prior.num_timesteps)
    ts = fit_timesteps(T) if timesteps is None else tuple(int(t) for t in timesteps)
    return {"timesteps": list(ts), "loss": [float(v) for v in loss.mean(axis=0)],
            "n_slices": int(loss.shape[0]), "draws": int(draws), "seed": int(seed)}


#: Slices (evenly spaced over the validation data) a saved prior's ``fit_reference`` is measured on.
FIT_REF_SLICES = 16


def record_fit_reference(folder, x_net: torch.Tensor, device=None, data: str | None = None) -> dict[str, Any]:
    """Measure :func:`fit_reference` of the prior saved in ``folder`` (as users load it) on at most
    :data:`FIT_REF_SLICES` evenly spaced slices of ``x_net`` ((N, 1, H, W) or (N, H, W), network
    range; 2 draws), store it in its config.json (rewritten atomically) and return it; ``data``,
    if given, is recorded with it."""
    import json
    from pathlib import Path

    from medrecon.io.atomic import atomic_file
    from medrecon.priors.model import CONFIG_NAME, DiffusionPrior

    folder = Path(folder)
    prior = DiffusionPrior.load(folder, device=device)
    x = x_net[:, 0] if x_net.dim() == 4 else x_net
    idx = torch.linspace(0, x.shape[0] - 1, min(x.shape[0], FIT_REF_SLICES)).round().long().to(x.device)
    ref = fit_reference(prior, x[idx], draws=2, net_range=True)
    if data is not None:
        ref["data"] = data
    path = folder / CONFIG_NAME
    cfg = json.loads(path.read_text())
    cfg["fit_reference"] = ref
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2) + "\n")
        tmp.chmod(0o644)
    return ref


@dataclass(frozen=True)
class FitScore:
    """The fit of a study: ``score`` (median of ``per_slice``), where the reference came from
    (``"config"`` or ``"final_val_loss (approximate)"``), the ``timesteps`` used and ``warn``
    (score > :data:`FIT_WARN`)."""

    score: float
    per_slice: list
    reference: str
    timesteps: list
    warn: bool

    @property
    def approximate(self) -> bool:
        return self.reference != "config"

    def sentence(self) -> str:
        """One line for a person: the score and how to read it."""
        s = (f"prior fit {self.score:.2f} (1.0 = like the prior's validation data; above {FIT_WARN:.1f} "
             "the data are unlike what the prior was trained on)")
        if self.approximate:
            s += "; approximate: the prior has no fit_reference, so its final validation loss is the reference"
        return s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "warn_above": FIT_WARN, "sentence": self.sentence()}


def _reference(prior, ts: tuple[int, ...]) -> tuple[list[float], str]:
    cfg = getattr(prior, "config", None) or {}
    ref = cfg.get("fit_reference")
    if isinstance(ref, dict) and [int(t) for t in ref.get("timesteps", [])] == list(ts):
        return [float(v) for v in ref["loss"]], "config"
    fvl = (cfg.get("training") or {}).get("final_val_loss")
    if fvl is not None:
        return [float(fvl)] * len(ts), APPROXIMATE
    why = "its fit_reference is for other timesteps" if isinstance(ref, dict) else "it has no fit_reference"
    raise InputError(f"cannot score the fit to this prior: {why} and no training.final_val_loss in its config; "
                     "compute one with medrecon.priors.fit.fit_reference(prior, validation_images) and store "
                     "it in config.json under 'fit_reference'")


def fit_score(prior, images, *, timesteps=None, draws: int = 2, seed: int = 0, batch: int = 8) -> FitScore:
    """Score ``images`` (B, H, W), physical units, against the prior's reference (module docstring)."""
    T = int(prior.num_timesteps)
    ts = fit_timesteps(T) if timesteps is None else tuple(int(t) for t in timesteps)
    ref, source = _reference(prior, ts)
    if len(ref) != len(ts) or not all(math.isfinite(r) and r > 0 for r in ref):
        raise InputError(f"the prior's fit reference {ref} must be {len(ts)} positive numbers")
    loss = denoising_loss(prior, images, timesteps=ts, draws=draws, seed=seed, batch=batch)
    ratio = np.maximum(loss, 1e-30) / np.asarray(ref, dtype=np.float64)[None]
    per_slice = np.exp(np.log(ratio).mean(axis=1))
    score = float(np.median(per_slice))
    return FitScore(score=score, per_slice=[float(v) for v in per_slice], reference=source,
                    timesteps=list(ts), warn=bool(score > FIT_WARN))
