"""Many studies: ``reconstruct_many`` in-process and ``medrecon reconstruct-many --ray`` on a real
local Ray instance; results per study equal to single runs; rerun skips; a bad study is reported
and the others go on."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import medrecon
from medrecon.engine.distributed import output_name, plan_tasks, reconstruct_many
from medrecon.errors import InputError
from medrecon.testing import smooth_gaussian_prior

Z, N = 4, 16

pytestmark = [pytest.mark.slow,  # skipped by `make test-fast`
              pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.filterwarnings("ignore::medrecon.engine.PriorMismatchWarning")]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    d = tmp_path_factory.mktemp("studies")
    paths = []
    yy, xx = np.mgrid[:N, :N]
    for s in range(2):
        disk = ((yy - N / 2) ** 2 + (xx - N / 2 - s) ** 2 < (N / 3) ** 2).astype(np.float32)
        data = np.stack([disk * (40.0 + 10 * k + 100 * s) - 1000 * (1 - disk) for k in range(Z)])
        vol = medrecon.Volume(data, np.diag([0.8, 0.8, 2.0, 1.0]), {"modality": "CT", "units": "HU"})
        m = medrecon.simulate(vol, "ct.parallel", {"n_views": 8, "pixel_size": 0.8}, noise_std=0.5, seed=s)
        p = d / f"study{s}.h5"
        medrecon.save_measurement(m, p)
        paths.append(p)
    return paths


def test_plan_names_outputs_and_orders_parts_study_by_study(studies, tmp_path):
    tasks = plan_tasks(studies, tmp_path, parts_per_study=2)
    assert [(t.output.rsplit("/", 1)[-1], t.part_id, t.num_parts) for t in tasks] == [
        ("study0.nii.gz", 0, 2), ("study0.nii.gz", 1, 2), ("study1.nii.gz", 0, 2), ("study1.nii.gz", 1, 2)]
    assert output_name("/x/scan.v2.h5") == "scan.v2.nii.gz" and output_name("a/RFdata.mat", "/") == "RFdata/"
    with pytest.raises(InputError, match="would both be written"):
        plan_tasks([studies[0], studies[0]], tmp_path)
    with pytest.raises(InputError, match="no such measurement"):
        plan_tasks([tmp_path / "missing.h5"], tmp_path)
    with pytest.raises(InputError, match="needs a diffusion prior"):
        reconstruct_many(studies, "dds", output_dir=tmp_path)
    with pytest.raises(InputError, match="need use_ray"):
        reconstruct_many(studies, "tv", output_dir=tmp_path, workers=2)


def test_in_process_results_equal_single_runs_and_a_rerun_skips(studies, tmp_path):
    prior = smooth_gaussian_prior(N)
    seen = []
    reps = reconstruct_many(studies, "dds", prior, output_dir=tmp_path / "o", parts_per_study=2, steps=5,
                            device="cpu", on_task=lambda r, n, t: seen.append((n, t)))
    assert [r["status"] for r in reps] == ["part done", "done", "part done", "done"]
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for p in studies:
        single = medrecon.reconstruct(p, "dds", prior, steps=5, progress=False).data
        got = medrecon.load_volume(tmp_path / "o" / output_name(p)).data
        np.testing.assert_allclose(got, single, rtol=0, atol=1e-4 * float(np.abs(single).max()))
    again = reconstruct_many(studies, "dds", prior, output_dir=tmp_path / "o", parts_per_study=2, steps=5)
    assert {r["status"] for r in again} == {"exists"}


def test_a_bad_study_is_reported_and_the_others_go_on(studies, tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not an HDF5 file at all")
    reps = reconstruct_many([bad, *studies], "classical", output_dir=tmp_path / "o")
    by = {r["measurement"].rsplit("/", 1)[-1]: r for r in reps}
    assert by["broken.h5"]["status"] == "failed" and by["broken.h5"]["error"]
    assert by["study0.h5"]["status"] == by["study1.h5"]["status"] == "done"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["study0.nii.gz", "study1.nii.gz"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (pip install 'medrecon[ray]')")
def test_ray_cli_matches_in_process_run(studies, tmp_path):
    """A real ``medrecon reconstruct-many --ray`` process: a local Ray instance, two CPU actors,
    two studies in three parts each; every study equals its in-process reconstruction."""
    args = [sys.executable, "-m", "medrecon.cli.main", "reconstruct-many", *map(str, studies), "-o",
            str(tmp_path / "ray"), "--sampler", "dds", "--prior", "ct-default", "--steps", "3",
            "--parts-per-study", "3", "--ray", "--workers", "2"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 of 2 studies reconstructed" in proc.stdout, proc.stdout
    assert proc.stdout.count("-> ") == 2, proc.stdout  # exactly one part per study wrote its output
    for p in studies:
        ref = medrecon.reconstruct(p, "dds", "ct-default", steps=3, progress=False, device="cpu").data
        got = medrecon.load_volume(tmp_path / "ray" / output_name(p)).data
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


@pytest.mark.parametrize("args,words", [
    (["reconstruct-many", "missing.h5", "-o", "out"], ["no such measurement"]),
    (["reconstruct-many", "{m}", "-o", "out", "--sampler", "dds"], ["needs a diffusion prior"]),
    (["reconstruct-many", "{m}", "-o", "out", "--sampler", "tv", "--workers", "2"], ["need use_ray"]),
    (["reconstruct", "{m}", "-o", "r.nii.gz", "--sampler", "tv", "--num-parts", "2", "--part-id", "2"],
     ["part_id must be in 0..1"]),
    (["reconstruct", "{m}", "-o", "r.nii.gz", "--sampler", "tv", "--num-parts", "9"], ["more than the 4 slice"]),
])
def test_cli_bad_input_is_one_line_exit_2(studies, tmp_path, args, words):
    args = [a.replace("{m}", str(studies[0])) for a in args]
    proc = subprocess.run([sys.executable, "-m", "medrecon.cli.main", *args], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("medrecon: warning:")]
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
