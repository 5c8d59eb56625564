"""The engine with volume samplers: step-boundary checkpoints and resume, slice geometry checks."""

from __future__ import annotations

import numpy as np
import pytest

import medrecon
from medrecon.engine import RunStopped, check_volume_geometry, partial_path, reconstruct
from medrecon.engine.checkpoint import VOLUME_STATE
from medrecon.errors import InputError
from medrecon.testing import disk_phantom, tiny_network_prior

Z, N = 4, 16
STEPS = 5

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


@pytest.fixture(scope="module")
def meas():
    vol = disk_phantom(Z, N)
    return medrecon.simulate(vol, "ct.parallel", {"n_views": 8, "pixel_size": 0.8}, noise_std=0.5, seed=3)


@pytest.fixture(scope="module")
def tiny_prior():
    return tiny_network_prior(N)


def _run(m, prior, **kw):
    kw.setdefault("progress", False)
    return reconstruct(m, "dds3d", prior, steps=STEPS, seed=2, **kw)


def test_stopped_volume_run_resumes_to_the_uninterrupted_result(tmp_path, meas, tiny_prior, monkeypatch):
    full = _run(meas, tiny_prior).data
    out = tmp_path / "recon.nii.gz"
    part = partial_path(out)
    with pytest.raises(RunStopped, match="step 2 of 5"):
        _run(meas, tiny_prior, output=out, _stop_after_steps=2)
    assert (part / VOLUME_STATE).exists() and not out.exists()
    assert not list(part.glob("slice_*.npy"))  # the volume is not done: no slices yet
    # tensors in safetensors, the rest as JSON in its metadata: no pickle
    from safetensors import safe_open

    with safe_open(str(part / VOLUME_STATE), framework="pt") as f:
        assert '"step": 2' in f.metadata()["medrecon"]
        assert "x" in set(f.keys())
    # a second stop further on, then the rest
    with pytest.raises(RunStopped, match="step 3 of 5"):
        _run(meas, tiny_prior, output=out, resume=True, _stop_after_steps=3)
    seen = []
    from medrecon.samplers import admm_tvz

    orig, steps_run = admm_tvz.ADMMTVz.step, []
    monkeypatch.setattr(admm_tvz.ADMMTVz, "step", lambda self, *a, **k: steps_run.append(1) or orig(self, *a, **k))
    v = _run(meas, tiny_prior, output=out, resume=True, progress=lambda d, t: seen.append((d, t)))
    assert len(steps_run) == STEPS - 3  # it continued from step 3, not from the start
    np.testing.assert_allclose(v.data, full, rtol=0, atol=1e-5 * float(np.abs(full).max()))
    assert out.exists() and not part.exists()
    assert seen[-1] == (Z, Z)


def test_without_resume_a_stopped_volume_run_is_refused_then_restarted(tmp_path, meas, tiny_prior):
    out = tmp_path / "recon.nii.gz"
    with pytest.raises(RunStopped):
        _run(meas, tiny_prior, output=out, _stop_after_steps=1)
    with pytest.raises(InputError, match="unfinished run"):
        _run(meas, tiny_prior, output=out)
    # overwrite discards the state and starts from step 0: same result as a fresh run
    v = _run(meas, tiny_prior, output=out, overwrite=True)
    np.testing.assert_allclose(v.data, _run(meas, tiny_prior).data, rtol=0, atol=1e-5 * float(np.abs(v.data).max()))


def test_throttled_checkpoints_are_written_on_an_interrupt(tmp_path, meas, tiny_prior, monkeypatch):
    """With a long interval nothing is written between steps, but an interrupt writes the last step."""
    from medrecon.samplers import admm_tvz

    out = tmp_path / "recon.nii.gz"
    calls = {"n": 0}
    orig = admm_tvz.ADMMTVz.step

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    monkeypatch.setattr(admm_tvz.ADMMTVz, "step", step)
    with pytest.raises(KeyboardInterrupt):
        _run(meas, tiny_prior, output=out, checkpoint_every_s=3600)
    monkeypatch.setattr(admm_tvz.ADMMTVz, "step", orig)
    from safetensors import safe_open

    with safe_open(str(partial_path(out) / VOLUME_STATE), framework="pt") as f:
        assert '"step": 3' in f.metadata()["medrecon"]
    v = _run(meas, tiny_prior, output=out, resume=True)
    full = _run(meas, tiny_prior).data
    np.testing.assert_allclose(v.data, full, rtol=0, atol=1e-5 * float(np.abs(full).max()))


def test_resume_refuses_a_state_of_another_run(tmp_path, meas, tiny_prior):
    out = tmp_path / "recon.nii.gz"
    with pytest.raises(RunStopped):
        _run(meas, tiny_prior, output=out, _stop_after_steps=2)
    with pytest.raises(InputError, match="different settings"):
        reconstruct(meas, "dds3d", tiny_prior, steps=STEPS + 1, seed=2, output=out, resume=True, progress=False)
    (partial_path(out) / VOLUME_STATE).write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="cannot be read"):
        _run(meas, tiny_prior, output=out, resume=True)


# ------------------------------------------------------------------ slice geometry
def _with(m, **changes):
    from dataclasses import replace

    return replace(m, **changes)


def test_volume_sampler_needs_two_evenly_spaced_slices(meas, tiny_prior):
    assert check_volume_geometry(meas, medrecon.samplers.get_sampler("dds3d")) == pytest.approx(2.0)
    one = _with(meas, y=meas.y[:1], volume_shape=(1, N, N))
    with pytest.raises(InputError, match="at least 2 slices") as exc:
        reconstruct(one, "dds3d", tiny_prior, steps=2, progress=False)
    assert "\n" not in str(exc.value)
    uneven = _with(meas, provenance={**(meas.provenance or {}), "slice_positions": [0.0, 2.0, 4.0, 7.0]})
    with pytest.raises(InputError, match="equally spaced") as exc:
        reconstruct(uneven, "dds3d", tiny_prior, steps=2, progress=False)
    assert "\n" not in str(exc.value)
    flat = np.diag([0.8, 0.8, 0.0, 1.0])
    with pytest.raises(InputError, match="slice step is zero"):
        reconstruct(_with(meas, affine=flat), "mbir3d", tiny_prior, steps=2, progress=False)
    # 2D samplers are not concerned
    assert reconstruct(one, "classical", progress=False).shape == (1, N, N)
