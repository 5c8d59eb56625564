"""Files from elsewhere (issue 26, issue 27 item 2): decompression bombs, array references out of
the measurement's folder, HDF5 external links and storage, manifest traversal, symlinked
``.partial`` folders.  Every refusal is one sentence and exit status 2, never a traceback or an
out-of-memory kill.

The bombs are real files written here: a few MB (or kB) on disk, gigabytes when inflated or
read.  The CLI runs as a real process under an address-space limit (``RLIMIT_AS``): what a
normal run of the heaviest command needs (measured once) plus 1.5 GiB, at least 3 GiB -- far
below what any bomb would take -- and its peak resident memory, from ``os.wait4``, is checked.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

import medrecon
from medrecon.errors import FileFormatError, InputError
from medrecon.io.budget import MemoryBudgetError, max_memory, max_memory_bytes, parse_size

GiB = 1 << 30
#: bytes a bomb's child may hold resident at its peak (a normal run holds a few hundred MB)
RSS_BOUND = int(1.5 * GiB)
_VMPEAK = """
import atexit, runpy, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmPeak:"):
            sys.stderr.write("VMPEAK %d\\n" % (int(line.split()[1]) * 1024))
atexit.register(peak)
sys.argv = ["medrecon", *sys.argv[1:]]
runpy.run_module("medrecon.cli.main", run_name="__main__")
"""

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")


class Run:
    def __init__(self, returncode: int, stdout: str, stderr: str, maxrss: int):
        self.returncode, self.stdout, self.stderr, self.maxrss = returncode, stdout, stderr, maxrss


def _env(env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("MEDRECON_DEBUG", "MEDRECON_MAX_MEMORY")}
    e.update(env or {})
    return e


def cli(*args, cwd=None, env=None, limit_as: int | None = None, timeout: float = 300.0) -> Run:
    """``python -m medrecon.cli.main ARGS`` as a child process (optionally under ``RLIMIT_AS``);
    its exit status, output and peak resident memory (bytes, from ``os.wait4``)."""
    def limit():
        if limit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    with tempfile.TemporaryDirectory() as tmp:
        out_path, err_path = Path(tmp) / "out", Path(tmp) / "err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "medrecon.cli.main", *map(str, args)], stdout=out,
                                    stderr=err, cwd=cwd, env=_env(env), preexec_fn=limit)
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
        return Run(proc.returncode, out_path.read_text(), err_path.read_text(), usage.ru_maxrss * 1024)


def one_sentence(r: Run, *words: str) -> str:
    """The run was refused with exit status 2 and one line on stderr holding ``words``."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medrecon: error: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- files
def _small_measurement(path: Path) -> Path:
    m = medrecon.Measurement(y=np.arange(32, dtype=np.float32).reshape(2, 4, 4),
                             operator_spec={"name": "template.scale", "params": {"shape": [4, 4], "factor": 2.0}},
                             volume_shape=(2, 4, 4), affine=np.eye(4), units="HU")
    return medrecon.save_measurement(m, path, overwrite=True)


def _measurement_attrs(f) -> None:
    f.attrs["medrecon_schema"] = "measurement/1"
    f.attrs["noise_std"] = 0.0
    text = h5py.string_dtype("utf-8")
    f.create_dataset("operator_spec", data=json.dumps({"name": "template.scale",
                                                       "params": {"shape": [4, 4], "factor": 2.0}}), dtype=text)
    f.create_dataset("provenance", data="{}", dtype=text)
    f.create_dataset("volume_shape", data=np.array([2, 4, 4], np.int64))
    f.create_dataset("affine", data=np.eye(4))


def hdf5_bomb_measurement(path: Path) -> Path:
    """A measurement whose ``y`` declares 50000 x 50000 float32 (10 GB) in chunks never written."""
    with h5py.File(path, "w") as f:
        _measurement_attrs(f)
        f.create_dataset("y", shape=(50000, 50000), dtype="f4", chunks=True, compression="gzip")
    return path


def hdf5_bomb_kspace(path: Path) -> Path:
    """fastMRI-style raw k-space declaring 1 x 50000 x 50000 complex64 (20 GB), never written."""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=(1, 50000, 50000), dtype="c8", chunks=True, compression="gzip")
    return path


