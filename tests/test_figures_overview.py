"""``medrecon.figures.reconstruction_figure``: the no-reference look at a finished run
(classical slice, result, std of the draws), per modality: CT in HU, MR by percentiles
(ultrasound, shown by the plugin's registered display: plugins/ultrasound/tests/test_us_figures.py)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

import medrecon
from medrecon.figures import reconstruction_figure
from medrecon.testing import disk_phantom

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def test_ct_window_and_classical_panel(tmp_path):
    m = medrecon.simulate(disk_phantom(3, 24), "ct.parallel", {"n_views": 12, "pixel_size": 0.8}, noise_std=0.5,
                          seed=0)
    vol = medrecon.reconstruct(m, "tv", progress=False, steps=20)
    shown = reconstruction_figure(m, vol, tmp_path / "f.png")
    assert shown["slice"] == 1 and shown["panels"] == ["classical", "reconstruction"]
    assert shown["window"] == [-1000.0, 1000.0]
    assert imread(tmp_path / "f.png").shape[2] in (3, 4)


def test_mr_percentile_window(tmp_path):
    pytest.importorskip("medrecon_mri")
    x = np.zeros((1, 32, 32), np.float32)
    x[0, 8:24, 8:24] = 100.0
    x[0, 12:20, 12:20] = 300.0
    vol_in = medrecon.Volume(x, np.diag([1.0, 1.0, 1.0, 1.0]), {"modality": "MR", "units": "arbitrary"})
    m = medrecon.simulate(vol_in, "mri.sense", {"coil_maps": {"synthetic": "birdcage", "n_coils": 4},
                                                "real_image": True,
                                                "mask": {"kind": "equispaced", "acceleration": 2, "seed": 0}})
    vol = medrecon.reconstruct(m, "sense", progress=False)
    shown = reconstruction_figure(m, vol, tmp_path / "f.png", z=0)
    lo, hi = shown["window"]
    assert shown["panels"] == ["classical", "reconstruction"]
    assert -20 < lo < 20 and 250 < hi < 350  # the image's range, not HU
