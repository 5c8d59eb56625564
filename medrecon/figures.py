"""Figures for papers and reports: reference / classical / reconstruction / error panels.

:func:`comparison_figure` draws one row for the middle axial slice and, for
volumes with more than one slice, a second row with the middle coronal view
(rows = slices, with the slice spacing as aspect ratio).  All image panels use
the same grey window; the error panel shows ``|recon - reference|`` on
``[0, (hi - lo) / 4]`` so that small errors stay visible.

Uses matplotlib's Agg backend (no display needed); the PNG is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["comparison_figure"]


def _panels(vol, view: str) -> np.ndarray:
    d = vol.data
    if view == "axial":
        return d[d.shape[0] // 2]
    return d[:, d.shape[1] // 2, :][::-1]  # coronal: superior (last slice) at the top


def comparison_figure(reference, recon, *, classical=None, window=(-1000.0, 1000.0), path=None,
                      metrics: dict[str, Any] | None = None, title: str | None = None, dpi: int = 120):
    """Draw reference, classical (optional), reconstruction and absolute error side by side.

    Parameters
    ----------
    reference, recon, classical : Volume
        Same shape (Z, Y, X), physical units.
    window : (lo, hi)
        Grey window in physical units.
    path : str or Path, optional
        Where to save the PNG (atomic write; an existing file is replaced).
    metrics : dict, optional
        Output of :func:`medrecon.metrics.evaluate`; PSNR / SSIM go into the panel titles.

    Returns the matplotlib Figure (closed after saving when ``path`` is given).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lo, hi = float(window[0]), float(window[1])
    cols = [("reference", reference, None)]
    if classical is not None:
        m = (metrics or {}).get("classical") or {}
        cols.append(("classical", classical, m))
    cols.append(("reconstruction", recon, metrics or {}))
    views = ["axial"] + (["coronal"] if reference.shape[0] > 1 else [])
    ncol = len(cols) + 1
    dz, dy, dx = reference.spacing
    z, ny, nx = reference.shape
    # a thin slab would give an unreadable coronal strip: stretch z to >= 30% of the axial height
    stretch = max(1.0, 0.3 * ny * dy / (z * dz)) if z > 1 else 1.0
    heights = [ny * dy] + ([z * dz * stretch] if z > 1 else [])
    rel = [h / heights[0] for h in heights]
    fig, axes = plt.subplots(len(views), ncol, figsize=(3.2 * ncol, 3.4 * sum(rel) + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": rel})
    for r, view in enumerate(views):
        aspect = (dy / dx) if view == "axial" else (dz * stretch / dx)
        ref_img = _panels(reference, view)
        for c, (name, vol, m) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(np.clip(_panels(vol, view), lo, hi), cmap="gray", vmin=lo, vmax=hi,
                      aspect=aspect, interpolation="nearest")
            label = name
            if m and r == 0 and m.get("psnr") is not None:
                label += f"\n{m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}"
            elif m and r == 0 and "ssim" in m:
                label += f"\nPSNR inf, SSIM {m['ssim']:.3f}"
            zlabel = f", z x{stretch:.1f}" if (r > 0 and stretch > 1) else ""
            ax.set_title(label if r == 0 else f"{name} ({view}{zlabel})", fontsize=9)
            ax.axis("off")
        err = np.abs(np.clip(_panels(recon, view), lo, hi) - np.clip(ref_img, lo, hi))
        ax = axes[r, ncol - 1]
        im = ax.imshow(err, cmap="magma", vmin=0, vmax=(hi - lo) / 4, aspect=aspect, interpolation="nearest")
        ax.set_title("|reconstruction - reference|" if r == 0 else f"error ({view})", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    sup = title or f"window [{lo:g}, {hi:g}]; axial slice {z // 2} of {z}"
    fig.suptitle(sup, fontsize=10)
    fig.tight_layout()
    if path is not None:
        from medrecon.io.atomic import atomic_file

        with atomic_file(Path(path), overwrite=True, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
        plt.close(fig)
    return fig
