"""Quality of a trained prior on held-out slices (``medrecon evaluate-prior``, benchmarks/prior_quality.py).

Two measurements, both in the network range (x_net in about [-1, 1], PSNR with peak-to-peak 2):

1. Denoising loss: mean squared error of eps(x_t, t) against the true noise at t = 100, 300,
   500 (fixed noise, seed 0), and the MSE of the Tweedie estimate x0_hat against x_0.
2. Prior evidence: each held-out slice is noised to t = 300,
   x_t = sqrt(abar) x_0 + sqrt(1 - abar) e, and denoised two ways:
   (a) the prior's Tweedie estimate x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar);
   (b) the best Gaussian filter applied to y = x_t / sqrt(abar) = x_0 + sigma_n e, with
       sigma_n = sqrt((1 - abar)/abar), the filter width chosen to maximise PSNR on the
       *training* slices (grid 0.25..8 px).
   The prior is useful when (a) beats (b) on the held-out slices.

Runs with numpy + torch only (the Gaussian filter is a separable torch convolution).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medrecon.metrics import psnr_slices

#: PSNR here is per slice on the network range [-1, 1] (data range 2, unclipped; medrecon.metrics.psnr_slices).
NET_RANGE = (-1.0, 1.0)
EVAL_TIMESTEPS = (100, 300, 500)
EVIDENCE_T = 300
SIGMA_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)


def gaussian_filter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding (radius 4 sigma)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(4 * sigma)))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def _noisy(x0: torch.Tensor, t: int, abar: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed + t)
    e = torch.randn(x0.shape, generator=g).to(x0.device)
    a = abar[t].float()
    return a.sqrt() * x0 + (1 - a).sqrt() * e, e, a


@torch.no_grad()
def evaluate_prior(prior, holdout, train=None, output=None, device=None, batch: int = 16, seed: int = 0,
                   timesteps=EVAL_TIMESTEPS, evidence_t: int = EVIDENCE_T, max_slices: int | None = None) -> dict:
    """Evaluate ``prior`` (a DiffusionPrior or a name / folder) on held-out slice stacks.

    holdout, train : .npy slice stacks (see :mod:`medrecon.priors.data`); ``train`` picks the
    Gaussian filter width (default: the held-out slices themselves, which flatters the baseline).
    Writes ``prior_quality.json`` and ``prior_quality.png`` into ``output`` when given.
    """
    from medrecon.priors.data import read_stack, resize_stack
    from medrecon.priors.model import DiffusionPrior, load_prior

    if not isinstance(prior, DiffusionPrior):
        prior = load_prior(prior, device=device)
    elif device is not None:
        from medrecon.devices import resolve_device

        prior = prior.to(resolve_device(device))
    dev = prior.device

    def stack(p):
        st = read_stack(p)
        if st.modality != prior.modality:
            from medrecon.errors import InputError

            raise InputError(f"{str(p)!r} holds {st.modality.upper()} slices but the prior is {prior.modality.upper()}")
        if st.size != prior.image_size and prior.pixel_size_mm:
            st = resize_stack(st, prior.image_size)
        prior.check_pixel_size(st.pixel_size_mm)
        x = torch.from_numpy(st.to_net())[:, None]
        if max_slices:
            x = x[:max_slices]
        return x, st

    x_hold, st_hold = stack(holdout)
    x_train, _ = stack(train) if train is not None else (x_hold, None)
    abar = prior.alphas_cumprod

    def run_eps(xt, t):
        outs = []
        for i in range(0, xt.shape[0], batch):
            xb = xt[i:i + batch].to(dev)
            outs.append(prior.eps(xb, torch.full((xb.shape[0],), t, device=dev, dtype=torch.long)).float().cpu())
        return torch.cat(outs)

    res: dict = {"prior": prior.config.get("training", {}), "modality": prior.modality,
                 "holdout": str(holdout), "train": str(train) if train is not None else None,
                 "slices": int(x_hold.shape[0]), "size": list(x_hold.shape[-2:]), "seed": seed,
                 "denoising": {}, "device": str(dev)}
    for t in timesteps:
        xt, e, a = _noisy(x_hold, t, abar, seed)
        ep = run_eps(xt, t)
        x0h = (xt - (1 - a).sqrt() * ep) / a.sqrt()
        res["denoising"][str(t)] = {"eps_mse": float(((ep - e) ** 2).mean()),
                                    "x0_mse": float(((x0h - x_hold) ** 2).mean()),
                                    "x0_psnr_db": float(psnr_slices(x0h, x_hold, NET_RANGE, clip=False).mean())}

    # prior evidence at t = evidence_t
    t = evidence_t
    a = abar[t].float()
    sigma_n = float(((1 - a) / a).sqrt())
    xt_tr, _, _ = _noisy(x_train, t, abar, seed + 1)
    y_tr = xt_tr / a.sqrt()
    scores = {s: float(psnr_slices(gaussian_filter(y_tr, s), x_train, NET_RANGE, clip=False).mean())
              for s in SIGMA_GRID}
    best_sigma = max(scores, key=scores.get)
    xt, _, _ = _noisy(x_hold, t, abar, seed)
    y = xt / a.sqrt()
    gauss = gaussian_filter(y, best_sigma)
    x0h = (xt - (1 - a).sqrt() * run_eps(xt, t)) / a.sqrt()
    p_noisy, p_gauss, p_prior = (psnr_slices(v, x_hold, NET_RANGE, clip=False) for v in (y, gauss, x0h))
    res["evidence"] = {
        "t": t, "abar": float(a), "noise_sigma_net": sigma_n, "gaussian_sigma_px": best_sigma,
        "gaussian_sigma_scores_train": {str(k): v for k, v in scores.items()},
        "psnr_noisy_db": float(p_noisy.mean()), "psnr_gaussian_db": float(p_gauss.mean()),
        "psnr_prior_db": float(p_prior.mean()),
        "prior_minus_gaussian_db": float((p_prior - p_gauss).mean()),
        "prior_wins_fraction": float((p_prior > p_gauss).float().mean()),
        "prior_better": bool(p_prior.mean() > p_gauss.mean()),
    }
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        k = int(torch.argmax(x_hold.flatten(1).std(1)))  # the slice with the most structure
        _figure(out / "prior_quality.png", [x_hold[k, 0], y[k, 0], gauss[k, 0], x0h[k, 0]],
                ["held-out slice", f"noisy t={t} ({float(p_noisy[k]):.1f} dB)",
                 f"Gaussian s={best_sigma} ({float(p_gauss[k]):.1f} dB)", f"prior Tweedie ({float(p_prior[k]):.1f} dB)"])
        res["png"] = str(out / "prior_quality.png")
        (out / "prior_quality.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def _figure(path, images, titles):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.3))
    for ax, im, ti in zip(axes, images, titles, strict=True):
        ax.imshow(np.asarray(im), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(ti, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
