"""Figures for papers and reports: reference / classical / reconstruction / error panels.

:func:`comparison_figure` draws one row for the middle axial slice and, for
volumes with more than one slice, a second row with the middle coronal view
(rows = slices, with the slice spacing as aspect ratio).  All image panels use
the same grey window; the error panel shows ``|recon - reference|`` on
``[0, (hi - lo) / 4]`` so that small errors stay visible.

Modality-specific displays (e.g. the ultrasound B-mode) come from plugins through the registry:
:func:`reconstruction_figure` shows a volume of modality ``M`` with the ``display`` of a metric set
registered for ``M`` (entry-point group ``medrecon.metrics``, :func:`medrecon.registry.find_metrics`).

Uses matplotlib's Agg backend (no display needed); the PNG is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medrecon.intensity_window import default_window

__all__ = ["comparison_figure", "methods_figure", "overview_figure", "reconstruction_figure", "save_png",
           "uncertainty_figure"]


def _units_label(units) -> str:
    """The colour-bar label for values in ``units`` (e.g. ``"HU"``); "value" when unknown."""
    return str(units) if units else "value (units not recorded)"


def _panels(vol, view: str) -> np.ndarray:
    d = vol.data
    if view == "axial":
        return d[d.shape[0] // 2]
    return d[:, d.shape[1] // 2, :][::-1]  # coronal: superior (last slice) at the top


def comparison_figure(reference, recon, *, classical=None, window=(-1000.0, 1000.0), path=None,
                      metrics: dict[str, Any] | None = None, title: str | None = None, dpi: int = 120,
                      units: str | None = None):
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
        Output of :func:`medrecon.evaluation.evaluate`; PSNR / SSIM go into the panel titles.
    units : str, optional
        Label of both colour bars (grey window and error); default the reference's ``meta["units"]``.

    Returns the matplotlib Figure (closed after saving when ``path`` is given).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lo, hi = float(window[0]), float(window[1])
    label_units = _units_label(units or (getattr(reference, "meta", None) or {}).get("units"))
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
            grey = ax.imshow(np.clip(_panels(vol, view), lo, hi), cmap="gray", vmin=lo, vmax=hi,
                             aspect=aspect, interpolation="nearest")
            label = name
            if m and r == 0 and m.get("psnr") is not None:
                label += f"\n{m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}"
            elif m and r == 0 and "ssim" in m:
                label += f"\nPSNR inf, SSIM {m['ssim']:.3f}"
            zlabel = f", z x{stretch:.1f}" if (r > 0 and stretch > 1) else ""
            ax.set_title(label if r == 0 else f"{name} ({view}{zlabel})", fontsize=9)
            ax.axis("off")
        fig.colorbar(grey, ax=axes[r, ncol - 2], fraction=0.046, pad=0.04, label=f"window, {label_units}")
        err = np.abs(np.clip(_panels(recon, view), lo, hi) - np.clip(ref_img, lo, hi))
        ax = axes[r, ncol - 1]
        im = ax.imshow(err, cmap="magma", vmin=0, vmax=(hi - lo) / 4, aspect=aspect, interpolation="nearest")
        ax.set_title("|reconstruction - reference|" if r == 0 else f"error ({view})", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=f"|error|, {label_units}")
    sup = title or f"window [{lo:g}, {hi:g}]; axial slice {z // 2} of {z}"
    fig.suptitle(sup, fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_png(fig, path, dpi)
        plt.close(fig)
    return fig


def save_png(fig, path, dpi: int) -> None:
    """Write ``fig`` as a PNG atomically (temp file, then rename)."""
    from medrecon.io.atomic import atomic_file

    with atomic_file(Path(path), overwrite=True, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def methods_figure(reference: np.ndarray, images: dict[str, np.ndarray], window=(-1000.0, 1000.0), path=None,
                   *, metrics: dict[str, dict[str, float]] | None = None, title: str | None = None,
                   dpi: int = 110, units: str | None = None):
    """One slice, several methods: top row the images, bottom row ``|method - reference|``.

    ``reference`` and every entry of ``images`` are 2D arrays (Y, X) in physical ``units``
    (the colour bars' label, e.g. ``"HU"``); ``metrics[name]`` may hold ``psnr`` (dB) and ``ssim``
    for the panel titles.  The error maps share the scale ``[0, (hi - lo) / 4]``; the grey
    window's colour bar sits under the reference.  Returns the Figure (closed when saved).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lo, hi = float(window[0]), float(window[1])
    names = list(images)
    ncol = len(names) + 1
    fig, axes = plt.subplots(2, ncol, figsize=(2.8 * ncol, 6.0), squeeze=False)
    ref = np.clip(np.asarray(reference, dtype=np.float64), lo, hi)
    grey = axes[0, 0].imshow(ref, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    axes[0, 0].set_title("reference", fontsize=9)
    axes[1, 0].axis("off")  # the grey window's colour bar, not an empty panel
    cax = axes[1, 0].inset_axes([0.42, 0.08, 0.12, 0.84])
    fig.colorbar(grey, cax=cax, label=f"window, {_units_label(units)}")
    im = None
    for c, name in enumerate(names, start=1):
        img = np.clip(np.asarray(images[name], dtype=np.float64), lo, hi)
        axes[0, c].imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        m = (metrics or {}).get(name) or {}
        label = name + (f"\n{m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}" if "psnr" in m and "ssim" in m else "")
        axes[0, c].set_title(label, fontsize=9)
        im = axes[1, c].imshow(np.abs(img - ref), cmap="magma", vmin=0, vmax=(hi - lo) / 4,
                               interpolation="nearest")
        axes[1, c].set_title(f"|{name} - reference|", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=axes[1, 1:].tolist(), fraction=0.02, pad=0.01, label=f"|error|, {_units_label(units)}")
    fig.suptitle(title or f"window [{lo:g}, {hi:g}]", fontsize=10)
    if path is not None:
        save_png(fig, path, dpi)
        plt.close(fig)
    return fig


def overview_figure(panels: dict[str, np.ndarray], *, window, std: np.ndarray | None = None,
                    spacing=(1.0, 1.0), title: str | None = None, path=None, dpi: int = 110,
                    units: str | None = None):
    """One slice, no reference: grey ``panels`` (name -> 2D array in physical ``units``, the colour
    bars' label) on one
    ``window`` (lo, hi), then, when given, the per-pixel standard deviation ``std`` of the
    posterior draws on ``[0, its 99.5th percentile]`` (where the draws disagree).
    ``spacing`` (row, column) in mm sets the aspect.  Returns the Figure (closed when saved)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lo, hi = (float(v) for v in window)
    names = list(panels)
    ncol = len(names) + (std is not None)
    fig, axes = plt.subplots(1, ncol, figsize=(3.3 * ncol, 3.9), squeeze=False, layout="constrained")
    aspect = float(spacing[0]) / float(spacing[1])
    for ax, name in zip(axes[0], names, strict=False):
        grey = ax.imshow(np.clip(np.asarray(panels[name], np.float64), lo, hi), cmap="gray", vmin=lo, vmax=hi,
                         aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=9)
    if names:
        fig.colorbar(grey, ax=axes[0, len(names) - 1], fraction=0.046, pad=0.02, label=f"window, {_units_label(units)}")
    if std is not None:
        sd = np.asarray(std, np.float64)
        top = float(np.percentile(sd, 99.5)) or float(sd.max()) or 1.0
        im = axes[0, -1].imshow(sd, cmap="magma", vmin=0, vmax=top, aspect=aspect, interpolation="nearest")
        axes[0, -1].set_title("std of the draws", fontsize=9)
        fig.colorbar(im, ax=axes[0, -1], fraction=0.046, pad=0.02, label=f"std, {_units_label(units)}")
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"window [{lo:.4g}, {hi:.4g}]", fontsize=9)
    if path is not None:
        save_png(fig, path, dpi)
        plt.close(fig)
    return fig


def uncertainty_figure(mean: np.ndarray, ref: np.ndarray, std: np.ndarray, report: dict, *, window,
                       units: str = "", spacing=(1.0, 1.0), title: str | None = None, path=None, dpi: int = 110):
    """One slice of an uncertainty check side by side: the draws' ``mean`` (grey, ``window``), the
    error ``|mean - ref|`` and the draws' ``std`` (one colour scale, in ``units``, so that the two maps
    compare: a calibrated std is about 0.67 times the |error| in the median), and the calibration curve
    of ``report`` (:func:`medrecon.uncertainty.uncertainty_report`: observed against nominal coverage
    for k = 0..3 std, overall and per slice; the diagonal is a calibrated std).  Returns the Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lo, hi = (float(v) for v in window)
    err = np.abs(np.asarray(mean, np.float64) - np.asarray(ref, np.float64))
    sd = np.asarray(std, np.float64)
    top = float(max(np.percentile(err, 99.5), np.percentile(sd, 99.5))) or 1.0
    fig, axes = plt.subplots(1, 4, figsize=(13.6, 3.6), layout="constrained")
    aspect = float(spacing[0]) / float(spacing[1])
    axes[0].imshow(np.clip(np.asarray(mean, np.float64), lo, hi), cmap="gray", vmin=lo, vmax=hi, aspect=aspect,
                   interpolation="nearest")
    axes[0].set_title(f"mean of the draws [{lo:.4g}, {hi:.4g}]", fontsize=9)
    for ax, img, name in ((axes[1], err, "|mean - reference|"), (axes[2], sd, "std of the draws")):
        im = ax.imshow(img, cmap="magma", vmin=0, vmax=top, aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=units or None)
    for ax in axes[:3]:
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[3]
    for s in report.get("per_slice") or []:
        if s.get("curve"):
            ax.plot(s["curve"]["nominal"], s["curve"]["observed"], color="0.75", lw=0.7)
    c = report["overall"]["curve"]
    if c:
        ax.plot(c["nominal"], c["observed"], color="C3", lw=2, label="observed (all slices)")
        for k in (1.0, 2.0, 3.0):
            i = c["k"].index(k)
            ax.plot(c["nominal"][i], c["observed"][i], "o", color="C3", ms=4)
            ax.annotate(f"{k:g} std", (c["nominal"][i], c["observed"][i]), fontsize=7, xytext=(-28, 4),
                        textcoords="offset points")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal coverage (Gaussian, k = 0..3 std)", fontsize=8)
    ax.set_ylabel("observed: fraction with |error| <= k std", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("calibration curve", fontsize=9)
    fig.suptitle(title or "posterior mean, error and standard deviation", fontsize=9)
    if path is not None:
        save_png(fig, path, dpi)
        plt.close(fig)
    return fig


def reconstruction_figure(m, vol, path, *, z: int | None = None, dpi: int = 110) -> dict[str, Any]:
    """A look at a finished reconstruction without a reference: slice ``z`` (default the middle
    one) of the operator's classical reconstruction (FBP, zero-filled, delay-and-sum), of
    ``vol`` and, for ``samples`` > 1, of the draws' standard deviation (``vol.components["std"]``).

    Window: CT in HU ``[-1000, 1000]``, otherwise the ``[0.5, 99.5]`` percentiles of the shown
    reconstruction slice; a modality with a registered display is drawn by it (ultrasound RF as
    a 60 dB B-mode, from the ultrasound plugin; see :func:`_modality_display`).  The
    classical panel is left out for operators that reconstruct whole volumes at once (cone
    beam), whose classical reconstruction would cost a full run.  Returns what was drawn.
    """
    import torch

    data = np.asarray(vol.data)
    Z = data.shape[0]
    z = Z // 2 if z is None else int(z)
    op = m.operator()
    panels: dict[str, np.ndarray] = {}
    if getattr(op, "per_slice", True) and np.asarray(m.y).shape[0] == Z:
        with torch.no_grad():
            c = op.for_slices([z]).classical(torch.from_numpy(np.ascontiguousarray(np.asarray(m.y)[[z]])))
        c = c.detach().abs() if c.is_complex() else c.detach()
        c = c.to("cpu", torch.float32).numpy()[0]
        if c.shape == data.shape[1:]:
            panels["classical"] = c
    panels["reconstruction"] = data[z]
    comps = getattr(vol, "components", None) or {}
    std = comps["std"].data[z] if "std" in comps else None
    dz, dy, dx = vol.spacing
    rec = vol.meta.get("reconstruction") or {}
    spec = rec.get("sampler")
    bits = [f"slice {z} of {Z}", spec.get("name") if isinstance(spec, dict) else spec,
            f"prior {rec['prior']}" if rec.get("prior") else None,
            f"{rec['steps']} steps" if rec.get("steps") and rec.get("prior") else None,
            f"mean of {rec['samples']} draws" if rec.get("samples") else None]
    title = ", ".join(str(b) for b in bits if b)
    display = _modality_display(vol.meta.get("modality"))
    if display is not None:  # e.g. ultrasound RF as B-mode
        shown = display(panels, std=std, spacing=(dy, dx), affine=vol.affine, title=title, path=path, dpi=dpi)
        return {"slice": z, "panels": list(shown), "window": None}
    if str(vol.meta.get("modality") or "").upper() == "CT" or str(vol.meta.get("units") or "").upper() == "HU":
        lo, hi = default_window(data[z], meta=vol.meta)  # HU: [-1000, 1000]
    else:
        lo, hi = (float(v) for v in np.percentile(data[z], [0.5, 99.5]))
        hi = hi if hi > lo else lo + 1.0
    overview_figure(panels, window=(lo, hi), std=std, spacing=(dy, dx), title=title, path=path, dpi=dpi,
                    units=vol.meta.get("units"))
    return {"slice": z, "panels": list(panels) + (["std"] if std is not None else []), "window": [lo, hi]}


def _modality_display(modality):
    """The ``display`` of the metric set registered for ``modality`` (entry-point group
    ``medrecon.metrics``), or None.  Contract: ``display(panels, *, std, spacing, affine, title, path,
    dpi)`` draws the slices ``panels`` (name -> 2D array; ``std`` the draws' standard deviation or
    None; ``affine`` the volume's 4x4 voxel-to-mm matrix, so that the axes are in the data's mm) and
    returns the names of the panels it drew."""
    if not modality:
        return None
    from medrecon.registry import find_metrics

    for metric_set in find_metrics(str(modality)).values():
        if callable(getattr(metric_set, "display", None)):
            return metric_set.display
    return None
