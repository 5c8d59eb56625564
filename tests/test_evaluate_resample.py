"""``medrecon evaluate RECON --reference REF --resample-reference``: a run made on another grid than
the reference (``simulate --slices``, ``--resample``, ``--pixel-size``) scored from the CLI alone,
with the reference resampled onto the reconstruction's grid by position; the same PSNR as against
the reference cut / resampled by hand; without the option, or without overlap, one sentence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medrecon
from medrecon.errors import InputError
from medrecon.evaluation import evaluate
from medrecon.io.resample import resample_to_grid
from medrecon.simulation import resample_inplane

DRIVER = Path(__file__).resolve().parent / "cli_driver.py"
Z, N = 6, 32
#: a placed reference: 0.8 mm pixels, 2.5 mm slices, an origin away from 0
AFFINE = np.array([[0.8, 0, 0, -12.0], [0, 0.8, 0, -14.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
RUNS = {"slices": ["--slices", "2:4"], "resample": ["--resample", "16x16"],
        "both": ["--slices", "3:6", "--pixel-size", "1.7"]}


def _hand_reference(truth, run):
    """The reference cut / resampled with the tools ``simulate`` itself uses (Volume.slab,
    resample_inplane), independently of ``--resample-reference``'s resample_to_grid."""
    if run == "slices":
        return truth.slab(2, 4)
    if run == "resample":
        return resample_inplane(truth, (16, 16))
    return resample_inplane(truth.slab(3, 6), pixel_size=1.7)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    d = tmp_path_factory.mktemp("evres")
    ph = resize(shepp_logan_phantom(), (N, N), anti_aliasing=True)
    data = np.stack([ph * (1 + 0.05 * k) for k in range(Z)]) * 1000 - 1000
    truth = medrecon.Volume(data.astype(np.float32), AFFINE, {"modality": "CT", "units": "HU"})
    medrecon.save_volume(truth, d / "truth.nii.gz")
    far = medrecon.Volume(truth.data, AFFINE + np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 500.0], [0, 0, 0, 0]]),
                          truth.meta)
    medrecon.save_volume(far, d / "far.nii.gz")
    medrecon.save_volume(truth.slab(0, 4), d / "part.nii.gz")  # holds slices 0:4 only (the run is 3:6)
    cases = []
    for run, extra in RUNS.items():
        cases += [
            {"id": f"sim-{run}", "argv": ["simulate", "ct.parallel", "-i", "truth.nii.gz", "-o", f"{run}.h5",
                                          "-p", "n_views=24", *extra]},
            {"id": f"rec-{run}", "argv": ["reconstruct", f"{run}.h5", "--sampler", "classical", "-o",
                                          f"{run}.nii.gz"]},
            {"id": f"eval-{run}", "argv": ["evaluate", f"{run}.nii.gz", "-r", "truth.nii.gz",
                                           "--resample-reference", "--json", f"{run}.json"]},
            {"id": f"plain-{run}", "argv": ["evaluate", f"{run}.nii.gz", "-r", "truth.nii.gz"]},
        ]
    cases += [
        {"id": "far", "argv": ["evaluate", "slices.nii.gz", "-r", "far.nii.gz", "--resample-reference"]},
        {"id": "part", "argv": ["evaluate", "both.nii.gz", "-r", "part.nii.gz", "--resample-reference"]},
        {"id": "with-regions", "argv": ["evaluate", "slices.nii.gz", "-r", "truth.nii.gz", "--bmode",
                                        "--resample-reference"]},
    ]
    for c in cases:
        c["cwd"] = str(d)
    (d / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, str(DRIVER), str(d / "cases.json"), str(d / "results.json")],
                   check=True, timeout=600)
    return d, truth, json.loads((d / "results.json").read_text())


def _one_sentence(r, *words):
    assert r["rc"] == 2, r
    lines = r["stderr"].strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r["stderr"], r["stderr"]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("run", list(RUNS))
