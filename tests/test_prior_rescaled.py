"""A prior run at its own pixel size on a finer grid (medrecon.priors.rescaled) and the engine's use of it."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import medrecon
from medrecon.engine.checks import PriorMismatchWarning
from medrecon.errors import InputError
from medrecon.priors.rescaled import RescaledPrior
from medrecon.testing import tiny_network_prior

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_eps_is_the_coarse_tweedie_estimate_upsampled():
    """On the fine grid, x_t - sqrt(1 - abar) eps / ... gives back the prior's coarse Tweedie estimate,
    bilinearly upsampled: checked against the formula computed by hand."""
    base = tiny_network_prior(16, pixel_size_mm=1.6)
    fine = RescaledPrior(base, 2.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 32, 32, generator=g)
    t = torch.tensor([400, 30])
    with torch.no_grad():
        e = fine.eps(x, t)
        abar = base.alphas_cumprod.double()
        x0 = []
        for b in range(2):
            a = abar[t[b]]
            target = 1 / (1 + (1 - a) / (a * 4.0))
            tc = int((abar - target).abs().argmin())
            ac = abar[tc]
            xc = torch.nn.functional.avg_pool2d(x[b:b + 1], 2) * math.sqrt(ac / a)
            ec = base.eps(xc, torch.tensor([tc]))
            x0c = (xc - math.sqrt(1 - ac) * ec) / math.sqrt(ac)
            x0.append(torch.nn.functional.interpolate(x0c, size=(32, 32), mode="bilinear", align_corners=False))
        x0 = torch.cat(x0)
        a = abar[t].view(-1, 1, 1, 1).float()
        torch.testing.assert_close(e, (x - a.sqrt() * x0) / (1 - a).sqrt(), rtol=1e-4, atol=1e-4)
    assert fine.num_timesteps == base.num_timesteps and fine.config is base.config
    with pytest.raises(InputError):
        RescaledPrior(base, 0.5)


def _measurement(pixel_mm: float, n: int = 32):
    x = np.full((1, n, n), -1000.0, np.float32)
    yy, xx = np.mgrid[:n, :n]
    x[0][(yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 3) ** 2] = 40.0
    vol = medrecon.Volume(x, np.diag([pixel_mm, pixel_mm, 2.0, 1.0]), {"modality": "CT", "units": "HU"})
    return medrecon.simulate(vol, "ct.parallel", {"n_views": 16}, noise_std=0.005, relative=True)


def test_engine_runs_the_prior_at_its_scale_on_a_finer_grid_and_records_it():
    prior = tiny_network_prior(16, pixel_size_mm=1.6)
    auto_before = prior.autocast
    m = _measurement(0.4)  # 4x finer than the prior
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorMismatchWarning)  # no pixel-size warning: it is handled
        out = medrecon.reconstruct(m, "dds", prior, steps=3, progress=False)
    rec = out.meta["reconstruction"]["prior_scale"]
    assert rec["factor"] == pytest.approx(4.0) and rec["data_pixel_mm"] == pytest.approx(0.4)
    assert np.isfinite(out.data).all() and prior.autocast == auto_before
    with pytest.warns(PriorMismatchWarning, match="pixel size"):
        native = medrecon.reconstruct(m, "dds", prior, steps=3, progress=False, prior_scale="native")
    assert "prior_scale" not in native.meta["reconstruction"]
    assert not np.allclose(native.data, out.data)
    # the prior's own scale (or coarser data): no rescaling
    same = medrecon.reconstruct(_measurement(1.6), "dds", prior, steps=3, progress=False)
    assert "prior_scale" not in same.meta["reconstruction"]
    with pytest.raises(InputError, match="prior_scale"):
        medrecon.reconstruct(m, "dds", prior, steps=3, progress=False, prior_scale="double")
