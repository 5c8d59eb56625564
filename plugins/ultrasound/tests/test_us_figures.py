"""``medrecon.figures.reconstruction_figure`` on ultrasound: RF shown as B-mode by the ``us.regions``
metric set's display, found through the registry (entry-point group ``medrecon.metrics``)."""

from __future__ import annotations

import numpy as np
import pytest

import medrecon
from medrecon.figures import reconstruction_figure

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def test_ultrasound_is_shown_as_bmode(tmp_path):
    import torch
    from medrecon_us.simulate import planewave_params

    from medrecon.measurement import Measurement

    params = planewave_params((48, 24), [10.0, 11.8], [-1.8, 1.8], {"n_elements": 32})
    op = medrecon.get_operator("us.planewave", **params)
    x = torch.zeros(2, 48, 24)
    x[:, 20, 12] = 1.0
    m = Measurement(y=op(x).numpy(), operator_spec=op.spec(), noise_std=0.0, volume_shape=(2, 48, 24),
                    affine=np.diag([0.15, 0.0375, 1.0, 1.0]), units="reflectivity", provenance={"source": "test"})
    vol = medrecon.reconstruct(m, "classical", progress=False)
    assert str(vol.meta.get("modality")).upper() == "US"
    shown = reconstruction_figure(m, vol, tmp_path / "us.png")
    assert shown["window"] is None and shown["panels"] == ["classical", "reconstruction"]
    assert (tmp_path / "us.png").stat().st_size > 1000


# ------------------------------------------------------------------ one coordinate system (issue 22)
FS, C, PITCH, N_EL = 20e6, 1540.0, 0.3e-3, 16
T0 = 13e-6  # the record starts at the echo of c t0 / 2 = 10.01 mm


def _imported(tmp_path):
    """A zea HDF5 file with t0 = 13 us read by the importer with its default grid; the volume
    (frames, depth, lateral) with the measurement's affine, and the grid's pixel-centre mm."""
    from medrecon_us.importer import RFImporter, write_rf_hdf5

    from medrecon.volume import Volume

    rng = np.random.default_rng(0)
    raw = rng.standard_normal((1, 3, 200, N_EL)).astype(np.float32)
    p = write_rf_hdf5(tmp_path / "late.h5", raw, fs_hz=FS, angles_rad=np.radians([-2.0, 0.0, 2.0]), pitch_m=PITCH,
                      c=C, t0_s=T0)
    m = RFImporter().read(p)
    sp = m.operator_spec["params"]
    nz, nx = sp["shape"]
    rf = rng.standard_normal((1, nz, nx)).astype(np.float32)
    return Volume(rf, np.asarray(m.affine, dtype=np.float64), {"modality": "US"}), sp