def test_resample_reference_gives_the_psnr_of_the_hand_made_reference(study, run):
    d, truth, res = study
    for step in ("sim", "rec", "eval"):
        assert res[f"{step}-{run}"]["rc"] == 0, res[f"{step}-{run}"]["stderr"]
    assert "reference resampled from 6x32x32 to the reconstruction's grid" in res[f"eval-{run}"]["stdout"]
    got = json.loads((d / f"{run}.json").read_text())
    recon = medrecon.load_volume(d / f"{run}.nii.gz")
    hand = _hand_reference(truth, run)
    assert recon.shape == hand.shape
    np.testing.assert_allclose(recon.affine, hand.affine, atol=1e-4)  # the run's grid is the hand-made one
    want = evaluate(recon, medrecon.Volume(hand.data, recon.affine, hand.meta))
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-4)
    assert got["ssim"] == pytest.approx(want["ssim"], abs=1e-5)
    assert got["psnr_per_slice"] == pytest.approx(want["psnr_per_slice"], abs=1e-4)
    rr = got["reference_resampled"]
    assert rr["from_shape"] == [Z, N, N] and rr["to_shape"] == list(recon.shape)
    assert rr["method"]["k"] == "copy"
    assert rr["method"]["i"] == ("copy" if run == "slices" else "area average")
    # a wrong slab scores differently: the slices were matched by position, not by index
    if run == "slices":
        wrong = evaluate(recon, medrecon.Volume(truth.data[:2], recon.affine, truth.meta))
        assert abs(wrong["psnr"] - got["psnr"]) > 0.1


@pytest.mark.parametrize("run", list(RUNS))
def test_without_the_option_one_sentence_names_it(study, run):
    _, _, res = study
    _one_sentence(res[f"plain-{run}"], "differs from the reconstruction", "--resample-reference")


def test_no_overlap_and_partial_overlap_are_one_sentence(study):
    _, _, res = study
    _one_sentence(res["far"], "does not overlap the reconstruction in space")
    _one_sentence(res["part"], "reaches outside the reference", "slices (k axis)")
    _one_sentence(res["with-regions"], "--resample-reference", "PSNR/SSIM")


def test_same_placement_needs_no_option_and_arrays_are_compared_by_shape(tmp_path):
    rng = np.random.default_rng(0)
    ref = medrecon.Volume(rng.uniform(-1000, 1000, (3, 8, 8)).astype(np.float32), AFFINE, {"modality": "CT"})
    assert evaluate(ref.copy(), ref)["reference_resampled"] is None
    moved = medrecon.Volume(ref.data, AFFINE.copy(), ref.meta)
    moved.affine[2, 3] += 2.5  # one slice further: the same shape, another place
    with pytest.raises(InputError, match="placement in space.*--resample-reference"):
        evaluate(ref, moved)
    with pytest.raises(InputError, match="reaches outside"):
        evaluate(ref, moved, resample_reference=True)
    assert evaluate(ref.data + 1.0, ref.data)["reference_resampled"] is None  # arrays: no place, shape only
    with pytest.raises(InputError, match="array has no place"):
        evaluate(ref.data[:2], ref.data, resample_reference=True)


def test_resample_to_grid_is_the_rule_simulate_uses():
    """One rule for both: resample_to_grid onto a --resample grid is resample_inplane, bit for bit up to
    float rounding (simulate's _axis_weights is axis_weights on a field-of-view-keeping grid)."""
    rng = np.random.default_rng(1)
    v = medrecon.Volume(rng.normal(size=(5, 20, 14)).astype(np.float32), AFFINE)
    for shape in [(10, 7), (7, 5), (30, 21)]:
        r = resample_inplane(v.slab(1, 4), shape)
        g = resample_to_grid(v, r.shape, r.affine)
        np.testing.assert_allclose(g.data, r.data, atol=1e-5)
    rot = AFFINE.copy()
    rot[:2, :2] = [[0, 0.9], [0.8, 0]]
    with pytest.raises(InputError, match="not aligned"):
        resample_to_grid(v, v.shape, rot)
