"""The engine with a slice-varying operator (``mri.sense`` with per-slice coil maps): every
batch, the intensity binding, volume samplers, workers and resume use ``op.for_slices``, so
a slice's result does not depend on the batch size and each slice is measured with its own maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medrecon
from medrecon.engine import RunStopped, partial_path, reconstruct
from medrecon.errors import InputError
from medrecon.measurement import Measurement

pytest.importorskip("medrecon_mri")

from medrecon_mri.arrays import array_sha256  # noqa: E402
from medrecon_mri.coils import synthetic_coil_maps  # noqa: E402

Z, N, C = 3, 24, 4
MASK = {"kind": "random", "acceleration": 2, "center_fraction": 0.25, "seed": 0}


def _maps() -> np.ndarray:
    """(Z, C, N, N): every slice its own coil geometry (coils turned and moved per slice)."""
    out = []
    for s in range(Z):
        m = synthetic_coil_maps((N, N), C, radius=1.2 + 0.4 * s, width=0.7, phase=1.0 + s)
        out.append(np.roll(m, s, axis=0) * np.exp(1j * 0.7 * s))
    return np.stack(out)


def _images() -> np.ndarray:
    yy, xx = np.mgrid[:N, :N] - N / 2
    out = []
    for s in range(Z):  # a disc and a bar, different per slice
        disc = (yy - 2 * s) ** 2 + (xx + s) ** 2 < (N / 3.5) ** 2
        bar = (np.abs(yy + 4 - s) < 2) & (np.abs(xx) < N / 3)
        out.append(100.0 * disc + (50.0 + 20 * s) * bar)
    return np.stack(out).astype(np.float32)


def _measurement(maps: np.ndarray, noise: float = 0.5) -> Measurement:
    spec_params = dict(shape=[N, N], coil_maps={"array": "coil_maps", "sha256": array_sha256(maps)}, mask=MASK,
                       real_image=True)
    op = medrecon.get_operator("mri.sense", arrays={"coil_maps": maps}, **spec_params)
    y = op(torch.from_numpy(_images())).numpy()
    rng = np.random.default_rng(0)
    y = (y + noise * (rng.normal(size=y.shape) + 1j * rng.normal(size=y.shape)) * op.mask.numpy()).astype(
        np.complex64)
    return Measurement(y=y, operator_spec=op.spec(), noise_std=noise, volume_shape=(Z, N, N),
                       affine=np.diag([1.0, 1.0, 3.0, 1.0]), units="a.u.", provenance={"source": "synthetic"},
                       arrays={"coil_maps": maps})


@pytest.fixture(scope="module")
def meas():
    return _measurement(_maps())


def run(m, *args, **kw):
    kw.setdefault("progress", False)
    return reconstruct(m, *args, **kw).data


def _corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("sampler,kw", [("classical", {}), ("tv", {"steps": 30}), ("sense", {"steps": 8})])
def test_batch_size_and_workers_do_not_change_a_slice(meas, sampler, kw):
    a = run(meas, sampler, batch_size=1, **kw)
    b = run(meas, sampler, batch_size=3, **kw)
    c = run(meas, sampler, batch_size=2, devices=["cpu", "cpu"], **kw)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-4)
    x = _images()
    for k in range(Z):  # each slice reconstructs its own image
        assert _corr(a[k], x[k]) > 0.9, (sampler, k)
    assert max(_corr(a[k], x[j]) for k in range(Z) for j in range(Z) if j != k) < 0.9


def test_a_slice_is_measured_with_its_own_maps(meas):
    """The engine's result for slice k is SENSE with slice k's maps, and wrong maps do worse."""
    got = run(meas, "sense", steps=8, batch_size=2)
    op = meas.operator()
    y = torch.from_numpy(meas.y)
    x = _images()
    for k in range(Z):
        own = op.for_slices([k]).sense(y[[k]], iters=8)[0].numpy()  # a real image (real_image=True)
        np.testing.assert_allclose(got[k], own, rtol=0, atol=1e-4)
    wrong = _measurement(_maps()[[1, 2, 0]])  # the same data with the maps of other slices
    wrong = Measurement(y=meas.y, operator_spec=wrong.operator_spec, noise_std=meas.noise_std,
                        volume_shape=meas.volume_shape, affine=meas.affine, units="a.u.", arrays=wrong.arrays)
    bad = run(wrong, "sense", steps=8, batch_size=3)
    for k in range(Z):
        err_own = np.linalg.norm(got[k] - x[k])
        assert np.linalg.norm(bad[k] - x[k]) > 1.5 * err_own


@pytest.fixture(scope="module")
def mr_prior():
    from medrecon.priors.model import DiffusionPrior, default_config

    prior = DiffusionPrior(default_config("mr", image_size=N, preset="tiny"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in prior.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return prior.eval().requires_grad_(False)


def test_diffusion_sampler_with_bound_mr_prior_same_for_batch_sizes(meas, mr_prior):
    """dds with an MR prior: the percentile binding pass runs classical per batch through for_slices,
    the norm estimate covers all slices, so batch 1 and batch 3 agree."""
    a = run(meas, "dds", mr_prior, steps=2, batch_size=1)
    b = run(meas, "dds", mr_prior, steps=2, batch_size=3)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(np.abs(a).max()))


@pytest.mark.parametrize("sampler", ["dds", "dps"])
def test_draws_side_by_side_use_each_slices_own_maps(meas, mr_prior, sampler):
    """``draw_batch``: the batch repeats the slices (``for_slices(idx * n)``), so each copy of a
    slice is measured with that slice's maps; the draws equal those run one after another."""
    kw = dict(steps=3, samples=2, batch_size=2, antithetic=True, progress=False)
    a = reconstruct(meas, sampler, mr_prior, **kw)
    b = reconstruct(meas, sampler, mr_prior, draw_batch=2, **kw)
    scale = float(np.abs(a.data).max())
    assert float(a.components["std"].data.max()) > 1e-3 * scale
    np.testing.assert_allclose(b.data, a.data, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(b.components["std"].data, a.components["std"].data, rtol=0, atol=1e-4 * scale)


def test_dps_does_not_clamp_an_mr_prior_by_default(meas, mr_prior):
    """An MR percentile prior leaves bright tissue beyond 1 in network units: dps's default
    clip ("auto") is off for it, the same as clip=None and not the [-1, 1] clamp."""
    a = run(meas, "dps", mr_prior, steps=3)
    b = run(meas, "dps", mr_prior, steps=3, params={"clip": None})
    c = run(meas, "dps", mr_prior, steps=3, params={"clip": 1.0})
    scale = float(np.abs(a).max())
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)
    assert float(np.abs(a - c).max()) > 1e-3 * scale


