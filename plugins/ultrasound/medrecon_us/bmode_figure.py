"""The ultrasound B-mode figure: panels side by side (e.g. before, after, haze estimate), regions drawn.

Each panel (an envelope, or RF with the envelope taken along depth) is shown as
``clip(20 log10(env / max), -DR, 0)`` dB, with one colour bar in dB for them all; panels named
in ``linear`` (the standard deviation of the draws) are shown linearly with their own colour
bar.  Every panel has the same axes: depth (down) and lateral position in mm, pixel centres at
``origin + index * spacing`` -- the grid's mm coordinates (the importer's ``z_mm`` / ``x_mm``,
the volume's affine); regions are drawn in that system, targets in red, backgrounds dashed
yellow.  Used by :mod:`medrecon_us.regions` (``medrecon evaluate``
with regions) and, through the ``us.regions`` metric set's ``display``, by
:func:`medrecon.figures.reconstruction_figure`.  matplotlib's Agg backend; the PNG is written
atomically.
"""

from __future__ import annotations

import numpy as np

from medrecon.figures import save_png

__all__ = ["bmode_figure"]


def bmode_figure(panels: dict[str, np.ndarray], *, spacing=(1.0, 1.0), origin=(0.0, 0.0),
                 dynamic_range_db: float = 60.0, image: str = "envelope", regions=(), units: str = "mm",
                 titles: dict[str, str] | None = None, suptitle: str | None = None, path=None, dpi: int = 110,
                 linear=(), linear_label: str = "linear"):
    """Ultrasound B-mode panels side by side (e.g. before, after, haze estimate), regions drawn.

    Parameters
    ----------
    panels : dict name -> 2D array (nz, nx) = (depth, lateral)
        Envelopes (``image="envelope"``) or RF images (``image="rf"``: envelope along depth).
        Each is shown as ``20 log10(env / max)`` clipped to ``[-DR, 0]`` dB
        (:func:`medrecon_us.bmode.log_compress`; 0 dB is each panel's own maximum).  None
        values are left out (no empty panels); all panels must have the same shape.
    spacing, origin : (dz, dx), (z0, x0)
        Pixel spacing and the position of pixel [0, 0] in mm: the axes are depth and
        lateral position in mm (depth increasing downwards, equal aspect).
    regions : sequence of (target, background)
        Regions as in :mod:`medrecon_us.regions` (``(z, x, r)`` discs, ``(z, x, r_in, r_out)``
        annuli) in ``units`` (``"mm"`` or ``"px"``): targets in red, backgrounds dashed yellow,
        drawn in mm (a disc of ``r`` pixels is an ellipse of half-axes ``r dz`` x ``r dx`` mm,
        the pixels :func:`medrecon_us.regions.region_mask` selects).
    titles : dict name -> str, optional
        Panel titles (default: the names).
    linear : names of panels shown as they are (no envelope, no log; e.g. the standard
        deviation of the draws), on a ``[0, max]`` scale with a colour bar labelled ``linear_label``.

    Returns the Figure (closed after saving when ``path`` is given).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    from medrecon_us.bmode import envelope, log_compress

    dr = float(dynamic_range_db)
    dz, dx = (float(v) for v in spacing)
    z0, x0 = (float(v) for v in origin)
    panels = {k: v for k, v in panels.items() if v is not None}
    names = list(panels)
    if not names:
        raise ValueError("bmode_figure needs at least one panel")
    first = np.asarray(panels[names[0]])
    nz, nx = first.shape
    if any(np.shape(panels[k]) != (nz, nx) for k in names):
        raise ValueError(f"bmode_figure: panels of different shapes {[np.shape(panels[k]) for k in names]}")
    extent = [x0 - dx / 2, x0 + (nx - 0.5) * dx, z0 + (nz - 0.5) * dz, z0 - dz / 2]
    ratio = (extent[1] - extent[0]) / (extent[2] - extent[3])  # width / height of one panel
    height = 6.0 if ratio < 0.6 else 4.0
    width = max(min(max(1.6, height * ratio), 5.5) * len(names) + 1.2, 5.0)
    fig, axes = plt.subplots(1, len(names), figsize=(width, height + 0.9), squeeze=False, layout="constrained")

    def to_mm(reg):
        """(z, x) centre in mm and the (depth, lateral) half-axes in mm of each radius."""
        if units == "px":
            return (z0 + reg[0] * dz, x0 + reg[1] * dx), [(r * dz, r * dx) for r in reg[2:]]
        return (float(reg[0]), float(reg[1])), [(float(r), float(r)) for r in reg[2:]]

    def ring(centre, half, **kw):
        return Ellipse((centre[1], centre[0]), 2 * half[1], 2 * half[0], fill=False, **kw)

    im = im_lin = None
    bmode_axes, linear_axes = [], []
    for ax, name in zip(axes[0], names, strict=True):
        a = np.asarray(panels[name], dtype=np.float64)
        if name in linear:
            hi = float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else 1.0
            im_lin = ax.imshow(a, cmap="magma", vmin=0.0, vmax=hi if hi > 0 else 1.0, extent=extent,
                               interpolation="nearest", aspect="equal")
            linear_axes.append(ax)
        else:
            env = envelope(a, axis=-2) if image == "rf" else np.abs(a)
            im = ax.imshow(log_compress(env, dr), cmap="gray", vmin=-dr, vmax=0.0, extent=extent,
                           interpolation="nearest", aspect="equal")
            bmode_axes.append(ax)
        for k, (t, b) in enumerate(regions):
            (tc, th), (bc, bh) = to_mm(t), to_mm(b)
            ax.add_patch(ring(tc, th[-1], color="tab:red", lw=1.0))
            ax.text(tc[1] + th[-1][1], tc[0] - th[-1][0], str(k + 1), color="tab:red", fontsize=7)
            for h in bh:
                if h[0] > 0:
                    ax.add_patch(ring(bc, h, color="gold", lw=0.8, ls="--"))
        ax.set_title((titles or {}).get(name, name), fontsize=9)
        ax.set_xlabel("lateral (mm)", fontsize=8)
        ax.set_ylabel("depth (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
    if im is not None:
        cb = fig.colorbar(im, ax=bmode_axes, fraction=0.03, pad=0.02)
        cb.set_label(f"B-mode (dB, 0 = panel maximum, window [-{dr:g}, 0])", fontsize=8)
    if im_lin is not None:
        cb = fig.colorbar(im_lin, ax=linear_axes, fraction=0.03, pad=0.02)
        cb.set_label(linear_label, fontsize=8)
    fig.suptitle(suptitle or f"B-mode, dynamic range {dr:g} dB", fontsize=9)
    if path is not None:
        save_png(fig, path, dpi)
        plt.close(fig)
    return fig
