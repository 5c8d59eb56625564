"""Cross-validation folds of the 2D CT projectors (whole views held out) and what uses them:
the TV weight chosen per slice from the measurement (``tv`` with ``lam_rel="auto"``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medrecon
from medrecon.samplers import get_sampler
from medrecon.samplers.autotune import pop_last_tuning
from medrecon.testing import disk_phantom


@pytest.mark.parametrize("name", ["ct.parallel", "ct.fan"])
def test_folds_partition_the_views_and_each_fit_operator_is_exact(name):
    params = {"shape": 24, "n_views": 10}
    if name == "ct.fan":
        params.update(source_to_center=60.0, source_to_detector=120.0)
    A = medrecon.get_operator(name, **params)
    folds = A.holdout_folds(3, seed=1)
    assert len(folds) == 3
    held_views = [torch.nonzero(h.any(-1)).flatten().tolist() for _, h in folds]
    assert sorted(sum(held_views, [])) == list(range(10))  # disjoint, covering every view
    assert all(len(v) >= 3 for v in held_views)  # 10 views dealt into 3 folds
    g = torch.Generator().manual_seed(0)
    for (fit, _held), views in zip(folds, held_views, strict=True):
        x = torch.randn(2, 24, 24, generator=g, dtype=torch.float64)
        y = torch.randn(2, *A.range_shape, generator=g, dtype=torch.float64)
        fx = fit(x)
        assert torch.all(fx[:, views] == 0)
        kept = [v for v in range(10) if v not in views]
        torch.testing.assert_close(fx[:, kept], A(x)[:, kept])
        torch.testing.assert_close((fx * y).sum(), (x * fit.adjoint(y)).sum())  # exact adjoint
        assert fit.classical(fx).shape == (2, 24, 24)


def test_folds_are_deterministic_spread_and_refused_when_too_few_views():
    A = medrecon.get_operator("ct.parallel", shape=16, n_views=8)
    a = [h for _, h in A.holdout_folds(4, seed=3)]
    b = [h for _, h in A.holdout_folds(4, seed=3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    for h in a:  # each fold holds out one of every run of 4 consecutive views: spread over the arc
        v = torch.nonzero(h.any(-1)).flatten().tolist()
        assert v[0] < 4 <= v[1]
    assert A.holdout_folds(5) is None and A.holdout_folds(1) is None


def test_fbp_of_a_fold_uses_its_own_views():
    """The classical reconstruction of a fold is the FBP of the kept views, not of zero-filled ones
    (which would lose a quarter of the intensity)."""
    x = (torch.from_numpy(disk_phantom(1, 32, noise_hu=0.0).data).float() + 1000.0) * 2e-5  # 1/mm
    A = medrecon.get_operator("ct.parallel", shape=32, n_views=64)
    fit, held = A.holdout_folds(4)[0]
    y = A(x)
    full, part = A.classical(y), fit.classical(y * ~held)
    inside = x[0] > 0
    assert abs(float(part[0][inside].mean() / full[0][inside].mean()) - 1) < 0.05


def test_tv_chooses_its_weight_on_sparse_view_ct_and_beats_the_fixed_fallback():
    """8 views, 2 % noise: the cross-validated weight is recorded and gives a better image than the
    fixed fallback weight (2e-4 of the range, which is too weak at this noise)."""
    n = 48
    x = torch.from_numpy(disk_phantom(2, n, noise_hu=0.0).data).float()  # HU
    x[:, n // 2 - 4:n // 2 + 4, n // 3:n // 3 + 6] = 300.0  # an insert, so the image is not one disc
    A = medrecon.get_operator("ct.parallel", shape=n, n_views=8, pixel_size=2.0)
    with torch.no_grad():
        y0 = A(x)
    g = torch.Generator().manual_seed(0)
    y = y0 + 0.02 * y0.pow(2).mean().sqrt() * torch.randn(y0.shape, generator=g)
    pop_last_tuning()
    with torch.no_grad():
        auto = get_sampler("tv").sample(y, A, steps=150)
    rec = pop_last_tuning()
    assert rec is not None and rec["param"] == "lam_rel" and len(rec["values"]) == 2
    assert all(1e-4 / 10 < v < 1.0 for v in rec["values"])
    with torch.no_grad():
        fixed = get_sampler("tv", lam_rel=2e-4).sample(y, A, steps=150)

    def err(r):
        return float((r - x).pow(2).mean())

    assert err(auto) < 0.8 * err(fixed)
    assert np.isfinite(auto.numpy()).all()
