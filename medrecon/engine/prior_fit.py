"""The prior-fit check of a reconstruction: how familiar the study is to the prior (issue 19).

Before a diffusion sampler's result is trusted, the engine measures the prior's denoising
loss (:func:`medrecon.priors.fit.fit_score`) on a quick prior-free reconstruction of the same
measurement: TV (:class:`medrecon.samplers.tv.TV`) with its fixed fallback weight and
:data:`TV_ITERS` iterations, which is cheap (no cross-validation) and free of the prior's own
influence (scoring the diffusion result would flatter the prior: it is pulled towards what the
prior knows).  A prior run at its own scale on finer data (:class:`medrecon.priors.rescaled.RescaledPrior`)
scores the TV image area-averaged onto its grid, where its reference was measured: a loss on the
fine grid does not compare with it (a T1 brain at 0.625 mm scored 10.4 with mr-default at
0.82 mm that way, 1.36 on the prior's grid).  The score is recorded per slice in the output's metadata
(``reconstruction.prior_fit``) and a :class:`PriorFitWarning` is issued when the median over
the study's slices exceeds :data:`medrecon.priors.fit.FIT_WARN`, for the modalities where that
threshold was measured to separate familiar from unfamiliar series (:data:`CALIBRATED`: CT).
For MR priors the score is recorded but not judged: on mr-default, scored this way, the
prior's own held-out slices (1.17-1.36) did not separate from other patients' (0.90-1.50;
docs/quality.md).

Cost: ``TV_ITERS`` operator pairs plus ``2 x 4`` network evaluations per slice (a 50-step DDS
run costs 50 network evaluations).
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

__all__ = ["CALIBRATED", "PriorFitWarning", "TV_ITERS", "applies", "score_batch", "summarise"]

#: modalities whose threshold (``FIT_WARN``) was measured on real series (benchmarks/generalization.py)
CALIBRATED = ("ct",)

#: PDHG iterations of the TV reconstruction that is scored
TV_ITERS = 100
_LOCK = threading.Lock()


class PriorFitWarning(UserWarning):
    """The study is unlike the data the prior was trained on (prior-fit score above the threshold)."""


def applies(sampler, prior, components, volume_mode: bool) -> bool:
    """Whether a run is scored: a per-slice diffusion sampler, a plain image (no ``components``,
    e.g. not tissue + haze) and a prior whose config holds a fit reference or a validation loss."""
    if volume_mode or prior is None or not sampler.needs_prior or components:
        return False
    cfg = getattr(prior, "config", None) or {}
    return bool(cfg.get("fit_reference") or (cfg.get("training") or {}).get("final_val_loss"))


def score_batch(prior, y, operator, idx, record: dict) -> None:
    """Score the slices ``idx`` (measurement ``y`` batch, ``operator``) into ``record[str(k)]``."""
    import torch

    from medrecon.priors.fit import fit_score
    from medrecon.priors.rescaled import RescaledPrior
    from medrecon.samplers.tv import TV

    tv = TV(lam_rel=TV.tunable[2], iters=TV_ITERS)
    with torch.no_grad():
        x = tv.sample(y, operator)
    x = x.abs() if x.is_complex() else x
    if isinstance(prior, RescaledPrior):  # scored where the network sees it: at the prior's own scale
        x, prior = prior.to_own_scale(x), prior.base
    fit = fit_score(prior, x.detach().float().cpu().numpy())
    with _LOCK:
        record.setdefault("reference", fit.reference)
        record.setdefault("modality", str((getattr(prior, "config", None) or {}).get("modality", "")).lower())
        record.setdefault("per_slice", {}).update({str(k): round(float(v), 4) for k, v in zip(idx, fit.per_slice, strict=True)})


def summarise(record: dict) -> dict | None:
    """The metadata entry (median score, threshold, method) and a warning when it is exceeded."""
    from medrecon.priors.fit import FIT_WARN

    if not record.get("per_slice"):
        return None
    score = float(np.median(list(record["per_slice"].values())))
    limit = FIT_WARN if record.get("modality") in CALIBRATED else None
    warned = limit is not None and score > limit
    out = {"score": round(score, 4), "warn_above": limit, "warned": warned,
           "reference": record.get("reference"),
           "scored": f"TV reconstruction (fallback weight, {TV_ITERS} iterations)",
           "per_slice": record["per_slice"]}
    if warned:
        warnings.warn(f"prior fit {score:.2f} is above {FIT_WARN:g}: this study is unlike the data the prior was "
                      "trained on, so its result may be worse than --sampler tv; check it against TV "
                      "(docs/priors.md, prior fit)", PriorFitWarning, stacklevel=3)
    return out
