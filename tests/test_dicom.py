"""DICOM series reading and derived-series writing (medrecon.io.dicom)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medrecon
from medrecon.errors import FileFormatError, InputError
from medrecon.io.dicom import GeometryWarning, scan_series

DIRTESTS = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _copy(files, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, dest / Path(f).name)
    return dest


def _slice(path: Path, arr, ipp, iop=(1, 0, 0, 0, 1, 0), ps=(0.5, 0.7), series_uid="1.2.3.4",
           instance=1, slope=1.0, intercept=0.0, modality="CT", description="synthetic", tilt=None):
    """Write one minimal uncompressed CT/MR slice with pydicom."""
    fm = FileMetaDataset()
    sop = generate_uid()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    fm.MediaStorageSOPInstanceUID = sop
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, sop
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "Test^Patient", "P001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", series_uid
    ds.FrameOfReferenceUID = "1.2.3.9"
    ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, 7, instance
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [float(v) for v in ps]
    ds.SliceThickness = 2.0
    if tilt is not None:
        ds.GantryDetectorTilt = tilt
    a = np.asarray(arr, dtype=np.int16)
    ds.Rows, ds.Columns = a.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = a.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _series(folder: Path, n=4, shape=(6, 5), step=(0, 0, 2.0), origin=(-10, -20, 30), order=None, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    raws = []
    for k in range(n):
        raw = rng.integers(-500, 1500, size=shape)
        raws.append(raw)
        ipp = np.asarray(origin, float) + k * np.asarray(step, float)
        name = (order[k] if order is not None else k)
        _slice(folder / f"f{name:03d}.dcm", raw, ipp, instance=n - k, **kw)
    return np.stack(raws)


def _nib_wrappers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "DICOM readers are highly experimental"
        from nibabel.nicom import dicomwrappers
    return dicomwrappers


# ---------------------------------------------------------------- decoding
MR_VARIANTS = [
    "MR_small_RLE.dcm",  # RLE Lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
]


@pytest.mark.parametrize("name", MR_VARIANTS)
def test_compressed_transfer_syntaxes_decode_to_the_same_values(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        ref = medrecon.load_volume(get_testdata_file("MR_small.dcm"))
        vol = medrecon.load_volume(get_testdata_file(name))
    assert vol.shape == (1, 64, 64)
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_allclose(vol.affine, ref.affine)


def test_jpeg_baseline_decodes(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    import io

    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    img = (np.add.outer(np.arange(32), np.arange(32)) * 4).astype(np.uint8)
    buf = io.BytesIO()
    PIL.fromarray(img).save(buf, format="JPEG", quality=95)
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        vol = medrecon.load_volume(tmp_path)
    assert vol.meta["transfer_syntax"] == JPEGBaseline8Bit
    assert np.abs(vol.data[0] - img).max() <= 8  # lossy


def test_unsupported_transfer_syntax_is_named(tmp_path):
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "mpeg.dcm", enforce_file_format=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        with pytest.raises(FileFormatError, match="MPEG2.*1.2.840.10008.1.2.4.100.*not supported"):
            medrecon.load_volume(tmp_path)


def test_truncated_pixels_are_a_clear_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        with pytest.raises(FileFormatError, match="truncated or corrupt"):
            medrecon.load_volume(get_testdata_file("MR_truncated.dcm"))


def test_ct_small_rescale_to_hu():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        vol = medrecon.load_volume(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    expect = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.data[0], expect.astype(np.float32))
    assert vol.meta["units"] == "HU" and vol.meta["modality"] == "CT"


# ------------------------------------------------------- series handling
def test_descending_instance_numbers_sorted_by_position(tmp_path):
    # SmartScore: InstanceNumber 6..10 while the z position decreases
    files = sorted((DIRTESTS / "98892001" / "CT5N").iterdir())
    folder = _copy(files, tmp_path / "ct5n")
    vol = medrecon.load_volume(folder)
    assert vol.shape == (5, 16, 16)
    lps = LPS @ vol.affine
    assert lps[2, 2] == pytest.approx(2.5)  # k increases along +z (the normal)
    assert lps[2, 3] == pytest.approx(-1.2375)  # first slice = lowest z
    zs = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
          for f in vol.meta["source_files"]]
    assert zs == sorted(zs)
    inst = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in vol.meta["source_files"]]
    assert inst == sorted(inst, reverse=True)


def test_affine_agrees_with_nibabel_wrapper(tmp_path):
    folder = _copy(sorted((DIRTESTS / "98892001" / "CT5N").iterdir()), tmp_path / "s")
    vol = medrecon.load_volume(folder)
    w = _nib_wrappers().wrapper_from_file(vol.meta["source_files"][0])
    nib_aff = w.affine  # LPS, voxel (row, column, slice)
    ours = LPS @ vol.affine  # LPS, voxel (column, row, slice)
    np.testing.assert_allclose(ours[:3, 0], nib_aff[:3, 1], atol=1e-6)
    np.testing.assert_allclose(ours[:3, 1], nib_aff[:3, 0], atol=1e-6)
    # nibabel's slice axis is C x R (right-handed for its (row, column) order); ours is R x C,
    # the direction in which we sort the slices
    np.testing.assert_allclose(ours[:3, 2], -nib_aff[:3, 2], atol=1e-6)
    np.testing.assert_allclose(ours[:3, 3], nib_aff[:3, 3], atol=1e-6)
    np.testing.assert_allclose(vol.data[0], w.get_data().astype(np.float32))


def test_gap_is_refused(tmp_path):
    # "Routine Brain": slices at z = -99.48, 103.02, 104.27, 105.52
    folder = _copy(sorted((DIRTESTS / "77654033" / "CT2").iterdir()), tmp_path / "gap")
    with pytest.raises(FileFormatError, match="unevenly spaced.*missing slice"):
        medrecon.load_volume(folder)


def test_variable_spacing_is_described_by_its_runs_and_info_shows_it(tmp_path):
    """3 steps of 2 mm, one of 5 mm, then 2 of 3 mm: the refusal lists the runs in order (not "5 mm
    but 2 mm elsewhere"), and ``medrecon info`` describes the series instead of refusing."""
    import subprocess
    import sys

    from medrecon.io.dicom import UnevenSpacingError

    vol = medrecon.Volume(np.zeros((7, 8, 8), np.float32), meta={"modality": "CT", "units": "HU"})
    folder = medrecon.save_volume(vol, tmp_path / "s")
    zs = np.cumsum([0.0, 2, 2, 2, 5, 3, 3])
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        ds.ImagePositionPatient = [*map(float, ds.ImagePositionPatient[:2]), float(zs[k])]
        ds.save_as(f)
    with pytest.raises(UnevenSpacingError) as exc:
        medrecon.load_volume(folder)
    assert "3 steps of 2.000 mm, 1 of 5.000 mm, then 2 of 3.000 mm" in str(exc.value)
    r = subprocess.run([sys.executable, "-m", "medrecon.cli.main", "info", str(folder)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "7 slice(s)" in r.stdout and "geometry: slices are unevenly spaced" in r.stdout


def test_mixed_series_lists_them_and_selects(tmp_path):
    folder = tmp_path / "mixed"
    _copy(sorted((DIRTESTS / "98892001" / "CT5N").iterdir()), folder / "a")
    _copy(sorted((DIRTESTS / "77654033" / "CT2").iterdir())[1:], folder / "b")  # no gap
    with pytest.raises(InputError) as exc:
        medrecon.load_volume(folder)
    msg = str(exc.value)
    assert "holds 2 series" in msg and "SmartScore" in msg and "Routine Brain" in msg
    assert "\n" not in msg and "slice(s)" in msg
    series = scan_series(folder)
    by_desc = medrecon.load_volume(folder, series="Routine Brain")
    assert by_desc.shape == (3, 16, 16)
    by_uid = medrecon.load_volume(folder, series=series[0].uid)
    by_idx = medrecon.load_volume(folder, series=0)
    np.testing.assert_array_equal(by_uid.data, by_idx.data)
    with pytest.raises(InputError, match="no series"):
        medrecon.load_volume(folder, series="nope")
    with pytest.raises(InputError, match="out of range"):
        medrecon.load_volume(folder, series=5)


def test_mixed_orientations_refused(tmp_path):
    # "Scout": one series, two orientations
    folder = _copy(sorted((DIRTESTS / "98892001" / "CT2N").iterdir()), tmp_path / "scout")
    with pytest.raises(FileFormatError, match="mixes orientations"):
        medrecon.load_volume(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        uid = scan_series(folder)[0].uid
        with pytest.raises(FileFormatError, match="mixes orientations"):
            medrecon.load_volume(folder, series=uid)
        one = medrecon.load_volume(folder, series=uid + "#1")
    assert one.shape[0] == 1


def test_duplicate_positions_refused(tmp_path):
    f = sorted((DIRTESTS / "98892001" / "CT5N").iterdir())[0]
    folder = tmp_path / "dup"
    folder.mkdir()
    shutil.copy(f, folder / "a.dcm")
    shutil.copy(f, folder / "b.dcm")
    with pytest.raises(FileFormatError, match="duplicate slice position"):
        medrecon.load_volume(folder)


def test_non_dicom_files_skipped_and_empty_folder(tmp_path):
    raw = _series(tmp_path / "s", n=3)
    (tmp_path / "s" / "LICENSE").write_text("not dicom")
    vol = medrecon.load_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.data, raw.astype(np.float32))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("hello")
    with pytest.raises(FileFormatError, match="no DICOM images"):
        medrecon.load_volume(tmp_path / "empty")
    with pytest.raises(FileFormatError, match="no such"):
        medrecon.load_volume(tmp_path / "missing")


def test_recursive_search_and_per_slice_rescale(tmp_path):
    folder = tmp_path / "r"
    rng = np.random.default_rng(1)
    raws = [rng.integers(0, 1000, size=(4, 4)) for _ in range(3)]
    for k, raw in enumerate(raws):
        sub = folder / f"sub{k}"
        sub.mkdir(parents=True)
        _slice(sub / "x.dcm", raw, (0, 0, 3.0 * k), slope=0.5 * (k + 1), intercept=-10.0 * k)
    vol = medrecon.load_volume(folder)
    for k, raw in enumerate(raws):
        np.testing.assert_allclose(vol.data[k], raw * 0.5 * (k + 1) - 10.0 * k)
    assert vol.spacing == pytest.approx((3.0, 0.5, 0.7))  # (dz, dy=row spacing, dx=column spacing)


def test_gantry_tilt_detected_and_positions_kept(tmp_path):
    t = np.radians(12.0)
    raw = _series(tmp_path / "tilt", n=4, step=(0, 2.0 * np.tan(t), 2.0), tilt=12.0)
    with pytest.warns(GeometryWarning, match="gantry tilt of 12.00 degrees.*not resampled"):
        vol = medrecon.load_volume(tmp_path / "tilt")
    assert vol.meta["gantry_tilt_deg"] == pytest.approx(12.0, abs=1e-3)
    np.testing.assert_array_equal(vol.data, raw.astype(np.float32))
    lps = LPS @ vol.affine
    np.testing.assert_allclose(lps[:3, 2], [0, 2.0 * np.tan(t), 2.0], atol=1e-6)
    # a derived series keeps the sheared positions
    medrecon.save_volume(vol, tmp_path / "out")
    with pytest.warns(GeometryWarning):
        back = medrecon.load_volume(tmp_path / "out")
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_oblique_orientation_affine(tmp_path):
    a = np.radians(30)
    r = (np.cos(a), np.sin(a), 0.0)
    c = (0.0, 0.0, -1.0)  # coronal-ish oblique
    n = np.cross(r, c)
    _series(tmp_path / "obl", n=3, step=tuple(1.5 * n), iop=(*r, *c), ps=(0.8, 0.6))
    vol = medrecon.load_volume(tmp_path / "obl")
    lps = LPS @ vol.affine
    np.testing.assert_allclose(lps[:3, 0], 0.6 * np.array(r), atol=1e-6)
    np.testing.assert_allclose(lps[:3, 1], 0.8 * np.array(c), atol=1e-6)
    np.testing.assert_allclose(lps[:3, 2], 1.5 * n, atol=1e-6)
    medrecon.save_volume(vol, tmp_path / "out")
    back = medrecon.load_volume(tmp_path / "out")
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    np.testing.assert_array_equal(back.data, vol.data)


# ------------------------------------------------------------ writing
def test_derived_series_tags_and_quantisation(tmp_path):
    _series(tmp_path / "src", n=3)
    src = medrecon.load_volume(tmp_path / "src")
    vol = medrecon.Volume(src.data * 0.37 + 0.123, src.affine, src.meta)  # non-integer values
    out = medrecon.save_volume(vol, tmp_path / "derived")
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm"]
    d0 = pydicom.dcmread(files[0])
    assert list(d0.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert d0.SeriesInstanceUID != src.meta["series_uid"]
    assert d0.StudyInstanceUID == "1.2.3" and d0.FrameOfReferenceUID == "1.2.3.9"
    assert str(d0.PatientName) == "Test^Patient" and d0.PatientID == "P001"
    assert d0.SourceImageSequence[0].ReferencedSOPInstanceUID == src.meta["source_sop_instance_uids"][0]
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == 3
    back = medrecon.load_volume(out)
    slope = float(d0.RescaleSlope)
    assert np.abs(back.data - vol.data).max() <= slope / 2 + 1e-6 * np.abs(vol.data).max()
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    assert back.meta["series_uid"] == d0.SeriesInstanceUID


def test_write_refuses_existing_and_overwrites(tmp_path):
    vol = medrecon.Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.diag([1, 1, 2, 1.0]),
                          {"modality": "CT", "units": "HU"})
    out = tmp_path / "d"
    medrecon.save_volume(vol, out)
    with pytest.raises(InputError, match="already exists"):
        medrecon.save_volume(vol, out)
    vol2 = medrecon.Volume(vol.data + 1, vol.affine, vol.meta)
    medrecon.save_volume(vol2, out, overwrite=True)
    np.testing.assert_array_equal(medrecon.load_volume(out).data, vol2.data)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left behind


def test_like_takes_tags_from_a_dicom_folder(tmp_path):
    _series(tmp_path / "src", n=2)
    vol = medrecon.Volume(np.zeros((2, 6, 5)), np.eye(4))
    out = medrecon.save_volume(vol, tmp_path / "d", like=tmp_path / "src")
    d0 = pydicom.dcmread(sorted(out.iterdir())[0])
    assert d0.PatientID == "P001" and d0.StudyInstanceUID == "1.2.3" and d0.Modality == "CT"


# ------------------------------------------------------------ real data
@pytest.mark.shared_data
def test_shared_ct_series(shared_data, tmp_path):
    folder = shared_data / "ct-pancreas-tcia"
    vol = medrecon.load_volume(folder)
    assert vol.shape == (134, 512, 512)
    assert vol.spacing == pytest.approx((3.0, 1.07421875, 1.07421875))
    assert vol.meta["units"] == "HU" and vol.data.min() == -1000 and vol.data.max() == 1988
    # agrees with nibabel for the first slice in our order
    dicomwrappers = _nib_wrappers()
    w = dicomwrappers.wrapper_from_file(vol.meta["source_files"][0])
    ours = LPS @ vol.affine
    np.testing.assert_allclose(ours[:3, 3], w.affine[:3, 3], atol=1e-6)
    np.testing.assert_allclose(ours[:3, 0], w.affine[:3, 1], atol=1e-6)
    # DICOM -> NIfTI -> DICOM on a slab keeps affine and values
    slab = vol.slab(40, 44)
    medrecon.save_volume(slab, tmp_path / "s.nii.gz")
    nii = medrecon.load_volume(tmp_path / "s.nii.gz")
    medrecon.save_volume(nii, tmp_path / "s_dcm")
    back = medrecon.load_volume(tmp_path / "s_dcm")
    np.testing.assert_allclose(back.affine, slab.affine, atol=1e-4)
    np.testing.assert_array_equal(back.data, slab.data)
    assert back.meta["dicom"]["PatientID"] == "Pancreas-CT-CB_001"


@pytest.mark.shared_data
def test_shared_mr_series(shared_data):
    vol = medrecon.load_volume(shared_data / "mr-t1-mprage-niivue")
    assert vol.shape == (120, 512, 512)
    assert vol.spacing == pytest.approx((1.5, 0.41015625, 0.41015625), rel=1e-4)
    assert vol.meta["modality"] == "MR" and np.isfinite(vol.data).all()


def test_rtdose_grid_frame_offsets():
    vol = medrecon.load_volume(get_testdata_file("rtdose.dcm"))
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    assert vol.shape == (int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    assert vol.meta["units"] == str(ds.DoseUnits)
    off = np.array([float(v) for v in ds.GridFrameOffsetVector])
    assert vol.spacing[0] == pytest.approx(abs(off[1] - off[0]))


def test_enhanced_multiframe(tmp_path):
    from pydicom.sequence import Sequence

    n, ny, nx = 3, 4, 5
    frames = np.arange(n * ny * nx, dtype=np.int16).reshape(n, ny, nx)
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
        if kw in ds:
            delattr(ds, kw)
    ds.Rows, ds.Columns, ds.NumberOfFrames = ny, nx, n
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing, pm.SliceThickness = [0.9, 0.8], 2.0
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([pm]), Sequence([po])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in (2, 0, 1):  # frames stored out of order
        it, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = [0.0, 0.0, 4.0 * k]
        it.PlanePositionSequence = Sequence([pp])
        per.append(it)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "enh.dcm", enforce_file_format=True)
    vol = medrecon.load_volume(tmp_path / "enh.dcm")
    np.testing.assert_array_equal(vol.data, frames[[1, 2, 0]].astype(np.float32))
    assert vol.spacing == pytest.approx((4.0, 0.9, 0.8))


def test_derived_mr_series_has_required_mr_attributes(tmp_path):
    vol = medrecon.Volume(np.random.default_rng(0).random((2, 4, 4)) * 1000, np.eye(4), {"modality": "MR"})
    out = medrecon.save_volume(vol, tmp_path / "mr")
    d0 = pydicom.dcmread(sorted(out.iterdir())[0])
    assert d0.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and d0.ScanningSequence == "RM"
    assert np.abs(medrecon.load_volume(out).data - vol.data).max() <= float(d0.RescaleSlope) / 2 + 1e-4


def test_file_without_preamble_is_read(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.preamble = None
    del ds.file_meta
    folder = tmp_path / "old"
    folder.mkdir()
    ds.save_as(folder / "IMG", implicit_vr=False, little_endian=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        vol = medrecon.load_volume(folder)
        ref = medrecon.load_volume(get_testdata_file("CT_small.dcm"))
    np.testing.assert_array_equal(vol.data, ref.data)
    # missing parent folders of an output are created
    out = medrecon.save_volume(vol, tmp_path / "a" / "b" / "v.nii.gz")
    assert out.is_file()


NIB_DICOM = Path(__import__("nibabel").__file__).parent / "nicom" / "tests" / "data"


def _gunzip(src: Path, dest: Path) -> Path:
    import gzip

    dest.write_bytes(gzip.decompress(src.read_bytes()))
    return dest


def test_siemens_mosaic_matches_nibabel(tmp_path):
    f = _gunzip(NIB_DICOM / "siemens_dwi_1000.dcm.gz", tmp_path / "dwi.dcm")
    vol = medrecon.load_volume(f)
    w = _nib_wrappers().wrapper_from_file(f)
    assert vol.shape == (48, 128, 128) and vol.meta["mosaic"]
    np.testing.assert_array_equal(vol.data, np.asarray(w.get_data(), np.float32).transpose(2, 0, 1))
    np.testing.assert_allclose(LPS @ vol.affine, w.affine[:, [1, 0, 2, 3]], atol=1e-6)


def test_enhanced_philips_multiframe_geometry(tmp_path):
    f = _gunzip(NIB_DICOM / "philips_mprage.dcm.gz", tmp_path / "mprage.dcm")
    vol = medrecon.load_volume(f)
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    n = int(ds.NumberOfFrames)
    assert vol.shape == (n, ds.Rows, ds.Columns)
    ipps = np.array([[float(v) for v in fr.PlanePositionSequence[0].ImagePositionPatient]
                     for fr in ds.PerFrameFunctionalGroupsSequence])
    lps = LPS @ vol.affine
    # every frame sits at its own ImagePositionPatient (frames are stored in normal order here)
    pos = (lps[:3, :3] @ np.stack([np.zeros(n), np.zeros(n), np.arange(n)]) + lps[:3, 3:]).T
    np.testing.assert_allclose(pos, ipps, atol=1e-3)
    # nibabel indexes the same grid with k reversed: same voxel positions
    w = _nib_wrappers().wrapper_from_file(f)
    na = w.affine
    np.testing.assert_allclose(lps[:3, 2], -na[:3, 2], atol=1e-3)
    # (nibabel steps by the nominal 1 mm, the positions by 0.99994 mm: 0.01 mm over 175 slices)
    np.testing.assert_allclose(lps[:3, 3], na[:3, 3] + (n - 1) * na[:3, 2], atol=0.01)