def _zero_members(n_bytes: int, member: int = 1 << 24) -> bytes:
    """One gzip member inflating to ``member`` zero bytes (repeat it for ``n_bytes``)."""
    assert n_bytes % member == 0
    return gzip.compress(bytes(member), compresslevel=9)


def nifti_bomb(path: Path, inflated: int = 2 * GiB) -> Path:
    """A ``.nii.gz`` whose header declares 2048 x 2048 x 512 float32 (8 GiB) and whose gzip
    stream really inflates to ``inflated`` zero bytes (multi-member gzip: ~2 MB on disk)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 512))
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    hdr.set_sform(np.eye(4), code=1)
    member = _zero_members(inflated)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(hdr.binaryblock + bytes(4)))
        for _ in range(inflated // (1 << 24)):
            fh.write(member)
    return path


def dicom_deflate_bomb(path: Path, rows: int = 32768, cols: int = 32768) -> Path:
    """A Deflated Explicit VR Little Endian CT image of rows x columns int16 (2 GiB for the
    default) whose pixel data are zeros: ~2 MB on disk.  The deflate stream repeats one
    full-flushed block of 16 MiB of zeros."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "CT"
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n = rows * cols * 2
    head = body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n)
    block = 1 << 24
    first = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    part = zeros.compress(bytes(block)) + zeros.flush(zlib.Z_FULL_FLUSH)
    file_meta = DicomBytesIO()
    write_file_meta_info(file_meta, meta, enforce_standard=True)
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM" + file_meta.getvalue())
        fh.write(first.compress(head) + first.flush(zlib.Z_FULL_FLUSH))
        for _ in range(n // block):
            fh.write(part)
        fh.write(zlib.compressobj(9, zlib.DEFLATED, -15).flush())
    return path


@pytest.fixture(scope="module")
def limit_as(tmp_path_factory) -> int:
    """The address-space limit of the bomb runs: a normal ``reconstruct`` (torch and the plugins
    imported, a measurement read) peaks at VmPeak; the limit is that plus 1.5 GiB, at least 3 GiB."""
    d = tmp_path_factory.mktemp("baseline")
    m = _small_measurement(d / "m.h5")
    r = subprocess.run([sys.executable, "-c", _VMPEAK, "reconstruct", str(m), "--sampler", "classical", "-o",
                        str(d / "r.nii.gz"), "--device", "cpu"], capture_output=True, text=True, env=_env(),
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    peak = int(r.stderr.rsplit("VMPEAK ", 1)[1].split()[0])
    return max(3 * GiB, peak + int(1.5 * GiB))


# ----------------------------------------------------------------------------- budget
def test_budget_parses_sizes_and_reads_the_environment(monkeypatch):
    assert parse_size("8G") == 8 * GiB and parse_size("512m") == 512 << 20 and parse_size("2GiB") == 2 * GiB
    for bad in ("", "lots", "-1G", "0"):
        with pytest.raises(InputError, match="memory size"):
            parse_size(bad)
    monkeypatch.delenv("MEDRECON_MAX_MEMORY", raising=False)
    default = max_memory_bytes()
    assert (1 << 20) <= default <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setenv("MEDRECON_MAX_MEMORY", "3M")
    assert max_memory_bytes() == 3 << 20
    monkeypatch.setenv("MEDRECON_MAX_MEMORY", "many")
    with pytest.raises(InputError, match="MEDRECON_MAX_MEMORY"):
        max_memory_bytes()


def test_max_memory_option_and_environment_decide(tmp_path):
    vol = medrecon.save_volume(medrecon.Volume(np.ones((4, 32, 32), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    assert cli("info", vol).returncode == 0
    line = one_sentence(cli("info", vol, "--max-memory", "8K"), "over the 8.0K limit", "--max-memory")
    assert "4 x 32 x 32" not in line and "32 x 32 x 4" in line  # the header's own order
    one_sentence(cli("info", vol, env={"MEDRECON_MAX_MEMORY": "8K"}), "over the 8.0K limit")
    assert cli("info", vol, "--max-memory", "1M", env={"MEDRECON_MAX_MEMORY": "8K"}).returncode == 0
    one_sentence(cli("info", vol, "--max-memory", "lots"), "memory size")


# ----------------------------------------------------------------------------- bombs
def test_deflated_dicom_bomb_is_refused_on_the_file_and_its_folder(tmp_path, limit_as):
    folder = tmp_path / "series"
    folder.mkdir()
    bomb = dicom_deflate_bomb(folder / "IM0001.dcm")
    assert bomb.stat().st_size < 8 << 20  # 2 GiB of pixel data when inflated
    for target in (bomb, folder):
        r = cli("info", target, limit_as=limit_as)
        one_sentence(r, "deflated DICOM", "memory limit", "--max-memory")
        assert r.maxrss < RSS_BOUND, r.maxrss
    r = cli("convert", folder, tmp_path / "out.nii.gz", "--max-memory", "64M", limit_as=limit_as)
    one_sentence(r, "deflated DICOM", "64.0M memory limit")
    assert not (tmp_path / "out.nii.gz").exists()


def test_deflated_dicom_of_normal_size_still_reads(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    for k in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
        meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality, ds.Rows, ds.Columns = "1.2.3", "CT", 8, 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 16, 15, 1, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, k], [1, 0, 0, 0, 1, 0], [1, 1]
        ds.PixelData = (np.arange(64, dtype=np.int16) + k).tobytes()
        ds.save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
    vol = medrecon.load_volume(tmp_path)
    assert vol.shape == (3, 8, 8) and vol.data[2, 0, 1] == 3 and vol.meta["transfer_syntax"].endswith(".99")
    with max_memory(256), pytest.raises(MemoryBudgetError, match="limit"):
        medrecon.load_volume(tmp_path)


def test_gzip_nifti_bomb_is_refused_by_info_and_simulate(tmp_path, limit_as):
    bomb = nifti_bomb(tmp_path / "bomb.nii.gz")
    assert bomb.stat().st_size < 8 << 20
    r = cli("info", bomb, limit_as=limit_as)
    one_sentence(r, "2048 x 2048 x 512 float32", "memory", "--max-memory")
    assert r.maxrss < RSS_BOUND, r.maxrss
    r = cli("simulate", "template.scale", "-i", bomb, "-o", tmp_path / "m.h5", limit_as=limit_as)
    one_sentence(r, "2048 x 2048 x 512 float32", "memory")
    assert r.maxrss < RSS_BOUND and not (tmp_path / "m.h5").exists()


def test_hdf5_bomb_is_refused_by_info_reconstruct_and_import(tmp_path, limit_as):
    meas = hdf5_bomb_measurement(tmp_path / "bomb.h5")
    raw = hdf5_bomb_kspace(tmp_path / "kspace_bomb.h5")
    assert meas.stat().st_size < 1 << 20 and raw.stat().st_size < 1 << 20
    runs = [
        (cli("info", meas, limit_as=limit_as), "50000 x 50000 float32"),
        (cli("reconstruct", meas, "--sampler", "classical", "-o", tmp_path / "r.nii.gz", "--device", "cpu",
             limit_as=limit_as), "50000 x 50000 float32"),
        (cli("import", meas, "-o", tmp_path / "i.h5", limit_as=limit_as), "50000 x 50000 float32"),
        (cli("import", raw, "-o", tmp_path / "k.h5", limit_as=limit_as), "1 x 50000 x 50000 complex64"),
        (cli("reconstruct", raw, "--sampler", "classical", "-o", tmp_path / "k.nii.gz", "--device", "cpu",
             limit_as=limit_as), "1 x 50000 x 50000 complex64"),
    ]
    for r, shape in runs:
        one_sentence(r, shape, "memory", "--max-memory")
        assert r.maxrss < RSS_BOUND, r.maxrss
    assert not any((tmp_path / n).exists() for n in ("r.nii.gz", "i.h5", "k.h5", "k.nii.gz"))
    # a trillion elements: the same sentence, from info and from import alike
    with h5py.File(tmp_path / "tera.h5", "w") as f:
        f.create_dataset("kspace", shape=(1, 1_000_000, 1_000_000), dtype="c8", chunks=True, compression="gzip")
    one_sentence(cli("import", tmp_path / "tera.h5", "-o", tmp_path / "t.h5"), "1 x 1000000 x 1000000", "memory")


# ----------------------------------------------------------------------------- array references
def _sense_case(folder: Path):
    """Coil maps, an image and y = A x of mri.sense with the maps embedded (``{"array": ...}``)."""
    import torch
    from medrecon_mri.coils import synthetic_coil_maps

    maps = synthetic_coil_maps((12, 10), 3)
    A = medrecon.get_operator("mri.sense", shape=[12, 10], coil_maps={"array": "coil_maps"},
                              arrays={"coil_maps": maps})
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 12, 10)).astype(np.float32))
    y = A(x).numpy()
    spec = A.spec()
    folder.mkdir(parents=True, exist_ok=True)
    embedded = medrecon.Measurement(y=y, operator_spec=spec, volume_shape=(2, 12, 10), arrays={"coil_maps": maps})
    return maps, y, spec, medrecon.save_measurement(embedded, folder / "embedded.h5")


def _with_file_ref(folder: Path, name: str, ref: str, y, spec) -> Path:
    spec = json.loads(json.dumps(spec))
    spec["params"]["coil_maps"] = {"file": ref}
    m = medrecon.Measurement(y=y, operator_spec=spec, volume_shape=(2, 12, 10))
    return medrecon.save_measurement(m, folder / name)


def test_array_references_stay_in_the_measurement_folder(tmp_path):
    folder, outside = tmp_path / "study", tmp_path / "outside"
    maps, y, spec, embedded = _sense_case(folder)
    outside.mkdir()
    np.save(outside / "maps.npy", maps)
    np.save(folder / "maps.npy", maps)
    (folder / "link.npy").symlink_to(outside / "maps.npy")
    before = sorted(p.name for p in outside.iterdir())
    hostile = {
        "absolute": _with_file_ref(folder, "absolute.h5", str(outside / "maps.npy"), y, spec),
        "'..'": _with_file_ref(folder, "climb.h5", "../outside/maps.npy", y, spec),
        "symbolic link": _with_file_ref(folder, "link.h5", "link.npy", y, spec),
    }
    for why, path in hostile.items():
        for args in (("info", path), ("reconstruct", path, "--sampler", "classical", "-o", tmp_path / "x.nii.gz",
                                      "--device", "cpu")):
            line = one_sentence(cli(*args), "coil_maps", "outside the measurement's folder", why,
                                "embed the array", "medrecon import")
        with pytest.raises(FileFormatError, match="outside the measurement's folder"):
            medrecon.load_measurement(path)
    assert "arrays/" in line and not (tmp_path / "x.nii.gz").exists()
    assert sorted(p.name for p in outside.iterdir()) == before
    # the same maps embedded, or in a file of the measurement's own folder (read from there, not from the
    # working directory): accepted, the same reconstruction
    inside = _with_file_ref(folder, "inside.h5", "maps.npy", y, spec)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    np.save(elsewhere / "maps.npy", np.zeros_like(maps))  # a decoy in the working directory
    outs = {}
    for name, path in (("embedded", embedded), ("inside", inside)):
        out = tmp_path / f"{name}.nii.gz"
        r = cli("reconstruct", path, "--sampler", "classical", "-o", out, "--device", "cpu", cwd=elsewhere)
        assert r.returncode == 0, r.stderr
        outs[name] = medrecon.load_volume(out).data
    assert np.abs(outs["embedded"]).max() > 0
    np.testing.assert_array_equal(outs["embedded"], outs["inside"])
    np.testing.assert_allclose(medrecon.load_measurement(inside).operator().coil_maps.numpy(), maps, rtol=1e-6)


# ----------------------------------------------------------------------------- HDF5 external data
def _other_hdf5(path: Path, name: str, data) -> Path:
    with h5py.File(path, "w") as f:
        f[name] = data
    return path


def test_measurement_with_external_link_or_storage_is_refused(tmp_path):
    secret = _other_hdf5(tmp_path / "secret.h5", "y", np.arange(32, dtype=np.float32).reshape(2, 4, 4))
    raw_secret = tmp_path / "secret.bin"
    raw_secret.write_bytes(np.arange(32, dtype=np.float32).tobytes())
    with h5py.File(tmp_path / "link.h5", "w") as f:
        _measurement_attrs(f)
        f["y"] = h5py.ExternalLink(str(secret), "/y")
    with h5py.File(tmp_path / "storage.h5", "w") as f:
        _measurement_attrs(f)
        f.create_dataset("y", shape=(2, 4, 4), dtype="f4", external=[(str(raw_secret), 0, 128)])
    with h5py.File(tmp_path / "system.h5", "w") as f:
        _measurement_attrs(f)
        f.create_dataset("y", shape=(16,), dtype="u1", external=[("/etc/passwd", 0, 16)])
    with h5py.File(tmp_path / "deep.h5", "w") as f:
        _measurement_attrs(f)
        f["y"] = np.zeros((2, 4, 4), np.float32)
        f.create_group("arrays")["coil_maps"] = h5py.ExternalLink(str(secret), "/y")
    cases = [("'y' is an HDF5 external link", tmp_path / "link.h5"),
             ("external storage", tmp_path / "storage.h5"),
             ("'/etc/passwd'", tmp_path / "system.h5"),
             ("'arrays/coil_maps' is an HDF5 external link", tmp_path / "deep.h5")]
    for word, path in cases:
        with pytest.raises(FileFormatError, match="stored inside the file"):
            medrecon.load_measurement(path)
        one_sentence(cli("info", path), word, "stored inside the file")
        one_sentence(cli("reconstruct", path, "--sampler", "classical", "-o", tmp_path / "r.nii.gz", "--device",
                         "cpu"), word, "stored inside the file")
    assert not (tmp_path / "r.nii.gz").exists()
    assert _small_measurement(tmp_path / "fine.h5") and cli("info", tmp_path / "fine.h5").returncode == 0


def test_fastmri_kspace_with_external_link_or_storage_is_refused(tmp_path):
    k = (np.ones((1, 2, 16, 16)) * (1 + 1j)).astype(np.complex64)
    secret = _other_hdf5(tmp_path / "secret.h5", "kspace", k)
    (tmp_path / "secret.bin").write_bytes(k.tobytes())
    with h5py.File(tmp_path / "link.h5", "w") as f:
        f["kspace"] = h5py.ExternalLink(str(secret), "/kspace")
    with h5py.File(tmp_path / "storage.h5", "w") as f:
        f.create_dataset("kspace", shape=k.shape, dtype="c8", external=[(str(tmp_path / "secret.bin"), 0, k.nbytes)])
    for path, word in ((tmp_path / "link.h5", "external link"), (tmp_path / "storage.h5", "external storage")):
        one_sentence(cli("import", path, "-o", tmp_path / "out.h5"), word, "stored inside the file")
        assert not (tmp_path / "out.h5").exists()


def test_every_hdf5_importer_refuses_external_data(tmp_path):
    from medrecon_ct.dxchange import DataExchangeImporter
    from medrecon_mri.importer import KSpaceImporter
    from medrecon_us.importer import RFImporter

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["d"] = np.ones((4, 2, 8), np.float32)
        f["raw"] = np.ones((1, 1, 8, 4, 1), np.float32)
    cases = []
    with h5py.File(tmp_path / "dx.h5", "w") as f:
        f.create_group("exchange")["data"] = h5py.ExternalLink(str(other), "/d")
    cases.append((DataExchangeImporter, tmp_path / "dx.h5"))
    with h5py.File(tmp_path / "zea.h5", "w") as f:
        f.create_group("data")["raw_data"] = h5py.ExternalLink(str(other), "/raw")
        f.create_group("scan")
    cases.append((RFImporter, tmp_path / "zea.h5"))
    with h5py.File(tmp_path / "mrd.h5", "w") as f:
        g = f.create_group("dataset")
        g["xml"] = h5py.ExternalLink(str(other), "/d")
        g.create_dataset("data", shape=(4,), dtype="f4", external=[(str(tmp_path / "x.bin"), 0, 16)])
    cases.append((KSpaceImporter, tmp_path / "mrd.h5"))
    for importer, path in cases:
        assert importer.can_read(path), importer  # claimed, so that read() says why it is refused
        with pytest.raises(FileFormatError, match="stored inside the file"):
            importer().read(path)


# ----------------------------------------------------------------------------- data manifests
def _manifest(folder: Path, name: str, files: list[dict], src: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    man = {"schema": "medrecon-dataset/1", "name": name, "title": "t", "modality": "CT", "licence": "CC0",
           "citation": "none", "source_url": src.as_uri(), "redistribution": "yes", "shape": [1],
           "spacing_mm": None, "files": files, "download": {"base_url": src.as_uri()}}
    (folder / "m.json").write_text(json.dumps(man))
    return folder


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_manifest_traversal_is_refused_by_fetch_verify_and_list(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.bin").write_bytes(b"payload")
    entry = {"path": "x.bin", "sha256": hashlib.sha256(b"payload").hexdigest(), "bytes": 7}
    base = tmp_path / "work"
    root = base / "root"
    root.mkdir(parents=True)
    mans = {
        "name": _manifest(tmp_path / "m1", "../evil", [entry], src),
        "file path": _manifest(tmp_path / "m2", "toy", [dict(entry, path="../../escape.bin")], src),
        "absolute": _manifest(tmp_path / "m3", "toy", [dict(entry, path=str(base / "abs.bin"))], src),
    }
    before = _listing(base)
    for why, mdir in mans.items():
        env = {"MEDRECON_MANIFESTS": str(mdir)}
        for args in (("data", "fetch", "toy", "--dest", root), ("data", "verify", "toy", "--root", root),
                     ("data", "list", "--root", root)):
            one_sentence(cli(*args, env=env), "plain folder name" if why == "name" else "relative")
        for args in (("data", "fetch", "../evil", "--dest", root), ("data", "verify", "../evil", "--root", root)):
            one_sentence(cli(*args, env=env), "plain folder name")
        assert _listing(base) == before, why
    # a name given on the command line is checked before any path is built from it
    good = _manifest(tmp_path / "m4", "toy", [entry], src)
    env = {"MEDRECON_MANIFESTS": str(good)}
    one_sentence(cli("data", "verify", "../root", "--root", root, env=env), "plain folder name")
    one_sentence(cli("data", "fetch", "..", "--dest", root, env=env), "plain folder name")
    assert _listing(base) == before
    # a data set folder, or a file in it, that is a symbolic link out of the root: refused, nothing follows it
    (base / "elsewhere").mkdir()
    (root / "toy").symlink_to(base / "elsewhere")
    before = _listing(base)
    one_sentence(cli("data", "fetch", "toy", "--dest", root, env=env), "symbolic link", "data root")
    one_sentence(cli("data", "verify", "toy", "--root", root, env=env), "symbolic link", "data root")
    r = cli("data", "list", "--root", root, env=env)
    assert r.returncode == 0 and any(ln.startswith("toy") and ln.rstrip().endswith("refused")
                                     for ln in r.stdout.splitlines()), r.stdout
    assert _listing(base) == before
    (root / "toy").unlink()
    (root / "toy").mkdir()
    (root / "toy" / "x.bin").symlink_to(src / "x.bin")
    one_sentence(cli("data", "verify", "toy", "--root", root, env=env), "symbolic link", "data set folder")
    one_sentence(cli("data", "fetch", "toy", "--dest", root, env=env), "symbolic link", "data set folder")
    assert (src / "x.bin").read_bytes() == b"payload"
    (root / "toy" / "x.bin").unlink()
    assert cli("data", "fetch", "toy", "--dest", root, env=env).returncode == 0
    assert cli("data", "verify", "toy", "--root", root, env=env).returncode == 0


# ----------------------------------------------------------------------------- .partial links
def test_symlinked_partial_folder_is_refused_and_left_alone(tmp_path):
    m = _small_measurement(tmp_path / "m.h5")
    out = tmp_path / "r.nii.gz"
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    link = tmp_path / "r.nii.gz.partial"
    link.symlink_to(target, target_is_directory=True)
    for flag in ("--overwrite", "--resume"):
        r = cli("reconstruct", m, "--sampler", "classical", "-o", out, "--device", "cpu", flag)
        one_sentence(r, "symbolic link", "r.nii.gz.partial")
        assert link.is_symlink() and link.resolve() == target.resolve()
        assert _listing(target) == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"
        assert not out.exists()
    link.unlink()
    link.symlink_to(tmp_path / "missing")  # a dangling link: the same sentence, nothing created
    one_sentence(cli("reconstruct", m, "--sampler", "classical", "-o", out, "--device", "cpu"), "symbolic link")
    assert not (tmp_path / "missing").exists()
