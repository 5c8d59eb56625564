"""The engine: results independent of batch size and workers, batching, volume samplers,
checkpoints and resume, outputs, and one-sentence errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import medrecon
from medrecon.engine import (
    PriorMismatchWarning,
    RunStopped,
    check_prior_fit,
    load_input,
    partial_path,
    reconstruct,
)
from medrecon.errors import FileFormatError, InputError
from medrecon.measurement import Measurement
from medrecon.samplers.base import Sampler
from medrecon.testing import disk_phantom, smooth_gaussian_prior, tiny_network_prior

Z, N = 4, 16

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


@pytest.fixture(scope="module")
def volume():
    vol = disk_phantom(Z, N)
    vol.meta.update({"series_description": "source", "dicom": {
        "PatientID": "P42", "PatientName": "Test^Patient", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1"}})
    return vol


@pytest.fixture(scope="module")
def meas(volume):
    return medrecon.simulate(volume, "ct.parallel", {"n_views": 8, "pixel_size": 0.8}, noise_std=0.5, seed=3)


@pytest.fixture(scope="module")
def gauss_prior():
    return smooth_gaussian_prior(N)


@pytest.fixture(scope="module")
def tiny_prior():
    return tiny_network_prior(N)


def run(m, *args, **kw):
    kw.setdefault("progress", False)
    return reconstruct(m, *args, **kw).data


# ------------------------------------------------------------------ independence of batching and workers
@pytest.mark.parametrize("sampler,kw", [("classical", {}), ("tv", {"steps": 20})])
def test_classical_and_tv_same_for_batch_sizes_and_workers(meas, sampler, kw):
    a = run(meas, sampler, batch_size=1, **kw)
    b = run(meas, sampler, batch_size=8, **kw)
    c = run(meas, sampler, batch_size=2, devices=["cpu", "cpu"], **kw)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-3)


def test_dds_gaussian_prior_same_for_batch_sizes_and_workers(meas, gauss_prior):
    a = run(meas, "dds", gauss_prior, steps=8, batch_size=1)
    b = run(meas, "dds", gauss_prior, steps=8, batch_size=8)
    c = run(meas, "dds", gauss_prior, steps=8, batch_size=2, devices="cpu,cpu")
    # the same up to float32 rounding, which depends on the batch through torch's CPU kernels: on
    # HU values of ~1000 after 8 steps, up to 0.05 HU (5e-5 relative) with torch 2.13 on 2 cores
    np.testing.assert_allclose(a, b, rtol=0, atol=0.2)
    np.testing.assert_allclose(a, c, rtol=0, atol=0.2)
    d = run(meas, "dds", gauss_prior, steps=8, batch_size=8, seed=1)
    assert np.abs(d - b).max() > 1.0  # stochastic: another seed gives another sample
    assert np.abs(b[1] - b[2]).max() > 0  # and slices are not seeded alike


def test_dds_network_prior_same_for_batch_sizes(meas, tiny_prior):
    a = run(meas, "dds", tiny_prior, steps=3, batch_size=1)
    b = run(meas, "dds", tiny_prior, steps=3, batch_size=8)
    scale = float(np.abs(a).max())
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)
    e = tiny_prior.eps(torch.randn(2, 1, N, N), torch.tensor([10, 500]))
    assert float(e.abs().mean()) > 1e-3  # the network really contributes
    assert tiny_prior.autocast is True  # the engine's amp choice does not touch the caller's prior


# ------------------------------------------------------------------ batching and volume samplers
class Spy(Sampler):
    name = "spy"
    needs_prior = False
    per_slice = True
    default_steps = 3
    params = {}

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        self.calls.append(y.shape[0])
        for s in range(steps):
            if progress is not None:
                progress(s + 1, steps)
        noise = torch.stack([torch.randn(operator.domain_shape, generator=g) for g in generators])
        return operator.classical(y) + noise


class VolumeSpy(Spy):
    per_slice = False


def test_batches_bound_the_work_per_call_and_progress_reports_slices(meas):
    spy = Spy()
    seen = []
    out = reconstruct(meas, spy, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert spy.calls == [2, 2]
    assert seen[-1] == (Z, Z)
    spy1 = Spy()
    np.testing.assert_allclose(reconstruct(meas, spy1, batch_size=1, progress=False).data, out.data, atol=1e-3)


def test_volume_sampler_gets_the_whole_volume(meas):
    spy = VolumeSpy()
    reconstruct(meas, spy, batch_size=2, progress=False)
    assert spy.calls == [Z]
    v = reconstruct(meas, "tv", steps=10, params={"dims": 3}, batch_size=2, progress=False)
    assert v.shape == (Z, N, N) and np.all(np.isfinite(v.data))


# ------------------------------------------------------------------ checkpoints and resume
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, meas, gauss_prior):
    full = run(meas, "dds", gauss_prior, steps=6, batch_size=3)
    out = tmp_path / "recon.nii.gz"
    with pytest.raises(RunStopped, match="resume"):
        reconstruct(meas, "dds", gauss_prior, steps=6, batch_size=1, output=out, progress=False, _stop_after=2)
    part = partial_path(out)
    assert sorted(p.name for p in part.iterdir()) == ["made.json", "slice_00000.npy", "slice_00001.npy",
                                                      "state.json"]
    assert not out.exists()
    state = json.loads((part / "state.json").read_text())
    assert state["settings"]["seed"] == 0 and len(state["settings_hash"]) == 64
    calls = []
    vol = reconstruct(meas, "dds", gauss_prior, steps=6, batch_size=4, output=out, resume=True,
                      progress=lambda d, t: calls.append(d))
    assert calls == [Z]  # the two slices left run as one batch (+ 2 resumed)
    np.testing.assert_allclose(vol.data, full, rtol=0, atol=1e-2)
    assert vol.meta["reconstruction"]["resumed_slices"] == 2
    assert out.exists() and not part.exists()
    np.testing.assert_allclose(medrecon.load_volume(out).data, full, rtol=0, atol=1e-2)


def test_resume_refuses_other_settings_and_stale_partials(tmp_path, meas):
    out = tmp_path / "r.nii.gz"
    with pytest.raises(RunStopped):
        reconstruct(meas, Spy(), batch_size=1, output=out, progress=False, _stop_after=1)
    with pytest.raises(InputError, match=r"different settings \(seed\)"):
        reconstruct(meas, Spy(), seed=5, output=out, resume=True, progress=False)
    with pytest.raises(InputError, match="unfinished run"):
        reconstruct(meas, Spy(), output=out, progress=False)
    reconstruct(meas, Spy(), seed=5, output=out, overwrite=True, progress=False)  # discards the stale run
    assert out.exists() and not partial_path(out).exists()
    with pytest.raises(InputError, match="already exists"):
        reconstruct(meas, Spy(), output=out, progress=False)


# ------------------------------------------------------------------ outputs
def test_result_volume_and_derived_dicom_series(tmp_path, meas, volume):
    import pydicom

    out = tmp_path / "dicom_out"
    v = reconstruct(meas, "classical", output=out, progress=False)
    assert v.shape == volume.shape and v.data.dtype == np.float32
    np.testing.assert_allclose(v.affine, meas.affine)
    assert v.meta["units"] == "HU" and v.meta["reconstruction"]["sampler"]["name"] == "classical"
    back = medrecon.load_volume(out)
    np.testing.assert_allclose(back.affine, meas.affine, atol=1e-4)
    np.testing.assert_allclose(back.data, v.data, atol=1.0)
    ds = pydicom.dcmread(sorted(out.iterdir())[0])
    assert ds.PatientID == "P42" and "DERIVED" in list(ds.ImageType)
    assert "medrecon classical" in ds.SeriesDescription


# ------------------------------------------------------------------ errors and warnings
def test_user_errors_are_one_sentence(meas, tmp_path):
    bad = Measurement(y=meas.y.copy(), operator_spec=meas.operator_spec, volume_shape=meas.volume_shape,
                      affine=meas.affine)
    bad.y[1, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        reconstruct(bad, "classical", progress=False)
    with pytest.raises(InputError, match="needs a diffusion prior"):
        reconstruct(meas, "dds", progress=False)
    with pytest.raises(InputError, match="batch_size"):
        reconstruct(meas, "classical", batch_size=0, progress=False)
    with pytest.raises(FileFormatError, match="no such"):
        reconstruct(str(tmp_path / "missing.h5"), "classical")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(FileFormatError, match="neither a medrecon measurement"):
        load_input(tmp_path / "other.h5")


def test_importer_is_used_for_raw_files(monkeypatch, tmp_path, meas):
    from medrecon.engine import inputs as core

    class FakeImporter:
        def can_read(self, path):
            return str(path).endswith(".raw")

        def read(self, path, **options):
            return meas

    monkeypatch.setattr(core, "_importers", lambda: iter([("fake.raw", FakeImporter())]))
    raw = tmp_path / "scan.raw"
    raw.write_bytes(b"raw")
    assert load_input(raw) is meas
    v = reconstruct(str(raw), "classical", progress=False)
    assert v.shape == (Z, N, N)


def test_prior_mismatch_warns(meas, tiny_prior):
    far = Measurement(y=meas.y, operator_spec=meas.operator_spec, volume_shape=meas.volume_shape,
                      affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        msgs = check_prior_fit(tiny_prior, far, far.operator())
    assert len(msgs) == 1 and "pixel size 2 mm" in msgs[0]
    assert any(issubclass(w.category, PriorMismatchWarning) for w in rec)
    assert check_prior_fit(tiny_prior, meas, meas.operator()) == []


@pytest.mark.shared_data
def test_real_projections_through_the_importer(shared_data):
    """Data Exchange projections (the tomopy tooth) are read by the ct.dxchange importer."""
    path = shared_data / "ct-projections-tooth" / "tooth.h5"
    if not path.is_file():
        pytest.skip("tooth.h5 is not present")
    m = load_input(path, row=0)
    assert m.y.shape[0] == 1 and m.provenance["importer"] == "ct.dxchange"
    v = reconstruct(m, "classical", progress=False)
    assert v.shape[0] == 1 and np.all(np.isfinite(v.data))
    assert float(v.data.max()) > 5 * float(np.abs(np.median(v.data)))  # the tooth stands out of the background


def test_mr_prior_is_bound_to_the_whole_volume_percentiles():
    """An MR prior maps intensities with the volume's percentiles: bound once, so batches agree."""

    prior = tiny_network_prior(N, modality="mr", pixel_size_mm=None)
    rng = np.random.default_rng(2)
    x = np.stack([rng.uniform(0, 100 * (k + 1), (N, N)) for k in range(Z)]).astype(np.float32)
    m = medrecon.simulate(medrecon.Volume(x, np.eye(4), {"modality": "MR"}), "template.scale", {"factor": 2.0})
    a = run(m, "dds", prior, steps=2, batch_size=1)
    b = run(m, "dds", prior, steps=2, batch_size=Z)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(np.abs(a).max()))
    assert prior._lo is None  # the caller's prior is not bound in place


