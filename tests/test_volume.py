"""Volume conventions and NIfTI reading / writing."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medrecon
from medrecon.errors import FileFormatError, InputError

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def _vol(shape=(3, 4, 5), affine=None, **meta):
    rng = np.random.default_rng(0)
    data = rng.normal(size=shape).astype(np.float32) * 100
    if affine is None:  # oblique: rotated 20 degrees about x, voxels 0.7 x 0.6 x 2.5 mm
        c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
        affine = np.eye(4)
        affine[:3, :3] = np.array([[-1, 0, 0], [0, c, -s], [0, s, c]]) @ np.diag([0.7, 0.6, 2.5])
        affine[:3, 3] = [10, -20, 30]
    return medrecon.Volume(data, affine, dict(meta))


def test_volume_validates_and_converts():
    v = medrecon.Volume(np.zeros((4, 5), np.int16), np.eye(4))
    assert v.data.dtype == np.float32 and v.shape == (1, 4, 5)
    with pytest.raises(InputError, match="3D"):
        medrecon.Volume(np.zeros((2, 2, 2, 2)), np.eye(4))
    with pytest.raises(InputError, match="4x4"):
        medrecon.Volume(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(InputError, match="complex"):
        medrecon.Volume(np.zeros((2, 2, 2), complex), np.eye(4))
    with pytest.raises(InputError, match="singular"):
        medrecon.Volume(np.zeros((2, 2, 2)), np.zeros((4, 4)))


def test_index_convention():
    """data[k, j, i] sits at affine @ [i, j, k, 1]; spacing is (dz, dy, dx)."""
    v = medrecon.Volume(np.zeros((2, 3, 4)), np.diag([0.5, 0.75, 3.0, 1.0]))
    assert v.spacing == (3.0, 0.75, 0.5)
    np.testing.assert_allclose(v.voxel_to_world([3, 2, 1]), [1.5, 1.5, 3.0])


def test_slab_keeps_positions_and_does_not_modify():
    v = _vol(shape=(6, 4, 5))
    before = v.data.copy()
    s = v.slab(2, 5)
    assert s.shape == (3, 4, 5)
    np.testing.assert_allclose(s.voxel_to_world([1, 2, 0]), v.voxel_to_world([1, 2, 2]))
    s.data[:] = 0
    np.testing.assert_array_equal(v.data, before)
    with pytest.raises(InputError):
        v.slab(4, 9)


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_round_trip(tmp_path, name):
    v = _vol(modality="MR", units="arbitrary", series_uid="1.2.3")
    out = medrecon.save_volume(v, tmp_path / name)
    back = medrecon.load_volume(out)
    np.testing.assert_array_equal(back.data, v.data)
    np.testing.assert_allclose(back.affine, v.affine, atol=1e-5)
    assert back.meta["modality"] == "MR" and back.meta["series_uid"] == "1.2.3"
    img = nib.load(out)
    # on disk: array (X, Y, Z), sform = qform = affine, codes scanner, mm
    assert img.shape == (5, 4, 3)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[4, 3, 2], v.data[2, 3, 4])
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-5)
    assert img.header.get_xyzt_units()[0] == "mm"


def test_nifti_sheared_affine_kept_in_sform(tmp_path):
    aff = np.array([[-0.7, 0, 0, 10], [0, 0.6, 0.4, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]])  # gantry tilt
    v = _vol(affine=aff)
    back = medrecon.load_volume(medrecon.save_volume(v, tmp_path / "t.nii.gz"))
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)


def test_nifti_integers_stored_as_int16(tmp_path):
    v = medrecon.Volume(np.arange(-500, 500, dtype=np.float32).reshape(10, 10, 10), np.eye(4), {"units": "HU"})
    out = medrecon.save_volume(v, tmp_path / "ct.nii.gz")
    assert nib.load(out).get_data_dtype() == np.int16
    np.testing.assert_array_equal(medrecon.load_volume(out).data, v.data)


def test_nibabel_files_read():
    anat = medrecon.load_volume(NIB_DATA / "anatomical.nii")
    img = nib.load(NIB_DATA / "anatomical.nii")
    assert anat.shape == img.shape[::-1]
    np.testing.assert_allclose(anat.affine, img.affine)
    np.testing.assert_array_equal(anat.data, np.asarray(img.get_fdata(), np.float32).transpose(2, 1, 0))
    with pytest.raises(FileFormatError, match="4D"):
        medrecon.load_volume(NIB_DATA / "example4d.nii.gz")
    n2 = medrecon.load_volume(NIB_DATA / "example_nifti2.nii.gz") if nib.load(
        NIB_DATA / "example_nifti2.nii.gz").ndim == 3 else None
    assert n2 is None or n2.data.ndim == 3


def test_dicom_nifti_dicom_round_trip(tmp_path):
    v = medrecon.Volume(np.round(_vol().data * 3), np.array(
        [[-0.7, 0, 0, 10], [0, -0.6, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1.0]]),
        {"modality": "CT", "units": "HU", "dicom": {"PatientID": "X1", "StudyInstanceUID": "1.2.3.4"}})
    d1 = medrecon.save_volume(v, tmp_path / "d1")
    a = medrecon.load_volume(d1)
    n = medrecon.save_volume(a, tmp_path / "a.nii.gz")
    b = medrecon.load_volume(n)
    d2 = medrecon.save_volume(b, tmp_path / "d2")
    c = medrecon.load_volume(d2)
    np.testing.assert_allclose(c.affine, v.affine, atol=1e-4)
    np.testing.assert_array_equal(c.data, v.data)
    assert c.meta["dicom"]["PatientID"] == "X1" and c.meta["dicom"]["StudyInstanceUID"] == "1.2.3.4"


def test_bad_files(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"garbage" * 10))
    with pytest.raises(FileFormatError, match="not a readable NIfTI"):
        medrecon.load_volume(tmp_path / "bad.nii.gz")
    good = medrecon.save_volume(_vol(shape=(8, 16, 16)), tmp_path / "g.nii")
    (tmp_path / "t.nii").write_bytes(good.read_bytes()[:2000])
    with pytest.raises(FileFormatError, match="truncated|not a readable"):
        medrecon.load_volume(tmp_path / "t.nii")
    with pytest.raises(InputError, match="already exists"):
        medrecon.save_volume(_vol(), good)
    with pytest.raises(InputError, match="output format"):
        medrecon.save_volume(_vol(), tmp_path / "x.png")
    with pytest.raises(InputError, match="NaN"):
        medrecon.save_volume(medrecon.Volume(np.full((1, 2, 2), np.nan), np.eye(4)), tmp_path / "n.nii")


def test_shipped_sample_loads():
    from importlib import resources

    ref = resources.files("medrecon") / "data" / "ct_sample.nii.gz"
    if not ref.is_file():
        pytest.skip("sample not generated yet")
    v = medrecon.load_volume(Path(str(ref)))
    assert v.shape == (8, 256, 256) and v.meta["units"] == "HU" and v.meta["modality"] == "CT"
    assert -1100 <= v.data.min() and v.data.max() <= 3100


def test_sample_matches_manifest(repo_root):
    import hashlib
    import json

    manifest = json.loads((repo_root / "data_manifests" / "ct-pancreas-tcia.json").read_text())
    sample = repo_root / manifest["sample"]["path"]
    assert hashlib.sha256(sample.read_bytes()).hexdigest() == manifest["sample"]["sha256"]
    assert manifest["licence"] == "CC BY 4.0"
    assert max(manifest["sample"]["slices_z_order"]) <= 31  # inside the held-out block
    assert (repo_root / "medrecon" / "data" / "ct_sample.LICENSE.txt").is_file()
    from medrecon.data import load_ct_sample

    v = load_ct_sample()
    assert v.spacing == pytest.approx((3.0, 2.1484375, 2.1484375))


@pytest.mark.shared_data
def test_sample_is_reproducible_from_shared_data(shared_data, repo_root, tmp_path):
    import hashlib
    import json
    import runpy

    mod = runpy.run_path(str(repo_root / "data_manifests" / "make_ct_sample.py"))
    manifest = tmp_path / "m.json"
    rc = mod["main"](["--source", str(shared_data / "ct-pancreas-tcia"), "--output", str(tmp_path / "s.nii.gz"),
                      "--manifest", str(manifest)])
    assert rc == 0
    expect = json.loads((repo_root / "data_manifests" / "ct-pancreas-tcia.json").read_text())["sample"]["sha256"]
    assert hashlib.sha256((tmp_path / "s.nii.gz").read_bytes()).hexdigest() == expect


# ------------------------------------------------ io package: readers as a list, no cycles
def _module_imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Every medrecon module ``path`` imports, function-level imports included: ``from a
    import b`` counts as ``a.b`` when that is a module, else as ``a``."""
    import ast

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m == "medrecon" or m.startswith("medrecon.")}


