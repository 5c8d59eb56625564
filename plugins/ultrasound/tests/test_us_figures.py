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
