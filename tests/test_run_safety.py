"""Runs that stop early leave the right things behind (issue 27, items 4 and 5), as real CLI
processes on a real measurement file:

- checks on the output (format, aliasing an input, a ``--like`` series) run before any work and
  create nothing;
- a run that fails removes the checkpoint folder it created when it holds no finished work, and
  keeps (and names) finished work otherwise;
- SIGTERM and SIGINT stop a run with a message and exit 143 / 130, release the lock, and
  ``--resume`` finishes it to the same result as an uninterrupted run;
- a stale lock whose PID now belongs to another process is taken over; a live owner is refused
  with the lock file named; temp files of a killed final write are removed by the next run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from medrecon.processes import process_start

pytestmark = pytest.mark.slow  # skipped by `make test-fast`

Z, N, VIEWS = 3, 32, 10
NEVER = 100_000  # steps (the most a run may ask): a run that got as far as computing would not end in the test


def medrecon(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "medrecon.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def refused(proc, *words):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("medrecon: warning:")]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _load(path):
    import medrecon as mr

    return mr.load_volume(path).data


# -- checks before work -------------------------------------------------------------------------

def test_unsupported_output_format_is_refused_before_any_work(study, tmp_path):
    out = tmp_path / "r.png"
    p = medrecon("reconstruct", study / "m.h5", "--sampler", "tv", "--steps", NEVER, "-o", out)
    refused(p, "cannot tell the output format", "r.png")
    assert os.listdir(tmp_path) == []  # no output, no .partial


def test_output_that_would_overwrite_the_measurement_is_refused(study, tmp_path):
    import shutil

    d = tmp_path / "study"
    d.mkdir()
    shutil.copy(study / "m.h5", d / "m.h5")
    before = (d / "m.h5").read_bytes()
    # a DICOM output folder that holds the measurement: with --overwrite it would be replaced
    p = medrecon("reconstruct", d / "m.h5", "--sampler", "tv", "--steps", NEVER, "-o", d, "--overwrite")
    refused(p, "would overwrite the measurement", "m.h5")
    assert os.listdir(d) == ["m.h5"] and (d / "m.h5").read_bytes() == before


@pytest.mark.parametrize("case", ["not_dicom", "is_the_output"])
def test_bad_like_series_is_refused_before_any_work(study, tmp_path, case):
    like = tmp_path / "like"
    like.mkdir()
    if case == "not_dicom":
        (like / "a.dcm").write_text("not a DICOM file")
        out = tmp_path / "series"
        p = medrecon("reconstruct", study / "m.h5", "--sampler", "tv", "--steps", NEVER, "-o", out, "--like", like)
        refused(p)
        assert "like" in p.stderr
        assert not out.exists() and not (tmp_path / "series.partial").exists()
    else:
        p = medrecon("reconstruct", study / "m.h5", "--sampler", "tv", "--steps", NEVER, "-o", like, "--like", like,
                     "--overwrite")
        refused(p, "would overwrite the --like series")
        assert os.listdir(like) == []


# -- failed runs clean up -----------------------------------------------------------------------

def test_failed_run_removes_what_it_created_and_keeps_finished_work(study, tmp_path, monkeypatch, caplog):
    import medrecon as mr
    from medrecon.engine import workers

    real, calls = workers.run_batch, {"n": 0}

    def fail_on(k):
        def run_batch(*a, **kw):
            calls["n"] += 1
            if calls["n"] >= k:
                raise RuntimeError("the sampler broke")
            return real(*a, **kw)
        return run_batch

    m = mr.load_measurement(study / "m.h5")
    out = tmp_path / "r.nii.gz"
    monkeypatch.setattr(workers, "run_batch", fail_on(1))
    with pytest.raises(RuntimeError, match="broke"):
        mr.reconstruct(m, "tv", steps=5, batch_size=1, progress=False, output=out)
    assert os.listdir(tmp_path) == []  # nothing finished: the .partial it made is gone

    calls["n"] = 0
    monkeypatch.setattr(workers, "run_batch", fail_on(2))
    with pytest.raises(RuntimeError, match="broke"):
        mr.reconstruct(m, "tv", steps=5, batch_size=1, progress=False, output=out)
    part = tmp_path / "r.nii.gz.partial"
    assert sorted(n for n in os.listdir(part) if n.endswith(".npy")) == ["slice_00000.npy"]
    assert "lock" not in os.listdir(part)
    assert "1 finished slice(s) are kept" in caplog.text and "--resume" in caplog.text


# -- signals, locks, temp files -----------------------------------------------------------------

def _start(args):
    return subprocess.Popen([sys.executable, "-m", "medrecon.cli.main", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_first_slice(proc, part, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if part.is_dir() and any(n.endswith(".npy") for n in os.listdir(part)):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_stops_the_run_and_resume_is_identical(study, tmp_path, sig, code, word):
    import medrecon as mr

    steps = 300
    full = mr.reconstruct(mr.load_measurement(study / "m.h5"), "tv", steps=steps, batch_size=1, progress=False).data
    out, part = tmp_path / "r.nii.gz", tmp_path / "r.nii.gz.partial"
    args = ["reconstruct", study / "m.h5", "--sampler", "tv", "--steps", steps, "--batch-size", 1, "-o", out]
    proc = _start(args)
    if not _wait_for_first_slice(proc, part):  # pragma: no cover - a machine fast enough to finish first
        proc.kill()
        pytest.skip("the run finished before it could be stopped")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # pragma: no cover
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"medrecon: {word}; finished slices are kept in" in err and "--resume" in err, err
    assert not out.exists()
    names = os.listdir(part)
    assert "lock" not in names  # released
    done = [n for n in names if n.endswith(".npy")]
    assert 1 <= len(done) < Z
    p = medrecon(*args, "--resume")
    assert p.returncode == 0, p.stderr
    assert f"{len(done)} resumed" in p.stdout
    np.testing.assert_array_equal(_load(out), full)


def test_sigint_stops_worker_threads_mid_batch(study, tmp_path):
    """With several workers the computation runs in threads, which Ctrl-C does not reach: the main
    thread asks them to stop, and they must stop at their next iteration (medrecon.stopping), not at
    the end of their batch.  Here each batch is a cross-validated TV weight search of 100,000
    iterations per candidate (many minutes); the run must be gone well within the guard."""
    out, part = tmp_path / "r.nii.gz", tmp_path / "r.nii.gz.partial"
    proc = _start(["reconstruct", study / "m.h5", "--sampler", "tv", "--steps", 100000, "--batch-size", 1,
                   "--devices", "cpu,cpu", "-o", out])
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (part / "lock").exists():
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    time.sleep(2.0)  # inside the weight search of the first batches
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)  # a hang guard: the uninterrupted run takes many minutes
    except subprocess.TimeoutExpired:  # pragma: no cover - the failure this test exists for
        proc.kill()
        pytest.fail("the workers did not stop within 60 s of SIGINT")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "medrecon: interrupted; finished slices are kept in" in err, err
    assert not out.exists() and not (part / "lock").exists()


@pytest.fixture()
def stopped_run(study, tmp_path):
    """A run stopped after one slice: (args, output, its .partial folder)."""
    out = tmp_path / "r.nii.gz"
    args = ["reconstruct", study / "m.h5", "--sampler", "tv", "--steps", 10, "--batch-size", 1, "-o", out]
    p = medrecon(*args, "--stop-after", 1)
    assert p.returncode == 2 and (tmp_path / "r.nii.gz.partial" / "slice_00000.npy").exists(), p.stderr
    return args, out, tmp_path / "r.nii.gz.partial"


def test_lock_of_a_reused_pid_is_taken_over(stopped_run):
    args, out, part = stopped_run
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start(other.pid)
        assert start is not None
        # the PID runs, but it is not the process that took the lock (another start time)
        (part / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid, "started": start - 1}))
        p = medrecon(*args, "--resume")
        assert p.returncode == 0, p.stderr
        assert "1 resumed" in p.stdout and out.exists()
    finally:
        other.kill()
        other.wait()


def test_lock_of_a_live_owner_is_refused_naming_the_lock_file(stopped_run):
    args, out, part = stopped_run
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = part / "lock"
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                    "started": process_start(other.pid)}))
        p = medrecon(*args, "--resume")
        refused(p, f"pid {other.pid}", "delete the lock file", str(lock))
        assert not out.exists()
    finally:
        other.kill()
        other.wait()


def test_temp_files_of_a_killed_final_write_are_removed(study, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "r.nii.gz"
    stale = tmp_path / f".r.nii.gz.tmp-{dead.pid}-0123abcd"
    stale.write_bytes(b"half a file")
    live = tmp_path / f".r.nii.gz.tmp-{os.getpid()}-4567cdef"  # this process: a write in progress
    live.write_bytes(b"being written")
    p = medrecon("reconstruct", study / "m.h5", "--sampler", "classical", "-o", out)
    assert p.returncode == 0, p.stderr
    assert out.exists() and not stale.exists() and live.exists()