def _image_axes(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def _mm_extent(sp):
    nz, nx = sp["shape"]
    dz = (sp["z_mm"][1] - sp["z_mm"][0]) / (nz - 1)
    dx = (sp["x_mm"][1] - sp["x_mm"][0]) / (nx - 1)
    return [sp["x_mm"][0] - dx / 2, sp["x_mm"][1] + dx / 2, sp["z_mm"][1] + dz / 2, sp["z_mm"][0] - dz / 2]


def test_default_grid_starts_at_the_first_recorded_sample(tmp_path):
    """t0 = 13 us: the shallowest echo the record holds comes from c t0 / 2 = 10.01 mm; the default
    grid starts there (before: 5 mm, so its top 5 mm held no data), and t0 = 0 keeps 5 mm."""
    from medrecon_us.importer import default_grid

    _, sp = _imported(tmp_path)
    assert sp["t0_s"] == pytest.approx(T0)
    assert sp["z_mm"][0] == pytest.approx(C * T0 / 2 * 1e3, abs=1e-6)
    assert sp["z_mm"][1] <= C * (T0 + 199 / FS) / 2 * 1e3 + 1e-6  # the grid: rounded to 1e-6 mm
    g = dict(n_elements=N_EL, pitch_mm=0.3, c=C, fs_hz=FS, n_samples=400, f0_hz=5e6)
    assert default_grid(t0_s=0.0, **g)["z_mm"][0] == 5.0
    assert default_grid(t0_s=2e-6, **g)["z_mm"][0] == 5.0  # 1.54 mm: still inside the ring-down margin


def test_evaluate_and_reconstruct_figures_share_the_grid_mm_axes(tmp_path, monkeypatch):
    """evaluate's B-mode figure (regions) and reconstruct's display (with the draws' std) put every
    panel on the grid's mm coordinates (pixel centres at z_mm / x_mm), label both axes in mm on
    every panel, draw the regions there, carry a dB colour bar (and the std its own, linear one)
    and leave no panel empty."""
    import matplotlib.pyplot as plt
    from medrecon_us import bmode_figure as bf
    from medrecon_us.regions import RegionMetrics, evaluate_regions

    vol, sp = _imported(tmp_path)
    want = _mm_extent(sp)
    figs = []
    real = bf.bmode_figure
    monkeypatch.setattr(bf, "bmode_figure", lambda *a, **k: figs.append(real(*a, **k)) or figs[-1])
    z, x = sp["z_mm"][0] + 2.0, 0.5
    evaluate_regions(vol, classical=vol, targets=[(z, x, 0.6)], backgrounds=[(z, x, 1.0, 1.5)],
                     png=tmp_path / "e.png")
    shown = RegionMetrics.display({"classical": vol.data[0], "reconstruction": vol.data[0]},
                                  std=np.abs(vol.data[0]), affine=vol.affine, title="t", path=None)
    figs.append(plt.gcf())
    assert shown == ["classical", "reconstruction", "std of the draws"]
    for fig in figs:
        axes = _image_axes(fig)
        assert len(axes) == len([a for a in fig.axes if a.get_label() != "<colorbar>"])  # no empty panel
        for ax in axes:
            assert list(ax.images[0].get_extent()) == pytest.approx(want)
            assert ax.get_xlabel() == "lateral (mm)" and ax.get_ylabel() == "depth (mm)"
        bars = [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]
        assert any("dB" in b for b in bars), bars
    assert any("std" in b for b in [a.get_ylabel() for a in figs[1].axes if a.get_label() == "<colorbar>"])
    patches = _image_axes(figs[0])[0].patches
    assert patches[0].center == pytest.approx((x, z)) and patches[0].width == pytest.approx(1.2)
    plt.close("all")


def test_pixel_regions_are_drawn_as_the_pixels_they_select():
    """A disc of r pixels on a 0.05 x 0.1 mm grid covers r * 0.05 mm of depth and r * 0.1 mm laterally:
    drawn as that ellipse, centred on the pixel's mm position."""
    import matplotlib.pyplot as plt
    from medrecon_us.bmode_figure import bmode_figure

    fig = bmode_figure({"a": np.ones((40, 30))}, spacing=(0.05, 0.1), origin=(10.0, -1.5),
                       regions=[((20, 10, 4), (20, 10, 6, 8))], units="px")
    t, b_in, b_out = fig.axes[0].patches
    assert t.center == pytest.approx((-1.5 + 1.0, 10.0 + 1.0))
    assert (t.width, t.height) == pytest.approx((0.8, 0.4)) and (b_out.width, b_out.height) == pytest.approx((1.6, 0.8))
    plt.close(fig)


def test_reconstruct_png_uses_the_grid_mm(tmp_path, monkeypatch):
    """``reconstruction_figure`` (``medrecon reconstruct --png``) on an imported measurement: the
    B-mode panels' extents are the grid's mm, as in ``evaluate --png``."""
    import matplotlib.pyplot as plt
    from medrecon_us import bmode_figure as bf
    from medrecon_us.importer import RFImporter, write_rf_hdf5

    rng = np.random.default_rng(1)
    raw = rng.standard_normal((1, 3, 120, N_EL)).astype(np.float32)
    p = write_rf_hdf5(tmp_path / "late.h5", raw, fs_hz=FS, angles_rad=np.radians([-2.0, 0.0, 2.0]), pitch_m=PITCH,
                      c=C, t0_s=T0)
    m = RFImporter().read(p, shape=[40, 12])
    vol = medrecon.reconstruct(m, "classical", progress=False)
    figs = []
    real = bf.bmode_figure
    monkeypatch.setattr(bf, "bmode_figure", lambda *a, **k: figs.append(real(*a, **k)) or figs[-1])
    reconstruction_figure(m, vol, tmp_path / "r.png")
    want = _mm_extent(m.operator_spec["params"])
    try:
        for ax in _image_axes(figs[0]):
            assert list(ax.images[0].get_extent()) == pytest.approx(want)
    finally:
        plt.close("all")
