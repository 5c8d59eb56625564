"""Weights chosen from the measurement (held-out lines) and the free phase on raw multi-coil data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medrecon_mri.importer import KSpaceImporter
from medrecon_mri.masks import calibration_region
from medrecon_mri.rawsim import realistic_raw_kspace, reference_rss, write_fastmri

import medrecon
from medrecon.metrics import psnr
from medrecon.samplers import get_sampler
from medrecon.samplers.autotune import pop_last_tuning, tune_per_slice

MASK = {"kind": "random", "acceleration": 4, "center_fraction": 0.08, "seed": 0}


def _phantom(n=64):
    yy, xx = np.mgrid[:n, :n] / n - 0.5
    img = (xx**2 / 0.16 + yy**2 / 0.2 < 1).astype(float) * (1 + 0.5 * (xx > 0.05)) + 0.8 * (
        (xx + 0.1) ** 2 + (yy - 0.1) ** 2 < 0.01)
    return img


def _sense(n=64, real_image=False, **kw):
    return medrecon.get_operator("mri.sense", shape=[n, n], coil_maps={"synthetic": "birdcage", "n_coils": 6},
                                 mask=MASK, real_image=real_image, **kw)


def test_holdout_folds_partition_the_lines_outside_the_calibration_region():
    A = _sense()
    m = A.mask.numpy() > 0
    _, cs = calibration_region(m)
    folds = A.holdout_folds(4, seed=1)
    assert len(folds) == 4
    held_cols = [set(np.flatnonzero(h.numpy()[0])) for _, h in folds]
    for i, a in enumerate(held_cols):
        assert a and all(m[0, c] and not cs.start <= c < cs.stop for c in a)  # sampled, never calibration
        assert all(not a & b for b in held_cols[i + 1:])  # disjoint
    outside = {c for c in np.flatnonzero(m[0]) if not cs.start <= c < cs.stop}
    assert set().union(*held_cols) == outside
    x = torch.randn(1, 64, 64, dtype=torch.complex64)
    for fit, h in folds:
        y = fit(x)
        assert float(y[..., h].abs().max()) == 0  # the fit operator does not measure the held lines
        assert torch.allclose(y[..., ~h], A(x)[..., ~h])
    assert A.holdout_folds(4, seed=1)[0][1].equal(folds[0][1])  # deterministic
    tiny = medrecon.get_operator("mri.sense", shape=[32, 32], coil_maps={"synthetic": "birdcage", "n_coils": 4},
                                 mask=[1 if 14 <= i < 19 or i == 3 else 0 for i in range(32)])
    assert tiny.holdout_folds(4) is None  # one line outside the calibration region: nothing to split
    # CT holds out whole views (plugins/ct/tests/test_holdout.py), but not with fewer than 2 x 4 of them
    assert medrecon.get_operator("ct.parallel", shape=[32, 32], n_views=6).holdout_folds(4) is None


def test_complex_twin_only_where_the_phase_is_an_estimate():
    assert _sense().complex_twin() is None  # already complex
    assert _sense(real_image=True).complex_twin() is None  # simulated real image: the phase is exact
    A = _sense(real_image=True, phase_estimated=True)
    T = A.complex_twin()
    assert T.domain_is_complex and not A.domain_is_complex
    x = torch.rand(1, 64, 64)
    assert torch.allclose(T(x.to(torch.complex64)), A(x))
    assert T.adjoint(A(x)).is_complex()
    with pytest.raises(medrecon.InputError, match="phase_estimated"):
        _sense(phase_estimated="yes")


def _noisy(n=64, sigma=0.03, seed=0, slices=1):
    A = _sense(n)
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.stack([_phantom(n) * (1 + 0.2 * s) for s in range(slices)])).to(torch.complex64)
    noise = torch.randn((slices, *A.range_shape), dtype=torch.complex64, generator=g) * sigma
    return A, x, A(x) + noise * A.mask


def test_auto_sense_weight_near_the_oracle_and_better_than_none():
    A, x, y = _noisy()
    grid = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
    oracle = max(psnr(get_sampler("sense", lam=w).sample(y, A), x, clip=False) for w in grid)
    pop_last_tuning()
    auto = psnr(get_sampler("sense").sample(y, A), x, clip=False)
    rec = pop_last_tuning()
    assert rec["param"] == "lam" and rec["method"].startswith("cross-validation") and rec["values"][0] > 0
    assert auto > oracle - 0.5, (auto, oracle)
    assert auto > psnr(get_sampler("sense", lam=0).sample(y, A), x, clip=False) + 1


def test_tuning_is_per_slice_and_does_not_depend_on_the_batch():
    A, x, y = _noisy(slices=2, sigma=0.05)
    both = get_sampler("tv", iters=60).sample(y, A)
    values = pop_last_tuning()["values"]
    one = torch.cat([get_sampler("tv", iters=60).sample(y[b:b + 1], A) for b in range(2)])
    assert torch.allclose(both, one, atol=1e-5)
    assert len(values) == 2


def test_tune_per_slice_refuses_a_bad_grid_and_returns_none_without_folds():
    A, x, y = _noisy()
    with pytest.raises(medrecon.InputError, match="positive"):
        tune_per_slice(lambda w, yy, op: yy, (0.0, 1.0), y, A)
    ct = medrecon.get_operator("ct.parallel", shape=[32, 32], n_views=6)  # too few views to hold out
    assert tune_per_slice(lambda w, yy, op: yy, (1.0,), ct(torch.rand(1, 32, 32)), ct) == (None, None)


def test_tv_falls_back_to_its_fixed_weight_without_folds():
    ct = medrecon.get_operator("ct.parallel", shape=[32, 32], n_views=6)  # fewer than 2 x 4 views
    y = ct(torch.rand(1, 32, 32))
    pop_last_tuning()
    a = get_sampler("tv", iters=20).sample(y, ct)
    assert pop_last_tuning()["method"].startswith("fallback")
    assert torch.equal(a, get_sampler("tv", iters=20, lam_rel=2e-4).sample(y, ct))


def test_engine_records_the_chosen_weights(tmp_path):
    A, x, _ = _noisy()
    vol = medrecon.Volume(np.abs(x.numpy()).astype(np.float32), np.eye(4), {"modality": "MR"})
    m = medrecon.simulate(vol, "mri.sense", {"coil_maps": {"synthetic": "birdcage", "n_coils": 6}, "mask": MASK},
                          noise_std=0.02, relative=True, seed=0)
    rec = medrecon.reconstruct(m, "sense", progress=False)
    tuned = rec.meta["reconstruction"]["auto_tuned"]
    assert tuned["param"] == "lam" and set(tuned["values"]) == {"0"} and tuned["values"]["0"] > 0


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory):
    """Realistic raw 8-coil k-space of a phantom (loop coils, smooth phase, correlated noise)."""
    k, _ = realistic_raw_kspace(_phantom(96), 8, seed=0, noise=0.02)
    p = tmp_path_factory.mktemp("raw") / "raw.h5"
    write_fastmri(p, k)
    return p, reference_rss(k)


def _psnr_ls(x, ref):
    x = np.abs(np.asarray(x)).astype(np.float64)
    a = (x * ref).sum() / (x * x).sum()
    return 10 * np.log10(np.percentile(ref, 99.5) ** 2 / np.mean((a * x - ref) ** 2))


def test_raw_multicoil_import_defaults_beat_zero_filled(raw_file):
    """Maps estimated from the undersampled data (ESPIRiT by default), an estimated phase that the
    classical methods free, weights from held-out lines: SENSE and TV above zero-filled."""
    path, ref = raw_file
    m = KSpaceImporter().read(path, undersample=MASK)
    assert m.provenance["coil_method"] == "espirit" and m.operator_spec["params"]["phase_estimated"] is True
    A = m.operator()
    y = torch.as_tensor(m.y)
    zf = _psnr_ls(A.classical(y)[0], ref)
    sense = _psnr_ls(get_sampler("sense").sample(y, A)[0], ref)
    tv = _psnr_ls(get_sampler("tv", iters=100).sample(y, A)[0], ref)
    assert sense > zf + 1 and tv > zf + 1, (zf, sense, tv)


def test_cli_reconstructs_raw_kspace_with_chosen_weights(raw_file, tmp_path):
    """A real CLI process on raw fastMRI k-space: ``sense`` with its weight chosen from held-out
    lines beats the zero-filled RSS, and the output records the choice."""
    import subprocess
    import sys

    path, ref = raw_file
    cmd = [sys.executable, "-m", "medrecon.cli.main", "reconstruct", str(path), "-q", "--import-option",
           'undersample={"kind": "random", "acceleration": 4, "center_fraction": 0.08, "seed": 0}']
    outs = {}
    for sampler in ("classical", "sense"):
        out = tmp_path / f"{sampler}.nii.gz"
        r = subprocess.run(cmd + ["-s", sampler, "-o", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs[sampler] = medrecon.load_volume(out)
    zf, sense = (_psnr_ls(outs[s].data[0].T if outs[s].data[0].shape != ref.shape else outs[s].data[0], ref)
                 for s in ("classical", "sense"))
    assert sense > zf + 1, (zf, sense)
    tuned = outs["sense"].meta["reconstruction"]["auto_tuned"]
    assert tuned["param"] == "lam" and tuned["values"]["0"] > 0


def test_with_image_phase_carries_the_phase_for_a_real_prior():
    A = _sense(real_image=True, phase_estimated=True)
    g = torch.Generator().manual_seed(0)
    mag = torch.rand(2, 64, 64, generator=g)
    phase = torch.rand(2, 64, 64, generator=g) * 3
    P = A.with_image_phase(phase)
    assert not P.domain_is_complex and P.slice_varying and P.n_slices == 2
    x = (mag * torch.exp(1j * phase)).to(torch.complex64)
    assert torch.allclose(P(mag), A.complex_twin()(x), atol=1e-5)
    assert _sense(real_image=True).with_image_phase(phase) is None  # simulated: the phase is exact
    from medrecon.samplers.phase import phase_from_data

    ct = medrecon.get_operator("ct.parallel", shape=[32, 32], n_views=8)
    assert phase_from_data(ct, ct(torch.rand(1, 32, 32))) is ct
    y = A(mag[:1]) * torch.exp(1j * torch.tensor(0.7))  # data whose phase the maps do not carry
    Q = phase_from_data(A, y)
    assert Q is not A and Q.n_slices == 1
    assert float((Q(mag[:1]) - y).abs().norm()) < 0.5 * float((A(mag[:1]) - y).abs().norm())
    assert phase_from_data(A, y) is Q  # the next draw of the same batch: computed once
    assert phase_from_data(A, 2 * y) is not Q
