"""Split runs (``num_parts``/``part_id``, ``--num-parts/--part-id``): each part computes a
contiguous block of slices into the shared ``OUT.partial/``; the last one writes the output,
identical to one unsplit run, whatever order or concurrency the parts ran in."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import medrecon
from medrecon.engine import RunStopped, part_slices, partial_path, reconstruct
from medrecon.errors import InputError
from medrecon.testing import disk_phantom, smooth_gaussian_prior

Z, N = 5, 16

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.filterwarnings("ignore::medrecon.engine.PriorMismatchWarning")]


@pytest.fixture(scope="module")
def meas():
    vol = disk_phantom(Z, N)
    return medrecon.simulate(vol, "ct.parallel", {"n_views": 8, "pixel_size": 0.8}, noise_std=0.5, seed=3)


@pytest.fixture(scope="module")
def gauss_prior():
    return smooth_gaussian_prior(N)


@pytest.mark.parametrize("z,n", [(5, 1), (5, 2), (5, 5), (10, 3), (7, 4), (256, 7)])
def test_part_slices_cover_every_slice_once_in_balanced_blocks(z, n):
    parts = [part_slices(z, n, k) for k in range(n)]
    assert [k for r in parts for k in r] == list(range(z))
    sizes = [len(r) for r in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_parts_in_any_order_give_the_unsplit_result(tmp_path, meas, gauss_prior, order):
    full = reconstruct(meas, "dds", gauss_prior, steps=6, progress=False).data
    out = tmp_path / "r.nii.gz"
    for i, k in enumerate(order):
        vol = reconstruct(meas, "dds", gauss_prior, steps=6, progress=False, output=out, num_parts=3, part_id=k)
        last = i == len(order) - 1
        assert (vol is not None) == last and out.exists() == last
        if not last:
            done = sorted(n for n in os.listdir(partial_path(out)) if n.endswith(".npy"))
            assert len(done) == sum(len(part_slices(Z, 3, j)) for j in order[:i + 1])
    assert not partial_path(out).exists()
    np.testing.assert_array_equal(medrecon.load_volume(out).data, full)
    np.testing.assert_array_equal(vol.data, full)


def test_a_stopped_part_continues_and_other_parts_keep_their_slices(tmp_path, meas, gauss_prior):
    full = reconstruct(meas, "dds", gauss_prior, steps=4, progress=False).data
    out = tmp_path / "s.nii.gz"
    kw = {"steps": 4, "progress": False, "output": out, "num_parts": 2, "batch_size": 1}
    assert reconstruct(meas, "dds", gauss_prior, part_id=1, **kw) is None  # slices 3, 4
    with pytest.raises(RunStopped):
        reconstruct(meas, "dds", gauss_prior, part_id=0, _stop_after=1, **kw)  # slice 0 only
    done = sorted(n for n in os.listdir(partial_path(out)) if n.endswith(".npy"))
    assert done == ["slice_00000.npy", "slice_00003.npy", "slice_00004.npy"]
    vol = reconstruct(meas, "dds", gauss_prior, part_id=0, **kw)  # no resume flag needed for a part
    assert vol.meta["reconstruction"]["resumed_slices"] == 3
    np.testing.assert_array_equal(medrecon.load_volume(out).data, full)


def test_part_errors_are_one_sentence(tmp_path, meas, gauss_prior):
    out = tmp_path / "e.nii.gz"
    with pytest.raises(InputError, match="part_id must be in 0..1"):
        reconstruct(meas, "tv", steps=2, progress=False, output=out, num_parts=2, part_id=2)
    with pytest.raises(InputError, match="needs output="):
        reconstruct(meas, "tv", steps=2, progress=False, num_parts=2, part_id=0)
    with pytest.raises(InputError, match="more than the 5 slice"):
        reconstruct(meas, "tv", steps=2, progress=False, output=out, num_parts=6, part_id=0)
    with pytest.raises(InputError, match="cannot be split"):
        reconstruct(meas, "tv", steps=2, params={"dims": 3}, progress=False, output=out, num_parts=2, part_id=0)
    assert reconstruct(meas, "tv", steps=2, progress=False, output=out, num_parts=2, part_id=0) is None
    with pytest.raises(InputError, match="every part needs the same settings.*steps|steps.*every part"):
        reconstruct(meas, "tv", steps=3, progress=False, output=out, num_parts=2, part_id=1)
    assert not out.exists() and partial_path(out).exists()  # the first part's work is kept


def test_a_live_part_blocks_only_its_own_part_and_whole_runs(tmp_path, meas):
    import json
    import socket

    out = tmp_path / "l.nii.gz"
    assert reconstruct(meas, "tv", steps=2, progress=False, output=out, num_parts=2, part_id=0) is None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (partial_path(out) / "lock.part-1").write_text(json.dumps({"host": socket.gethostname(),
                                                                    "pid": sleeper.pid}))
        with pytest.raises(InputError, match="another part"):
            reconstruct(meas, "tv", steps=2, progress=False, output=out, num_parts=2, part_id=1)
        with pytest.raises(InputError, match="another part"):
            reconstruct(meas, "tv", steps=2, progress=False, output=out, resume=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    vol = reconstruct(meas, "tv", steps=2, progress=False, output=out, num_parts=2, part_id=1)  # dead: taken over
    assert vol is not None and out.exists()


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "medrecon.cli.main", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_cli_parts_write_the_unsplit_result(tmp_path, meas):
    """Three real processes, started together like a job array, each one --part-id."""
    m = tmp_path / "m.h5"
    medrecon.save_measurement(meas, m)
    common = ["--sampler", "dds", "--prior", "ct-default", "--steps", 3, "--device", "cpu", "-q"]
    ref = _cli("reconstruct", m, *common, "-o", tmp_path / "whole.nii.gz")
    procs = [_cli("reconstruct", m, *common, "-o", tmp_path / "split.nii.gz", "--num-parts", 3, "--part-id", k)
             for k in range(3)]
    outs = [p.communicate(timeout=300) for p in [ref, *procs]]
    for p, (so, se) in zip([ref, *procs], outs, strict=True):
        assert p.returncode == 0, so + se
    said = "".join(so for so, _ in outs[1:])
    assert said.count("wrote ") == 1 and said.count("the part that finishes last writes") == 2, said
    whole = medrecon.load_volume(tmp_path / "whole.nii.gz").data
    split = medrecon.load_volume(tmp_path / "split.nii.gz").data
    scale = float(np.abs(whole).max())
    assert scale > 0
    # equal up to float reassociation: the network sees batches of 5 slices in one run, 1-2 in the parts
    np.testing.assert_allclose(split, whole, rtol=0, atol=1e-5 * scale)
    assert not partial_path(tmp_path / "split.nii.gz").exists()
