"""Data set manifests and ``medrecon data list / verify / fetch``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medrecon import datasets
from medrecon.errors import FileFormatError, InputError

REPO = Path(__file__).resolve().parent.parent
SHARED = datasets.default_root()


def run(*args, env=None):
    e = dict(os.environ)
    e.pop("MEDRECON_DEBUG", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "medrecon.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=e, timeout=120)


def test_package_manifests_match_source_of_truth():
    src = datasets.source_manifest_dir()
    if src is None:
        pytest.skip("not a source tree")
    a = sorted(p.name for p in src.glob("*.json"))
    b = sorted(p.name for p in datasets.package_manifest_dir().glob("*.json"))
    assert a == b, "run: python -m medrecon.datasets (copies data_manifests/*.json into the package)"
    for name in a:
        assert (src / name).read_bytes() == (datasets.package_manifest_dir() / name).read_bytes(), (
            f"{name} differs; run: python -m medrecon.datasets")


def test_every_manifest_is_complete():
    ms = datasets.list_manifests()
    names = {m["name"] for m in ms}
    assert {"ct-pancreas-tcia", "mr-t1-mprage-niivue", "ct-projections-tooth", "mri-kspace-gre-phantom",
            "us-rf-planewave-wires"} <= names
    for m in ms:
        assert Path(m["_manifest_path"]).stem == m["name"]
        assert m["schema"] == datasets.SCHEMA
    us = datasets.get_manifest("us-rf-planewave-wires")
    assert us["local_evaluation_only"] is True and "never commit" in us["redistribution"]
    with pytest.raises(InputError, match="no dataset named"):
        datasets.get_manifest("nope")


def _make_dataset(tmp_path, name="toy"):
    """A two-file data set in tmp_path/src/name and its manifest in tmp_path/manifests."""
    src = tmp_path / "src" / name
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"hello medrecon" * 100)
    (src / "sub" / "b.txt").write_text("second file\n")
    files = [{"path": p, "sha256": hashlib.sha256((src / p).read_bytes()).hexdigest(),
              "bytes": (src / p).stat().st_size} for p in ("a.bin", "sub/b.txt")]
    man = {"schema": datasets.SCHEMA, "name": name, "title": "toy", "modality": "CT", "licence": "CC0",
           "citation": "none", "source_url": src.as_uri(), "redistribution": "yes", "shape": [1, 2, 3],
           "spacing_mm": [1, 1, 1], "files": files, "download": {"base_url": src.as_uri()}}
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / f"{name}.json").write_text(json.dumps(man))
    return src, mdir, man


def test_fetch_through_pooch_from_file_url_then_verify(tmp_path):
    src, mdir, man = _make_dataset(tmp_path)
    dest = tmp_path / "dest"
    out = datasets.fetch("toy", dest, manifest_dir=mdir)
    assert (out / "sub" / "b.txt").read_text() == "second file\n"
    rep = datasets.verify("toy", dest, manifest_dir=mdir)
    assert rep["ok"] == ["a.bin", "sub/b.txt"] and not rep["missing"] and not rep["mismatch"]
    # the CLI, with the manifest folder from the environment
    env = {"MEDRECON_MANIFESTS": str(mdir)}
    r = run("data", "list", "--root", dest, env=env)
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("toy") and line.rstrip().endswith("yes") for line in r.stdout.splitlines())
    (out / "sub" / "b.txt").write_text("changed\n")
    (out / "a.bin").unlink()
    r = run("data", "verify", "toy", "--root", dest, env=env)
    assert r.returncode == 1
    assert "MISSING   a.bin" in r.stdout and "MISMATCH  sub/b.txt" in r.stdout and "FAILED" in r.stderr
    # fetch repairs it (pooch re-downloads files whose hash is wrong)
    r = run("data", "fetch", "toy", "--dest", dest, env=env)
    assert r.returncode == 0, r.stderr
    assert run("data", "verify", "toy", "--root", dest, env=env).returncode == 0


def test_fetch_refuses_a_corrupt_source_and_urlless_datasets(tmp_path):
    src, mdir, man = _make_dataset(tmp_path)
    (src / "a.bin").write_bytes(b"tampered")
    with pytest.raises(FileFormatError, match="sha256"):
        datasets.fetch("toy", tmp_path / "dest", manifest_dir=mdir)
    assert not (tmp_path / "dest" / "toy" / "a.bin").exists()
    r = run("data", "fetch", "ct-pancreas-tcia", "--dest", tmp_path / "d")
    assert r.returncode == 2 and "no download URL" in r.stderr and "TCIA" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("data", "verify", "ct-pancreas-tcia", "--root", tmp_path / "empty")
    assert r.returncode == 2 and "not present" in r.stderr


def test_bad_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "files": []}))
    with pytest.raises(FileFormatError, match="lacks the key"):
        datasets.list_manifests(tmp_path)
    src, mdir, man = _make_dataset(tmp_path / "x")
    man["files"][0]["path"] = "../escape"
    with pytest.raises(FileFormatError, match="relative"):
        datasets.validate_manifest(man)


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "ct-projections-tooth").is_dir(), reason="../shared/data absent")
def test_shared_small_datasets_verify():
    for name in ("ct-projections-tooth", "mri-kspace-gre-phantom", "us-rf-planewave-wires"):
        rep = datasets.verify(name)
        assert not rep["missing"] and not rep["mismatch"], rep
    r = run("data", "list")
    assert r.returncode == 0 and "ct-pancreas-tcia" in r.stdout and "[local only]" in r.stdout