def test_a_live_run_locks_its_partial_folder(tmp_path, meas):
    import subprocess
    import sys

    out = tmp_path / "l.nii.gz"
    with pytest.raises(RunStopped):
        reconstruct(meas, Spy(), batch_size=1, output=out, progress=False, _stop_after=1)
    lock = partial_path(out) / "lock"
    assert not lock.exists()  # released when the run ends, even early
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import socket

        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
        with pytest.raises(InputError, match=f"another run \\(pid {sleeper.pid}\\)"):
            reconstruct(meas, Spy(), output=out, resume=True, progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    reconstruct(meas, Spy(), output=out, resume=True, progress=False)  # a dead run's lock is taken over
    assert out.exists()


class Failing(Spy):
    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        if len(self.calls) >= 1:
            raise InputError("boom on the second batch")
        return super()._sample(y, operator, prior, steps, generators, progress, x_init)


def test_a_worker_error_stops_the_run_and_keeps_finished_slices(tmp_path, meas):
    out = tmp_path / "f.nii.gz"
    with pytest.raises(InputError, match="boom"):
        reconstruct(meas, Failing(), batch_size=1, devices=["cpu", "cpu"], output=out, progress=False)
    part = partial_path(out)
    assert 1 <= len(list(part.glob("slice_*.npy"))) < Z and not out.exists()
    assert not (part / "lock").exists()
    v = reconstruct(meas, Spy(), batch_size=2, output=out, resume=True, progress=False)
    assert v.meta["reconstruction"]["resumed_slices"] >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_two_gpu_workers_match_one(meas, gauss_prior, tiny_prior):
    """On a GPU machine: the same per-slice seeds give the same volume on CUDA as on the CPU,
    two workers on the GPU(s) give what one gives, and bf16 autocast stays close to fp32."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = run(meas, "dds", gauss_prior, steps=6, batch_size=2)
    gpu = run(meas, "dds", gauss_prior, steps=6, batch_size=3, device="cuda")
    scale = float(np.abs(cpu).max())
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-3 * scale)
    n = torch.cuda.device_count()
    devs = ["cuda:0", "cuda:1"] if n > 1 else ["cuda:0", "cuda:0"]
    two = run(meas, "dds", gauss_prior, steps=6, batch_size=1, devices=devs)
    np.testing.assert_allclose(two, gpu, rtol=0, atol=1e-3 * scale)
    fp32 = run(meas, "dds", tiny_prior, steps=4, batch_size=4, device="cuda")
    bf16 = run(meas, "dds", tiny_prior, steps=4, batch_size=4, device="cuda", amp=True)
    rel = np.linalg.norm(bf16 - fp32) / np.linalg.norm(fp32)
    assert rel < 5e-2, rel


class _Endless(Sampler):
    """A sampler whose every batch runs until its worker is told to stop (medrecon.stopping)."""

    name = "endless"

    def sample(self, y, op, prior, steps, generators=None, progress=None, **kw):
        import time

        from medrecon import stopping

        while True:
            stopping.check()
            time.sleep(0.01)


def test_an_interrupt_between_worker_starts_still_stops_the_started_workers(monkeypatch):
    """Ctrl-C can arrive while the main thread is still starting the workers: the ones already
    started must be stopped and joined before the interrupt propagates.  A worker left running
    native code while the interpreter exits aborts the process (the flaky exit 134 of the SIGINT
    test in tests/test_run_safety.py)."""
    import threading
    from types import SimpleNamespace

    from medrecon.engine.workers import RunProgress, Worker, run_slices
    from medrecon.operators.matrix import MatrixOperator

    op = MatrixOperator(np.eye(4), shape=[2, 2])
    plan = SimpleNamespace(live=SimpleNamespace(sampler=_Endless(), measurement=SimpleNamespace(
        y=np.zeros((4, 4), np.float32))), steps=1, seed=0, samples=1, antithetic=False, draw_batch=1, batch_size=1)
    workers = [Worker(i, torch.device("cpu"), op, None) for i in range(2)]
    real_start, started = threading.Thread.start, []

    def start(t):
        if started:  # the second start: Ctrl-C in the main thread
            raise KeyboardInterrupt
        real_start(t)
        started.append(t)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(KeyboardInterrupt):
        run_slices(workers, plan, [0, 1, 2, 3], np.zeros((4, 2, 2), np.float32), None,
                   RunProgress(None, 4, 0, 2, "test"))
    assert len(started) == 1 and not started[0].is_alive()


def test_an_interrupt_while_waiting_for_the_workers_waits_until_they_have_stopped(monkeypatch):
    """Ctrl-C lands while the main thread waits for the workers: it sets the stop event and returns
    only once every worker has finished (their own done events, not Thread.join, which on CPython
    3.11 can take an interrupted thread for stopped while it still runs torch code)."""
    import threading
    from types import SimpleNamespace

    from medrecon.engine import workers as wk
    from medrecon.operators.matrix import MatrixOperator

    op = MatrixOperator(np.eye(4), shape=[2, 2])
    plan = SimpleNamespace(live=SimpleNamespace(sampler=_Endless(), measurement=SimpleNamespace(
        y=np.zeros((4, 4), np.float32))), steps=1, seed=0, samples=1, antithetic=False, draw_batch=1, batch_size=1)
    workers = [wk.Worker(i, torch.device("cpu"), op, None) for i in range(2)]
    real_wait, calls = threading.Event.wait, []

    def wait(ev, timeout=None):
        if timeout == 0.2 and threading.current_thread() is threading.main_thread():  # wait_for_workers
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
        return real_wait(ev, timeout)

    monkeypatch.setattr(threading.Event, "wait", wait)
    with pytest.raises(KeyboardInterrupt):
        wk.run_slices(workers, plan, [0, 1, 2, 3], np.zeros((4, 2, 2), np.float32), None,
                      wk.RunProgress(None, 4, 0, 2, "test"))
    running = [t for t in threading.enumerate() if t.name.startswith("medrecon-worker-")]
    for t in running:  # done was set as the workers' last act: at most their bootstrap is left
        t.join(5)
    assert len(calls) == 3 and not any(t.is_alive() for t in running)
