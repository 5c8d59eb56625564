"""Smoke test of benchmarks/quality.py --quick (2 slices at 64 x 64, 5 steps): runs, writes JSON + PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/work/shared/data/ct-pancreas-tcia")


@pytest.mark.skipif(not DATA.exists(), reason="needs /work/shared/data/ct-pancreas-tcia")
def test_quality_quick(tmp_path):
    js, png = tmp_path / "q.json", tmp_path / "q.png"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--quick", "--views", "8",
                        "--json", str(js), "--png", str(png)], capture_output=True, text=True, timeout=600,
                       cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = json.loads(js.read_text())
    res = out["results"]["8"]["methods"]
    assert set(res) == {"fbp", "tv", "dds", "dps", "reddiff"}
    for m, d in res.items():
        assert len(d["psnr_w1000"]) == 2 and len(d["ssim_full"]) == 2, m
        assert all(v == v and v > 0 for v in d["psnr_w1000"]), m  # finite, positive
        assert d["sec_per_slice"] >= 0
    assert res["tv"]["mean"]["psnr_w1000"] > res["fbp"]["mean"]["psnr_w1000"] - 1.0
    assert out["git_commit"] is None or len(out["git_commit"]) == 40
    assert png.stat().st_size > 1000


@pytest.mark.skipif(not Path("/work/shared/data/mr-t1-mprage-niivue").exists(),
                    reason="needs /work/shared/data/mr-t1-mprage-niivue")
def test_quality_mr_quick_through_quality_py(tmp_path):
    """``quality.py --modality mr`` runs the MR protocol (benchmarks/quality_mr.py)."""
    js = tmp_path / "mr.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--modality", "mr", "--quick",
                        "--accels", "4", "--threads", "1", "--output", str(js)], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    row = json.loads(js.read_text())["results"]["4x"]
    assert set(row) >= {"zf", "sense", "tv", "dds"} and 3 < row["acceleration_achieved"] < 5
    assert row["tv"]["psnr"] > row["zf"]["psnr"]  # TV unfolds what zero filling leaves aliased


def test_draws_benchmark_quick(tmp_path):
    """benchmarks/draws.py (draws one after another vs side by side) runs on the shipped MR prior
    and finds both ways give the same mean; no data needed (a synthetic phantom)."""
    js = tmp_path / "d.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "draws.py"), "--size", "32", "--slices", "1",
                        "--samples", "2", "--steps", "2", "--samplers", "dds,dps", "--threads", "1",
                        "--output", str(js)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads(js.read_text())["rows"]
    assert set(rows) == {"dds", "dps"}
    for name, row in rows.items():
        assert row["max_rel_difference"] < 1e-3, (name, row)
        assert row["seconds_sequential"] > 0 and row["seconds_side_by_side"] > 0


@pytest.mark.skipif(not Path("/work/shared/data/mr-t1-mprage-niivue").exists(),
                    reason="needs /work/shared/data/mr-t1-mprage-niivue")
def test_quality_mr_keep_writes_resumable_rows(tmp_path):
    """``--keep DIR`` writes each diffusion row through the engine's checkpointed output
    (ACCELx_METHOD.nii.gz and its std component) and evaluates the same numbers as a run
    without it (resuming from the checkpoints is the engine's, tested in the engine's tests)."""
    base = [sys.executable, str(ROOT / "benchmarks" / "quality_mr.py"), "--quick", "--accels", "4",
            "--methods", "zf", "dds", "--samples", "2", "--antithetic", "--threads", "1"]
    rows = []
    for extra in ([], ["--keep", str(tmp_path / "keep")]):
        js = tmp_path / f"mr{len(rows)}.json"
        r = subprocess.run(base + extra + ["--output", str(js)], capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        rows.append(json.loads(js.read_text())["results"]["4x"]["dds"])
    assert (tmp_path / "keep" / "4x_dds.nii.gz").stat().st_size > 0
    assert (tmp_path / "keep" / "4x_dds.std.nii.gz").stat().st_size > 0
    assert not (tmp_path / "keep" / "4x_zf.nii.gz").exists()  # only the diffusion rows are kept
    assert rows[0]["psnr"] == rows[1]["psnr"] and rows[0]["ssim"] == rows[1]["ssim"]


@pytest.mark.skipif(not Path("/work/shared/data/mr-t1-mprage-niivue").exists(),
                    reason="needs /work/shared/data/mr-t1-mprage-niivue")
def test_quality_mr_raw_quick(tmp_path):
    """benchmarks/quality_mr_raw.py --quick on one realistic raw slice: medrecon's automatic SENSE
    beats zero-filled and comes within 1 dB of SigPy's SenseRecon at its best (oracle) weight on this
    slice (the issue's 0.5 dB is on the mean over the evaluation series: docs/mri.md)."""
    pytest.importorskip("sigpy")
    js = tmp_path / "raw.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality_mr_raw.py"), "--quick", "--no-gre",
                        "--methods", "zf", "sense", "--output", str(js)], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    case = json.loads(js.read_text())["cases"][0]
    ours, sigpy = case["medrecon"], case["sigpy"]
    assert case["coil_method"] == "espirit" and ours["sense"]["auto_tuned"]["param"] == "lam"
    assert ours["sense"]["psnr"] > ours["zf"]["psnr"] + 1
    assert ours["sense"]["psnr"] > sigpy["sense"]["psnr"] - 1.0