def _io_import_graph(repo_root: Path) -> dict[str, set[str]]:
    pkg = repo_root / "medrecon"
    files = {"medrecon.volume": pkg / "volume.py", "medrecon.errors": pkg / "errors.py"}
    for f in sorted((pkg / "io").rglob("*.py")):
        parts = f.relative_to(repo_root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    known = set(files)
    return {m: _module_imports(f, m, known) & known for m, f in files.items()}


def test_io_modules_and_volume_have_no_import_cycle(repo_root):
    graph = _io_import_graph(repo_root)
    assert {"medrecon.io", "medrecon.io.registry", "medrecon.io.dicom.read"} <= set(graph)
    assert graph["medrecon.volume"] <= {"medrecon.errors"}, "medrecon.volume must import nothing from medrecon.io"
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, "import cycle: " + " -> ".join(path[path.index(n):] + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_cycle_check_sees_function_level_imports(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from medrecon.io import dicom\n    from . import nifti\n")
    known = {"medrecon.io.dicom", "medrecon.io.nifti"}
    assert _module_imports(tmp_path / "m.py", "medrecon.io.m", known) == known


def test_readers_and_writers_are_lists(tmp_path):
    import medrecon.io as mio
    from medrecon.io import dicom

    assert medrecon.load_volume is mio.load_volume and medrecon.save_volume is mio.save_volume
    assert [r.name for r in mio.READERS] == ["dicomweb", "nifti", "measurement", "dicom"]
    assert [w.name for w in mio.WRITERS] == ["dicomweb", "nifti", "measurement", "dicom"]
    for name, fmt in [("a.nii", "nifti"), ("a.NII.GZ", "nifti"), ("m.h5", "measurement"), ("m.hdf5", "measurement"),
                      ("d", "dicom"), ("x.dcm", "dicom"), ("x.png", "dicom")]:
        assert mio.volume_format(tmp_path / name) == fmt
    assert mio.volume_format("dicomweb://pacs:8042/dicom-web?series=1.2") == "dicomweb"
    # the public names of medrecon.io.dicom survive the split into a package
    for name in ("GeometryWarning", "SeriesInfo", "scan_series", "select_series", "read_dicom",
                 "write_dicom_series", "KEEP_TAGS", "INFO_TAGS"):
        assert hasattr(dicom, name)
    with pytest.raises(FileFormatError, match="measurement file"):
        (tmp_path / "m.h5").write_bytes(b"")
        medrecon.load_volume(tmp_path / "m.h5")
    with pytest.raises(InputError, match="save_measurement"):
        medrecon.save_volume(_vol(), tmp_path / "o.h5")
    (tmp_path / "d.nii").mkdir()
    with pytest.raises(FileFormatError, match="is a folder"):
        medrecon.load_volume(tmp_path / "d.nii")

    # a new format is one entry placed before the DICOM fallback
    seen = []
    reader = mio.VolumeReader("toy", lambda p: p.suffix == ".toy", lambda p, series=None: seen.append(p) or _vol())
    (tmp_path / "v.toy").write_bytes(b"")
    mio.READERS.insert(0, reader)
    try:
        assert mio.volume_format(tmp_path / "v.toy") == "toy"
        assert medrecon.load_volume(tmp_path / "v.toy").shape == (3, 4, 5) and seen == [tmp_path / "v.toy"]
    finally:
        mio.READERS.remove(reader)
    assert mio.volume_format(tmp_path / "v.toy") == "dicom"
