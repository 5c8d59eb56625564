"""Bad raw k-space fails early in one sentence that names the ``--import-option`` that fixes it
(or says that none does): a calibration region too small for the coil maps, a file mask that
contradicts the data, NaN / infinite samples, an ambiguous coil axis."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from medrecon_mri.coils import synthetic_coil_maps
from medrecon_mri.fft import fft2c_np

from medrecon.engine import load_input
from medrecon.errors import FileFormatError, InputError

N, C = 32, 4


def _kspace(slices=1, coils=C, seed=0):
    """(slices, coils, N, N) complex64 k-space of a random complex image: no line is exactly zero."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((slices, N, N)) + 1j * rng.standard_normal((slices, N, N))
    return fft2c_np(synthetic_coil_maps((N, N), coils)[None] * x[:, None]).astype(np.complex64)


def _mask(acs, step=4):
    m = np.zeros(N, bool)
    m[::step] = True
    m[N // 2 - acs // 2:N // 2 - acs // 2 + acs] = True
    return m


def _h5(path, k, mask=None, header=None, **extra):
    with h5py.File(path, "w") as f:
        f["kspace"] = k
        if mask is not None:
            f["mask"] = np.asarray(mask, np.float32)
        if header is not None:
            f["ismrmrd_header"] = header
        for name, v in extra.items():
            f[name] = v
    return path


def _header(channels):
    return ("<ismrmrdHeader xmlns='http://www.ismrm.org/ISMRMRD'><acquisitionSystemInformation>"
            f"<receiverChannels>{channels}</receiverChannels></acquisitionSystemInformation></ismrmrdHeader>")


def _one_sentence(exc, *words):
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def _cli_fails(raw, out, *options):
    cmd = [sys.executable, "-m", "medrecon.cli.main", "import", str(raw), "--output", str(out)]
    for o in options:
        cmd += ["--import-option", o]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
    return r.stderr


@pytest.fixture
def no_estimation(monkeypatch):
    """Coil-map and phase estimation must not be reached: the importer refuses first."""
    import medrecon_mri.coils as coils

    def boom(*a, **k):
        raise AssertionError("coil estimation reached")

    monkeypatch.setattr(coils, "estimate_coil_maps", boom)
    monkeypatch.setattr(coils, "lowres_coil_images", boom)


# 1. calibration region too small for the coil-map method

@pytest.mark.parametrize("method", ["espirit", "auto", "lowres", "walsh"])
def test_acs_too_small_for_any_method_names_calib(tmp_path, no_estimation, method):
    m = _mask(acs=2)
    p = _h5(tmp_path / "acs2.h5", _kspace() * m, m)
    with pytest.raises(InputError) as e:
        load_input(p, coil_method=method)
    _one_sentence(e, "32 x 2 calibration region", "--import-option calib=[rows,cols]", "at least 4 x 4")


def test_acs_too_small_with_undersample_also_names_center_fraction(tmp_path, no_estimation):
    p = _h5(tmp_path / "full.h5", _kspace())
    with pytest.raises(InputError) as e:
        load_input(p, undersample={"kind": "equispaced", "acceleration": 4, "center_fraction": 0.03})
    _one_sentence(e, "calib=[rows,cols]", "center_fraction in --import-option undersample=")


def test_acs_too_small_for_espirit_only_names_coil_method_lowres(tmp_path, monkeypatch, no_estimation):
    """Today ESPIRiT's smallest kernel (3 x 3) needs the same 4 lines as lowres; should it need more, a
    region between the two is refused for espirit alone, naming coil_method=lowres."""
    import medrecon_mri.espirit as espirit

    monkeypatch.setattr(espirit, "min_calib", lambda kernel: 8)
    m = _mask(acs=6)
    p = _h5(tmp_path / "acs6.h5", _kspace() * m, m)
    with pytest.raises(InputError) as e:
        load_input(p, coil_method="espirit")
    _one_sentence(e, "ESPIRiT", "at least 8", "--import-option coil_method=lowres", "calib=[rows,cols]")


def test_espirit_on_a_4_line_acs_still_works(tmp_path):
    m = _mask(acs=4)
    meas = load_input(_h5(tmp_path / "acs4.h5", _kspace() * m, m), coil_method="espirit")
    assert meas.provenance["coil_method"] == "espirit" and meas.arrays["coil_maps"].shape == (C, N, N)


def test_single_coil_phase_needs_a_calibration_region_or_real_image_false(tmp_path, no_estimation):
    m = _mask(acs=2)
    p = _h5(tmp_path / "sc.h5", (_kspace(coils=1) * m)[:, 0], m)
    with pytest.raises(InputError) as e:
        load_input(p)
    _one_sentence(e, "image phase", "--import-option real_image=false", "calib=[rows,cols]")


def test_single_coil_complex_image_needs_no_calibration(tmp_path):
    m = _mask(acs=2)
    meas = load_input(_h5(tmp_path / "sc.h5", (_kspace(coils=1) * m)[:, 0], m), real_image=False)
    assert meas.operator_spec["name"] == "mri.cartesian"


# 2. a file mask that contradicts the zeros of the k-space

def test_mask_marks_an_all_zero_line_sampled(tmp_path, no_estimation):
    m = _mask(acs=8)
    bad = m.copy()
    bad[[1, 2]] = True  # all zero in the data
    p = _h5(tmp_path / "m.h5", _kspace(slices=2) * m, bad)
    with pytest.raises(FileFormatError) as e:
        load_input(p)
    _one_sentence(e, "disagrees with the k-space in 2 of 32", "2 marked sampled but all zero",
                  "--import-option mask=infer")


def test_mask_marks_a_line_with_tiny_data_unsampled(tmp_path, no_estimation):
    m = _mask(acs=8)
    k = _kspace() * m
    k[0, 2, 5, 1] = 1e-12  # a line the mask calls unsampled holds a (tiny) sample
    p = _h5(tmp_path / "m.h5", k, m)
    with pytest.raises(FileFormatError) as e:
        load_input(p)
    _one_sentence(e, "in 1 of 32", "1 marked unsampled but holding data", "--import-option mask=infer")


def test_mask_infer_ignores_the_file_mask(tmp_path):
    m = _mask(acs=8)
    p = _h5(tmp_path / "m.h5", _kspace() * m, np.ones(N))
    meas = load_input(p, mask="infer")
    assert meas.operator_spec["params"]["mask"] == m.astype(int).tolist()
    assert meas.provenance["mask_source"] == "inferred from the data"
    with pytest.raises(InputError) as e:
        load_input(p, mask="ignore")
    _one_sentence(e, "mask must be file or infer")


def test_mask_contradiction_through_the_cli(tmp_path):
    m = _mask(acs=8)
    p = _h5(tmp_path / "m.h5", _kspace(), m)  # fully sampled data, an undersampled mask
    err = _cli_fails(p, tmp_path / "meas.h5")
    assert "mask dataset disagrees" in err and "--import-option mask=infer" in err


# 3. NaN or infinite samples

def test_nan_and_inf_are_a_corrupt_file(tmp_path, no_estimation):
    k = _kspace()
    k[0, 1, 3, 4] = np.nan
    k[0, 2, 7, 9] = np.inf
    with pytest.raises(FileFormatError) as e:
        load_input(_h5(tmp_path / "nan.h5", k))
    msg = _one_sentence(e, "2 of ", "NaN or infinite", "corrupt", "no --import-option can repair it")
    assert "slice=" not in msg


def test_nan_in_one_slice_points_to_slice_option(tmp_path):
    k = _kspace(slices=3)
    k[1, 0, 0, 0] = complex(np.nan, 0)
    p = _h5(tmp_path / "nan.h5", k)
    with pytest.raises(FileFormatError) as e:
        load_input(p)
    _one_sentence(e, "1 of ", "only slice 1 holds them", "--import-option slice=K", "slice=0")
    assert load_input(p, slice=2, coil_method="lowres").y.shape == (1, C, N, N)


def test_nan_through_the_cli(tmp_path):
    k = np.transpose(_kspace()[0], (2, 0, 1)).copy()  # lin, cha, col
    k[3, 1, 2] = np.nan
    p = tmp_path / "scan_lin_cha_col.npy"
    np.save(p, k)
    err = _cli_fails(p, tmp_path / "meas.h5")
    assert "NaN or infinite" in err and "corrupt" in err


# 4. an ambiguous coil axis

def test_3d_hdf5_with_several_receiver_channels_is_ambiguous(tmp_path, no_estimation):
    p = _h5(tmp_path / "k3.h5", _kspace()[0], header=_header(C))
    with pytest.raises(InputError) as e:
        load_input(p)
    _one_sentence(e, "ambiguous", f"lists {C} receiver channels", "--import-option layout=cha_col_lin",
                  "layout=slc_col_lin")


def test_3d_hdf5_layout_option_resolves_it(tmp_path):
    p = _h5(tmp_path / "k3.h5", _kspace()[0], header=_header(C))
    coils = load_input(p, layout="cha_col_lin", coil_method="lowres")
    assert coils.operator_spec["name"] == "mri.sense" and coils.y.shape == (1, C, N, N)
    slices = load_input(p, layout="slc_col_lin")
    assert slices.operator_spec["name"] == "mri.cartesian" and slices.volume_shape == (C, N, N)


def test_3d_hdf5_without_ambiguity_is_single_coil_slices(tmp_path):
    k = _kspace()[0]
    for name, kw in (("nohdr", {}), ("onechannel", {"header": _header(1)}),
                     ("esc", {"header": _header(C), "reconstruction_esc": np.zeros((C, 4, 4), np.float32)}),
                     ("manyslices", {"header": _header(2)})):
        m = load_input(_h5(tmp_path / f"{name}.h5", k, **kw))
        assert m.operator_spec["name"] == "mri.cartesian" and m.volume_shape == (C, N, N), name


def test_3d_hdf5_ambiguity_through_the_cli(tmp_path):
    p = _h5(tmp_path / "k3.h5", _kspace()[0], header=_header(C))
    assert "--import-option layout=cha_col_lin" in _cli_fails(p, tmp_path / "meas.h5")


def test_npy_layouts_that_cannot_be_guessed(tmp_path, no_estimation):
    k = _kspace(slices=2)  # (slc, cha, col, lin)
    p3 = tmp_path / "k3.npy"
    np.save(p3, k[0])
    with pytest.raises(InputError) as e:
        load_input(p3)
    _one_sentence(e, "--import-option layout=cha_col_lin")
    p4 = tmp_path / "k4.npy"
    np.save(p4, np.transpose(k, (3, 1, 2, 0)))  # (lin, cha, col, slc) unnamed: a phase-encode axis of 2?
    with pytest.raises(InputError) as e:
        load_input(p4)
    _one_sentence(e, "(32, 4, 32, 2)", "--import-option layout=")


def test_unknown_coil_method_is_one_sentence(tmp_path):
    with pytest.raises(InputError) as e:
        load_input(_h5(tmp_path / "k.h5", _kspace()), coil_method="sos")
    _one_sentence(e, "coil_method must be one of", "espirit")