def _generalization(tmp_path, *args):
    js = tmp_path / "g.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generalization.py"), "--quick", *args,
                        "--output", str(js)], capture_output=True, text=True, timeout=900, cwd=ROOT,
                       env={**__import__("os").environ, "MEDRECON_DATA": str(DATA.parent), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(js.read_text()), r.stdout


@pytest.mark.skipif(not (DATA.parent / "ct-head-vtk-headsq").exists(), reason="needs the evaluation CT series")
def test_generalization_quick_evaluates_the_shipped_prior_on_series_it_never_saw(tmp_path):
    """The patient-level protocol, short form: ct-default on two evaluation-only series (64 x 64, 5 steps)."""
    out, stdout = _generalization(tmp_path, "--methods", "classical", "tv-train", "tv", "dds")
    assert out["trained_on"] == ["ct-pancreas"]
    names = [r["series"] for r in out["series"]]
    assert names and "ct-pancreas" not in names and all(r["role"] == "eval" for r in out["series"])
    for r in out["series"]:
        res = r["results"]["8"]
        assert set(res) >= {"classical", "tv-train", "tv", "dds", "fit"}
        assert all(0 < v < 80 for m in ("classical", "tv", "dds") for v in res[m]["psnr"])
        assert res["tv"]["psnr"][0] > res["classical"]["psnr"][0]  # TV beats FBP at 8 views
        assert len(res["fit"]) == 1 and res["fit"][0] > 0
    assert out["tv_train_weights"]["8"] in (1.0, 2.5, 5.0, 10.0, 20.0)
    assert "| dds |" in out["markdown"] and "| prior fit |" in stdout


@pytest.mark.skipif(not (DATA.parent / "ct-head-vtk-headsq").exists(), reason="needs the CT series")
def test_generalization_quick_leave_one_series_out(tmp_path):
    """LOSO, short form: a tiny prior trained (30 steps) per left-out series, never on that series."""
    out, _ = _generalization(tmp_path, "--loso", "--work", str(tmp_path / "work"), "--methods", "classical", "dds")
    left = [r for r in out["series"] if r["role"] == "train"]
    assert len(left) == 3 and all(r["series"] not in r["trained_on"] for r in left)
    ev = [r for r in out["series"] if r["role"] == "eval"]
    assert ev and all(len(r["trained_on"]) == 3 for r in ev)
    for r in left:
        assert (tmp_path / "work" / f"ct-without-{r['series']}" / "config.json").exists()
