"""``--merge`` of benchmarks/generalization.py and benchmarks/quality_mr_raw.py: a later run adds or
re-measures rows, the rest of the results file stays."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import generalization as G  # noqa: E402


def _run(path, series_psnr: dict, methods, command):
    """A results file with one slice per series at 4x; ``series_psnr[name][method]`` = PSNR."""
    series = [{"series": n, "role": G.SERIES[n][2], "seen": n == "mr-t1-mprage", "slices": [3], "pixel_mm": 1.0,
               "results": {"4": {**{m: {"psnr": [v], "ssim": [0.9], "sec_per_slice": 1.0} for m, v in rows.items()},
                                 "fit": [1.0]}}} for n, rows in series_psnr.items()]
    res = {"prior": "mr-default", "trained_on": ["mr-t1-mprage"], "modality": "mr", "settings": [4],
           "methods": methods, "noise_rel": 0.005, "slices_per_series": 1, "size": 256, "command": command,
           "seconds": 10.0, "series": series}
    path.write_text(json.dumps(res))
    return str(path)


def test_a_later_run_replaces_the_rows_it_remeasured_and_keeps_the_rest(tmp_path, capsys):
    old = _run(tmp_path / "old.json", {"mr-t1-mprage": {"tv": 30.0, "dds": 28.0}, "mr-brain-t2": {"tv": 31.0, "dds": 27.0}},
               ["tv", "dds"], "first")
    new = _run(tmp_path / "new.json", {"mr-brain-t2": {"dds": 33.0}, "mr-t1-mprage": {"dds": 32.0}}, ["dds"], "second")
    out = tmp_path / "merged.json"
    assert G.merge([old, new], str(out)) == 0
    res = json.loads(out.read_text())
    rows = {x["series"]: x["results"]["4"] for x in res["series"]}
    assert [x["series"] for x in res["series"]] == ["mr-t1-mprage", "mr-brain-t2"]  # SERIES order
    assert rows["mr-t1-mprage"]["dds"]["psnr"] == [32.0] and rows["mr-t1-mprage"]["tv"]["psnr"] == [30.0]
    assert rows["mr-brain-t2"]["dds"]["psnr"] == [33.0] and rows["mr-brain-t2"]["tv"]["psnr"] == [31.0]
    assert res["methods"] == ["tv", "dds"] and res["command"].startswith("first && second && ")
    assert "33.00" in res["markdown"]


def test_runs_on_other_slices_or_settings_are_refused(tmp_path):
    a = _run(tmp_path / "a.json", {"mr-brain-t2": {"tv": 31.0}}, ["tv"], "a")
    b = json.loads(Path(_run(tmp_path / "b.json", {"mr-brain-t2": {"dds": 33.0}}, ["dds"], "b")).read_text())
    b["series"][0]["slices"] = [4]
    (tmp_path / "b.json").write_text(json.dumps(b))
    with pytest.raises(SystemExit, match="measured on slices"):
        G.merge([a, str(tmp_path / "b.json")], str(tmp_path / "m.json"))
    b["noise_rel"] = 0.01
    (tmp_path / "b.json").write_text(json.dumps(b))
    with pytest.raises(SystemExit, match="differ in noise_rel"):
        G.merge([a, str(tmp_path / "b.json")], str(tmp_path / "m.json"))


def test_quality_mr_raw_merge_replaces_remeasured_rows_only():
    from benchmarks.quality_mr_raw import merge_cases, summarise

    def case(z, dds, tv=None):
        med = {"dds": {"psnr": dds}} if tv is None else {"dds": {"psnr": dds}, "tv": {"psnr": tv}}
        return {"series": "mr-t1-mprage-niivue", "z": z, "accel": 4, "medrecon": med,
                "sigpy": {} if tv is None else {"tv": {"psnr": tv - 1}}}

    old = [case(80, 29.0, 31.0)]
    merged = merge_cases(old, [case(80, 32.0), case(90, 30.0)])
    assert merged[0]["medrecon"] == {"dds": {"psnr": 32.0}, "tv": {"psnr": 31.0}}
    assert merged[0]["sigpy"] == {"tv": {"psnr": 30.0}} and merged[1]["z"] == 90
    assert old[0]["medrecon"]["dds"]["psnr"] == 29.0  # the old list is not modified
    assert summarise(merged)["4x"]["medrecon dds"] == 31.0
