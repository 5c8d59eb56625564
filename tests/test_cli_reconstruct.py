"""``medrecon reconstruct`` / ``medrecon evaluate`` as real processes: simulate -> reconstruct ->
evaluate, one-line errors with exit status 2, and resume after a stop and after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

Z, N, VIEWS = 3, 32, 10
TV_STEPS = 60


def medrecon(*args, cwd=None, check=False):
    proc = subprocess.run([sys.executable, "-m", "medrecon.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines()
             if not ln.startswith("medrecon: warning:") and "slices done" not in ln]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_simulate_reconstruct_evaluate(study):
    d = study
    out = medrecon("reconstruct", d / "m.h5", "--sampler", "classical", "-o", d / "fbp.nii.gz", check=True).stdout
    assert "wrote" in out and "3 slice(s)" in out
    medrecon("reconstruct", d / "m.h5", "--sampler", "tv", "--steps", TV_STEPS, "--batch-size", 2,
             "-o", d / "tv.nii.gz", check=True)
    res = medrecon("evaluate", d / "tv.nii.gz", "--reference", d / "truth.nii.gz", "--classical", d / "fbp.nii.gz",
                   "--json", d / "tv.json", "--png", d / "tv.png", check=True)
    assert "PSNR" in res.stdout and "window [-1000, 1000]" in res.stdout  # CT default window, stated
    m = json.loads((d / "tv.json").read_text())
    assert m["window"] == [-1000.0, 1000.0] and len(m["psnr_per_slice"]) == Z
    assert m["psnr"] > m["classical"]["psnr"] + 1.0, (m["psnr"], m["classical"]["psnr"])  # TV beats FBP at 10 views
    assert m["ssim"] > m["classical"]["ssim"]
    assert (d / "tv.png").stat().st_size > 10_000


@pytest.mark.parametrize("case", ["missing", "not_measurement", "no_prior", "unknown_sampler"])
def test_bad_input_exits_2_with_one_line(study, tmp_path, case):
    d = study
    if case == "missing":
        p = medrecon("reconstruct", tmp_path / "nope.h5", "--sampler", "classical", "-o", tmp_path / "o.nii.gz")
        one_line_error(p, "no such", "nope.h5")
    elif case == "not_measurement":
        import h5py

        with h5py.File(tmp_path / "x.h5", "w") as f:
            f["data"] = np.zeros(4)
        p = medrecon("reconstruct", tmp_path / "x.h5", "--sampler", "classical", "-o", tmp_path / "o.nii.gz")
        one_line_error(p, "x.h5", "neither a medrecon measurement nor a raw format")
    elif case == "no_prior":
        p = medrecon("reconstruct", d / "m.h5", "--sampler", "dds", "-o", tmp_path / "o.nii.gz")
        one_line_error(p, "'dds' needs a diffusion prior", "--prior")
    else:
        p = medrecon("reconstruct", d / "m.h5", "--sampler", "tvv", "-o", tmp_path / "o.nii.gz")
        one_line_error(p, "unknown sampler 'tvv'", "did you mean 'tv'")
    assert not (tmp_path / "o.nii.gz").exists()


def _load(path):
    import medrecon as mr

    return mr.load_volume(path).data


def test_stopped_run_resumes_to_the_same_result(study, tmp_path):
    import medrecon as mr

    d = study
    full = mr.reconstruct(mr.load_measurement(d / "m.h5"), "tv", steps=20, batch_size=3, progress=False).data
    out = tmp_path / "r.nii.gz"
    p = medrecon("reconstruct", d / "m.h5", "--sampler", "tv", "--steps", 20, "--batch-size", 1, "-o", out,
                 "--stop-after", 1)
    one_line_error(p, "--resume")
    assert sorted(os.listdir(tmp_path / "r.nii.gz.partial")) == ["made.json", "slice_00000.npy", "state.json"]
    p = medrecon("reconstruct", d / "m.h5", "--sampler", "tv", "--steps", 20, "-o", out, "--resume", check=True)
    assert "1 resumed" in p.stdout and "3/3 slices done" in p.stderr  # a log line when not on a terminal
    assert not (tmp_path / "r.nii.gz.partial").exists()
    np.testing.assert_allclose(_load(out), full, rtol=0, atol=1e-3)


def test_sigkilled_run_resumes(study, tmp_path):
    """A run killed with SIGKILL after its first slice keeps that slice; --resume finishes the rest."""
    d = study
    out = tmp_path / "k.nii.gz"
    part = tmp_path / "k.nii.gz.partial"
    args = [sys.executable, "-m", "medrecon.cli.main", "reconstruct", str(d / "m.h5"), "--sampler", "tv",
            "--steps", 250, "--batch-size", 1, "-o", str(out)]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if part.is_dir() and any(n.endswith(".npy") for n in os.listdir(part)):
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():  # pragma: no cover - the machine was fast enough to finish first
        pytest.skip("the run finished before it could be killed")
    done = [n for n in os.listdir(part) if n.endswith(".npy")]
    assert 1 <= len(done) < Z and not out.exists()
    p = medrecon("reconstruct", d / "m.h5", "--sampler", "tv", "--steps", 250, "--batch-size", 2, "-o", out,
                 "--resume", check=True)
    assert f"{len(done)} resumed" in p.stdout and not part.exists()
    assert _load(out).shape == (Z, N, N)


def test_dds_with_a_prior_folder_warns_about_pixel_size(study, tmp_path):
    import torch

    from medrecon.priors.model import DiffusionPrior, default_config

    torch.manual_seed(0)
    DiffusionPrior(default_config("ct", image_size=N, pixel_size_mm=0.3, preset="tiny")).save(tmp_path / "prior")
    out = tmp_path / "dds.nii.gz"
    p = medrecon("reconstruct", study / "m.h5", "--sampler", "dds", "--prior", tmp_path / "prior", "--steps", 2,
                 "--param", "eta=0.5", "--device", "cpu", "-o", out, check=True)
    warn = [ln for ln in p.stderr.splitlines() if ln.startswith("medrecon: warning:")]
    assert len(warn) == 1 and "pixel size 1 mm" in warn[0] and "0.3 mm" in warn[0], p.stderr
    assert "Traceback" not in p.stderr and out.exists()


@pytest.mark.parametrize("sampler", ["dds3d", "mbir3d"])
def test_volume_samplers_through_the_cli(study, tmp_path, sampler):
    import nibabel as nib
    import torch

    from medrecon.priors.model import DiffusionPrior, default_config

    torch.manual_seed(0)
    DiffusionPrior(default_config("ct", image_size=N, pixel_size_mm=1.0, preset="tiny")).save(tmp_path / "prior")
    out = tmp_path / f"{sampler}.nii.gz"
    medrecon("reconstruct", study / "m.h5", "--sampler", sampler, "--prior", tmp_path / "prior", "--steps", 3,
             "--device", "cpu", "-o", out, "--quiet", check=True)
    img = nib.load(out)
    assert img.shape[2] == Z and np.isfinite(np.asarray(img.dataobj)).all()


def test_volume_sampler_on_one_slice_is_one_line_exit_2(study, tmp_path):
    from dataclasses import replace

    from medrecon.measurement import load_measurement, save_measurement

    m = load_measurement(study / "m.h5")
    one = replace(m, y=m.y[:1], volume_shape=(1, *m.volume_shape[1:]))
    save_measurement(one, tmp_path / "one.h5")
    proc = medrecon("reconstruct", tmp_path / "one.h5", "--sampler", "tv", "-p", "dims=3", "--steps", "5",
                    "-o", tmp_path / "r.nii.gz", "--quiet")
    one_line_error(proc, "at least 2 slices")