def test_volume_samplers_get_the_operator_for_all_slices(meas, mr_prior):
    """tv with dims=3 and dds3d couple the slices: one call with op.for_slices(range(Z))."""
    v = run(meas, "tv", params={"dims": 3}, steps=30)
    x = _images()
    for k in range(Z):
        assert _corr(v[k], x[k]) > 0.9
    d = run(meas, "dds3d", mr_prior, steps=2)
    assert d.shape == (Z, N, N) and np.all(np.isfinite(d))


def test_norm_estimate_is_the_largest_over_all_slices(meas):
    from medrecon.operators.linalg import estimate_norm

    op = meas.operator().with_precision(True)
    each = [estimate_norm(op.for_slices([k]).with_precision(True), iters=100) for k in range(Z)]
    assert len(set(each)) == 1  # any selection gets the root's estimate
    scaled = medrecon.get_operator("mri.sense", shape=[N, N], mask=MASK,
                                   coil_maps=_maps() * np.array([1.0, 3.0, 0.5])[:, None, None, None])
    assert estimate_norm(scaled.for_slices([0])) == pytest.approx(3 * estimate_norm(op), rel=1e-3)


def test_killed_run_resumes_with_per_slice_maps(tmp_path, meas):
    full = run(meas, "sense", steps=6, batch_size=3)
    out = tmp_path / "r.nii.gz"
    with pytest.raises(RunStopped):
        reconstruct(meas, "sense", steps=6, batch_size=1, output=out, progress=False, _stop_after=1)
    assert (partial_path(out) / "slice_00000.npy").exists()
    vol = reconstruct(meas, "sense", steps=6, batch_size=2, output=out, resume=True, progress=False)
    assert vol.meta["reconstruction"]["resumed_slices"] == 1
    np.testing.assert_allclose(vol.data, full, rtol=0, atol=1e-4)


def test_maps_for_another_number_of_slices_is_one_sentence(meas):
    two = Measurement(y=meas.y[:2], operator_spec=meas.operator_spec, noise_std=meas.noise_std,
                      volume_shape=(2, N, N), affine=meas.affine, units="a.u.", arrays=meas.arrays)
    with pytest.raises(InputError, match="per-slice parameters for 3 slice"):
        reconstruct(two, "classical", progress=False)


def test_simulate_measures_each_slice_with_its_own_maps_in_any_batch_and_slab():
    maps = _maps()
    vol = medrecon.Volume(_images(), np.diag([1.0, 1.0, 3.0, 1.0]), {"modality": "MR", "units": "a.u."})
    params = {"coil_maps": maps, "mask": MASK, "real_image": True}
    full = medrecon.get_operator("mri.sense", shape=[N, N], **params)
    want = full(torch.from_numpy(_images())).numpy()
    for bs in (1, 2, 3):
        m = medrecon.simulate(vol, "mri.sense", params, batch_size=bs)
        np.testing.assert_allclose(m.y, want, rtol=0, atol=1e-4 * np.abs(want).max())
    slab = medrecon.simulate(vol, "mri.sense", params, batch_size=1, slices="1:3")
    np.testing.assert_allclose(slab.y, want[1:3], rtol=0, atol=1e-4 * np.abs(want).max())
    op = slab.operator()  # the spec records the slab's slices: maps 1 and 2
    assert op.n_slices == 2 and op.spec()["slices"] == [1, 2]
    x = reconstruct(slab, "classical", progress=False).data
    assert x.shape == (2, N, N)
    with pytest.raises(InputError, match="parameters for 3 slice"):
        medrecon.simulate(medrecon.Volume(_images()[:2], np.eye(4), {"units": "a.u."}), "mri.sense", params)
