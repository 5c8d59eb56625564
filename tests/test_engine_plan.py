"""Plan, then execute: ``medrecon.plan`` resolves every decision of a run into a ``RunPlan``
(JSON round trip, nothing written), ``execute`` carries it out and decides nothing, and what the
output records is what ran (the step count capped at the prior's schedule, issue 21's bug)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import medrecon
from medrecon.engine import RunPlan, RunStopped, execute, partial_path, plan, reconstruct
from medrecon.errors import InputError
from medrecon.testing import disk_phantom

Z, N = 3, 16

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.filterwarnings("ignore::medrecon.engine.PriorMismatchWarning")]


@pytest.fixture(scope="module")
def meas():
    vol = disk_phantom(Z, N)
    return medrecon.simulate(vol, "ct.parallel", {"n_views": 8, "pixel_size": 0.8}, noise_std=0.5, seed=3)


@pytest.fixture(scope="module")
def short_prior():
    """A closed-form prior with a 40-step schedule (so a step count above it is cheap to run)."""
    import torch

    from medrecon.priors.gaussian import GaussianPrior, smooth_covariance

    return GaussianPrior(torch.full((N, N), -500.0), smooth_covariance(N, N, std=500.0), num_timesteps=40)


def test_plan_round_trips_through_json_and_writes_nothing(tmp_path, meas, short_prior):
    out = tmp_path / "r.nii.gz"
    p = plan(meas, "dds", short_prior, steps=6, output=out, samples=2, progress=False)
    assert p.mode == "slices" and p.n_slices == Z and p.components == ["mean", "std"]
    assert p.outputs == {"": str(out), "std": str(out).replace(".nii.gz", ".std.nii.gz")}
    assert p.sampler["name"] == "dds" and p.steps == 6 and p.settings["steps"] == 6
    back = RunPlan.from_json(p.to_json())
    assert back == p and back.live is None
    assert json.loads(back.to_json()) == json.loads(p.to_json())
    assert list(tmp_path.iterdir()) == []  # planning checks the output but writes nothing


def test_execute_of_a_plan_is_reconstruct(meas, short_prior):
    a = reconstruct(meas, "dds", short_prior, steps=5, progress=False)
    b = execute(plan(meas, "dds", short_prior, steps=5, progress=False))
    np.testing.assert_array_equal(a.data, b.data)
    assert a.meta["reconstruction"]["steps"] == b.meta["reconstruction"]["steps"] == 5


def test_steps_above_the_prior_schedule_are_capped_and_recorded_as_run(tmp_path, meas, short_prior):
    T = short_prior.num_timesteps
    p = plan(meas, "dds", short_prior, steps=T + 60, progress=False)
    assert p.steps == T and p.steps_requested == T + 60 and p.settings["steps"] == T
    capped = execute(p)
    exact = reconstruct(meas, "dds", short_prior, steps=T, progress=False)
    np.testing.assert_array_equal(capped.data, exact.data)
    rec = capped.meta["reconstruction"]
    assert rec["steps"] == T and rec["steps_requested"] == T + 60
    assert "steps_requested" not in exact.meta["reconstruction"]
    # the checkpoint key is what ran: a run stopped with steps=T+60 resumes with steps=T
    out = tmp_path / "r.nii.gz"
    with pytest.raises(RunStopped):
        reconstruct(meas, "dds", short_prior, steps=T + 60, output=out, batch_size=1, progress=False,
                    _stop_after=1)
    assert partial_path(out).exists()
    resumed = reconstruct(meas, "dds", short_prior, steps=T, output=out, resume=True, batch_size=1,
                          progress=False)
    assert resumed.meta["reconstruction"]["resumed_slices"] == 1
    np.testing.assert_array_equal(resumed.data, exact.data)


def test_a_plan_read_from_json_cannot_execute_and_bad_json_is_one_sentence(meas):
    p = RunPlan.from_json(plan(meas, "classical", progress=False).to_json())
    with pytest.raises(InputError, match="read from JSON"):
        execute(p)
    with pytest.raises(InputError, match="invalid JSON"):
        RunPlan.from_json("{not json")
    with pytest.raises(InputError, match="not a medrecon run plan"):
        RunPlan.from_json('{"frob": 1}')
    with pytest.raises(InputError, match="RunPlan"):
        execute({"mode": "slices"})


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "medrecon.cli.main", *map(str, args)], capture_output=True,
                          text=True)


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path, meas):
    path = tmp_path / "m.h5"
    medrecon.save_measurement(meas, path)
    out = tmp_path / "r.nii.gz"
    proc = _cli("reconstruct", path, "--sampler", "tv", "--steps", "20", "-o", out, "--dry-run", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    p = RunPlan.from_json(proc.stdout)
    assert p.sampler["name"] == "tv" and p.steps == 20 and p.output == str(out) and p.n_slices == Z
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]
    # the plan's checks are the run's: an existing output is refused before anything runs
    out.write_bytes(b"mine")
    proc = _cli("reconstruct", path, "--sampler", "tv", "-o", out, "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--overwrite" in proc.stderr
    assert out.read_bytes() == b"mine"
