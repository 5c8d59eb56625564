"""A corpus of bad and hostile inputs across every command, as real processes (issue 22).

Every case either is refused -- exit status 2 and exactly one line on stderr (warnings aside),
no traceback -- or is a documented success (exit 0).  No case touches a file outside its own
output folder: every fixture file's checksum is the same after the whole corpus.

The command lines run through ``tests/cli_driver.py`` (one interpreter imports the CLI once and
forks a child per command line), so about 200 real ``medrecon`` processes take seconds each,
not the import time of torch each.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # skipped by `make test-fast`

DRIVER = Path(__file__).resolve().parent / "cli_driver.py"
N, Z = 32, 3

# -- fixtures ------------------------------------------------------------------------------------


def _nifti(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 2.5)) -> None:
    import nibabel as nib

    aff = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(data), aff), path)


def _h5_edit(src: Path, dst: Path, edit) -> None:
    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)


def _prior_edit(src: Path, dst: Path, edit) -> None:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg, dst)
    if cfg is not None:
        (dst / "config.json").write_text(json.dumps(cfg))


def build_world(w: Path) -> None:
    """Good inputs under ``good/``, bad ones under ``bad/``."""
    import torch
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    import medrecon as mr
    from medrecon.priors.model import DiffusionPrior, default_config

    good, bad = w / "good", w / "bad"
    good.mkdir()
    bad.mkdir()
    ph = resize(shepp_logan_phantom(), (N, N), anti_aliasing=True)
    vol_zyx = np.stack([ph * (1 + 0.05 * k) for k in range(Z)]) * 1000 - 1000
    _nifti(good / "v.nii.gz", vol_zyx.transpose(2, 1, 0).astype(np.float32))
    vol = mr.load_volume(good / "v.nii.gz")
    mr.save_volume(vol, good / "dcm")
    m = mr.simulate(vol, "ct.parallel", {"n_views": 10}, noise_std=0.01, relative=True)
    mr.save_measurement(m, good / "m.h5")
    mr.save_measurement(mr.simulate(vol, "ct.parallel", {"n_views": 3}, noise_std=0.01, relative=True),
                        good / "m3views.h5")  # too few views to hold some out (auto-tuning)
    mri = mr.simulate(vol, "mri.cartesian",
                      {"mask": {"kind": "random", "acceleration": 4, "center_fraction": 0.08, "seed": 0}})
    mr.save_measurement(mri, good / "mri.h5")
    torch.manual_seed(0)
    DiffusionPrior(default_config("ct", image_size=N, pixel_size_mm=1.0, preset="tiny")).save(good / "prior")
    (good / "notes.json").write_text("{}")
    (good / "f.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # an existing figure: replaced only with --overwrite
    rng = np.random.default_rng(1)
    np.save(good / "k.npy", (rng.standard_normal((4, 16, 16)) + 1j * rng.standard_normal((4, 16, 16))).astype(
        np.complex64))  # raw multi-coil k-space (coils, ky, kx)

    # files that are not what their name says
    for name in ("empty.nii.gz", "empty.h5", "empty.dcm", "empty.nii", "empty.npy"):
        (bad / name).write_bytes(b"")
    for name in ("text.nii.gz", "text.h5", "text.dcm", "text.nii", "text.npy", "text.mat"):
        (bad / name).write_text("hello, this is not an image\n")
    rng = np.random.default_rng(0)
    (bad / "junk.nii.gz").write_bytes(gzip.compress(rng.bytes(4096)))
    (bad / "random.dcm").write_bytes(rng.bytes(4096))
    raw = (good / "v.nii.gz").read_bytes()
    (bad / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    shutil.copytree(good / "dcm", bad / "trunc_dcm")
    first = sorted((bad / "trunc_dcm").iterdir())[0]
    first.write_bytes(first.read_bytes()[:300])
    shutil.copy(first, bad / "trunc1.dcm")
    (bad / "nodcm").mkdir()
    (bad / "nodcm" / "readme.txt").write_text("no images here")
    (bad / "emptydir").mkdir()

    # volumes with bad values or shapes
    nan = vol_zyx.transpose(2, 1, 0).astype(np.float32).copy()
    nan[4:9, 4:9, 1] = np.nan
    _nifti(bad / "nan.nii.gz", nan)
    inf = vol_zyx.transpose(2, 1, 0).astype(np.float32).copy()
    inf[0, 0, 0] = np.inf
    _nifti(bad / "inf.nii.gz", inf)
    _nifti(bad / "tiny.nii.gz", np.zeros((1, 1, 1), np.float32))
    _nifti(bad / "4d.nii.gz", np.zeros((8, 8, 4, 2), np.float32))
    _nifti(bad / "complex.nii.gz", np.ones((8, 8, 2), np.complex64))
    _nifti(bad / "aniso.nii.gz", vol_zyx.transpose(2, 1, 0).astype(np.float32), zooms=(0.8, 1.2, 2.5))

    # HDF5 files that are not (valid) measurements
    import h5py

    from medrecon.measurement import SCHEMA

    with h5py.File(bad / "wrong_schema.h5", "w") as f:
        f["data"] = np.zeros(4)
    schema_name = SCHEMA.split("/")[0]
    _h5_edit(good / "m.h5", bad / "future.h5", lambda f: f.attrs.__setitem__("medrecon_schema", f"{schema_name}/99"))
    _h5_edit(good / "m.h5", bad / "other_kind.h5", lambda f: f.attrs.__setitem__("medrecon_schema", "medrecon-prior/1"))
    _h5_edit(good / "m.h5", bad / "no_y.h5", lambda f: f.__delitem__("y"))

    def set_y(value):
        def edit(f):
            y = f["y"][()]
            del f["y"]
            f["y"] = value(y)
        return edit

    _h5_edit(good / "m.h5", bad / "nan_y.h5", set_y(lambda y: np.full_like(y, np.nan)))
    _h5_edit(good / "m.h5", bad / "bad_shape_y.h5", set_y(lambda y: np.zeros((Z, 7, 5), y.dtype)))
    _h5_edit(good / "m.h5", bad / "str_y.h5", set_y(lambda y: np.array([b"abc"] * 3)))

    def set_spec(change):
        def edit(f):
            spec = json.loads(f["operator_spec"][()])
            change(spec)
            del f["operator_spec"]
            f["operator_spec"] = json.dumps(spec)
        return edit

    _h5_edit(good / "m.h5", bad / "unknown_op.h5", set_spec(lambda s: s.__setitem__("name", "ct.nope")))
    _h5_edit(good / "m.h5", bad / "neg_views.h5", set_spec(lambda s: s["params"].__setitem__("n_views", -3)))
    _h5_edit(good / "m.h5", bad / "str_views.h5", set_spec(lambda s: s["params"].__setitem__("n_views", "ten")))
    _h5_edit(good / "m.h5", bad / "huge_views.h5", set_spec(lambda s: s["params"].__setitem__("n_views", 10**9)))
    _h5_edit(good / "m.h5", bad / "spec_not_json.h5",
             lambda f: (f.__delitem__("operator_spec"), f.__setitem__("operator_spec", "{not json")))
    _h5_edit(good / "m.h5", bad / "neg_noise.h5", lambda f: f.attrs.__setitem__("noise_std", -1.0))
    _h5_edit(good / "m.h5", bad / "nan_noise.h5", lambda f: f.attrs.__setitem__("noise_std", np.nan))
    _h5_edit(good / "m.h5", bad / "bad_affine.h5",
             lambda f: (f.__delitem__("affine"), f.__setitem__("affine", np.zeros((3, 3)))))
    _h5_edit(good / "m.h5", bad / "bad_volume_shape.h5",
             lambda f: (f.__delitem__("volume_shape"), f.__setitem__("volume_shape", np.array([Z, -1, N]))))

    # prior folders that are broken
    src = good / "prior"
    _prior_edit(src, bad / "prior_noconfig", lambda c, d: (d / "config.json").unlink())
    (bad / "prior_noconfig" / "config.json").unlink(missing_ok=True)
    shutil.copytree(src, bad / "prior_badjson")
    (bad / "prior_badjson" / "config.json").write_text("{ not json")
    _prior_edit(src, bad / "prior_size_str", lambda c, d: c.__setitem__("image_size", "big"))
    _prior_edit(src, bad / "prior_size_neg", lambda c, d: c.__setitem__("image_size", -32))
    _prior_edit(src, bad / "prior_T0", lambda c, d: c["schedule"].__setitem__("num_timesteps", 0))
    _prior_edit(src, bad / "prior_T_str", lambda c, d: c["schedule"].__setitem__("num_timesteps", "many"))
    _prior_edit(src, bad / "prior_noweights", lambda c, d: (d / c["weights"]["file"]).unlink())
    _prior_edit(src, bad / "prior_junkweights", lambda c, d: (d / c["weights"]["file"]).write_bytes(b"junk" * 100))
    _prior_edit(src, bad / "prior_modality", lambda c, d: c.__setitem__("modality", "xray"))
    _prior_edit(src, bad / "prior_intensity_str", lambda c, d: c["intensity"].__setitem__("lo", "low"))
    _prior_edit(src, bad / "prior_intensity_flip", lambda c, d: c["intensity"].update(lo=1000.0, hi=-1000.0))
    _prior_edit(src, bad / "prior_weights_str", lambda c, d: c.__setitem__("weights", "weights.safetensors"))
    _prior_edit(src, bad / "prior_pixel_neg", lambda c, d: c.__setitem__("pixel_size_mm", -1.0))
    _prior_edit(src, bad / "prior_network_str", lambda c, d: c.__setitem__("network", "unet"))
    _prior_edit(src, bad / "prior_format", lambda c, d: c.__setitem__("format", "something-else"))
    (bad / "not_a_prior").mkdir()
    (bad / "not_a_prior" / "hello.txt").write_text("hi")


# -- the corpus ----------------------------------------------------------------------------------

BAD_VOLUMES = ["bad/missing.nii.gz", "bad/empty.nii.gz", "bad/empty.nii", "bad/empty.dcm", "bad/text.nii.gz",
               "bad/text.nii", "bad/text.dcm", "bad/junk.nii.gz", "bad/random.dcm", "bad/trunc.nii.gz",
               "bad/trunc1.dcm", "bad/nodcm", "bad/emptydir", "bad/4d.nii.gz", "bad/complex.nii.gz",
               "good/m.h5", "good/notes.json"]
BAD_MEASUREMENTS = ["bad/missing.h5", "bad/empty.h5", "bad/text.h5", "bad/wrong_schema.h5", "bad/future.h5",
                    "bad/other_kind.h5", "bad/no_y.h5", "bad/nan_y.h5", "bad/bad_shape_y.h5", "bad/str_y.h5",
                    "bad/unknown_op.h5", "bad/neg_views.h5", "bad/str_views.h5", "bad/huge_views.h5",
                    "bad/spec_not_json.h5", "bad/neg_noise.h5", "bad/nan_noise.h5", "bad/bad_affine.h5",
                    "bad/bad_volume_shape.h5", "good/v.nii.gz", "bad/emptydir", "bad/text.npy", "bad/text.mat"]
BAD_PRIORS = ["bad/prior_noconfig", "bad/prior_badjson", "bad/prior_size_str", "bad/prior_size_neg", "bad/prior_T0",
              "bad/prior_T_str", "bad/prior_noweights", "bad/prior_junkweights", "bad/prior_modality",
              "bad/prior_intensity_str", "bad/prior_intensity_flip", "bad/prior_weights_str", "bad/prior_pixel_neg",
              "bad/prior_network_str", "bad/prior_format", "bad/not_a_prior", "bad/missing_prior", "no-such-prior"]
RECON = ["reconstruct", "good/m.h5", "--sampler", "tv", "--steps", "3", "--quiet"]
DDS = ["reconstruct", "good/m.h5", "--sampler", "dds", "--prior", "good/prior", "--steps", "2", "--device", "cpu",
       "--quiet"]


def _name(path: str) -> str:
    return Path(path).name.replace(".", "_")


def corpus() -> list[dict]:
    """Every case: ``id``, ``argv`` (``{out}`` is the case's own output folder) and ``expect``
    (``"refuse"``, or ``"ok"`` for a documented success)."""
    cases: list[dict] = []

    def add(id_, argv, expect="refuse"):
        cases.append({"id": id_, "argv": list(argv), "expect": expect})

    for v in BAD_VOLUMES:
        n = _name(v)
        add(f"info-{n}", ["info", v], "ok" if v.endswith(("m.h5",)) else "refuse")
        add(f"convert-{n}", ["convert", v, "{out}/o.nii.gz"])
        add(f"simulate-{n}", ["simulate", "ct.parallel", "-i", v, "-o", "{out}/m.h5", "-p", "n_views=10"])
        # a measurement as the reconstruction is scored by its classical reconstruction (documented)
        add(f"evaluate-recon-{n}", ["evaluate", v, "-r", "good/v.nii.gz"], "ok" if v == "good/m.h5" else "refuse")
        add(f"evaluate-ref-{n}", ["evaluate", "good/v.nii.gz", "-r", v])
    for v in ("bad/nan.nii.gz", "bad/inf.nii.gz"):
        n = _name(v)
        add(f"info-{n}", ["info", v], "ok")  # info describes the volume, non-finite values included
        add(f"simulate-{n}", ["simulate", "ct.parallel", "-i", v, "-o", "{out}/m.h5", "-p", "n_views=10"])
        add(f"convert-dicom-{n}", ["convert", v, "{out}/series"])
        add(f"evaluate-recon-{n}", ["evaluate", v, "-r", "good/v.nii.gz"])
        add(f"train-{n}", ["train-prior", "--data", v, "--modality", "ct", "--size", "32", "--steps", "2",
                           "--channels", "tiny", "--device", "cpu", "--samples", "0", "-o", "{out}/p"])
    for m in BAD_MEASUREMENTS:
        n = _name(m)
        add(f"reconstruct-{n}", ["reconstruct", m, "--sampler", "classical", "-o", "{out}/r.nii.gz"])
        add(f"import-{n}", ["import", m, "-o", "{out}/m.h5"],
            "ok" if False else "refuse")
        if m.endswith(".h5") and "missing" not in m and "empty" not in m and "text" not in m:
            # info describes what it can read, then exits 2 with the reason no run could use the file
            add(f"info-{n}", ["info", m])
    for p in BAD_PRIORS:
        n = _name(p)
        add(f"dds-prior-{n}", [*DDS[:4], "--prior", p, *DDS[6:], "-o", "{out}/r.nii.gz"])
        add(f"sample-prior-{n}", ["sample-prior", p, "--n", "1", "--steps", "2", "--device", "cpu",
                                  "-o", "{out}/s.png"])
        add(f"prior-info-{n}", ["prior-info", p], "refuse")
        add(f"blend-priors-{n}", ["blend-priors", "good/prior", p, "-w", "0.5", "-w", "0.5", "-o", "{out}/b"])

    # parameters out of range or of the wrong kind
    o = ["-o", "{out}/r.nii.gz"]
    add("reconstruct-out-new-folder", [*RECON, "-o", "{out}/a/b/r.nii.gz"], "ok")  # parents are created
    add("reconstruct-png-new-folder", [*RECON, "--png", "{out}/nope/f.png", *o], "ok")  # as evaluate --png
    add("reconstruct-resume-nothing", [*RECON, "--resume", *o], "ok")  # nothing to resume: a fresh run
    for k, extra in {
        "steps-0": ["--steps", "0"], "steps-neg": ["--steps", "-5"], "steps-str": ["--steps", "abc"],
        "steps-huge": ["--steps", "1000000000"], "batch-0": ["--batch-size", "0"], "seed-str": ["--seed", "x"],
        "device-bogus": ["--device", "tpu"], "device-cuda9": ["--device", "cuda:9"],
        "devices-bogus": ["--devices", "cpu,,cpu"], "parts-0": ["--num-parts", "0"],
        "part-id-out": ["--num-parts", "2", "--part-id", "2"], "param-unknown": ["-p", "frob=1"],
        "param-noeq": ["-p", "lam"], "param-nan": ["-p", "lam=nan"], "param-neg": ["-p", "lam=-1"],
        "param-str": ["-p", "lam=much"], "param-inf": ["-p", "lam=inf"], "sampler-unknown": ["--sampler", "tvv"],
        "prior-scale-bogus": ["--prior-scale", "huge"], "samples-0": ["--samples", "0"],
        "antithetic-odd": ["--samples", "3", "--antithetic"], "png-not-png": ["--png", "{out}/f.jpg"],
        "png-exists": ["--png", "good/f.png"],
        "like-missing": ["--like", "bad/nope"],
        "out-png": ["-o", "{out}/r.png"], "out-h5": ["-o", "{out}/r.h5"],
        "out-is-input": ["-o", "good/m.h5"], "out-exists": ["-o", "good/v.nii.gz"],
        "import-option-junk": ["--import-option", "frob"],
    }.items():
        argv = [*RECON, *extra]
        if not any(a == "-o" for a in extra):
            argv += o
        add(f"reconstruct-{k}", argv)
    add("reconstruct-dds-no-prior", ["reconstruct", "good/m.h5", "--sampler", "dds", *o])
    add("reconstruct-dds-mri-with-ct-prior", ["reconstruct", "good/mri.h5", "--sampler", "dds", "--prior", "good/prior",
                                              "--steps", "2", "--device", "cpu", *o])
    add("reconstruct-dds-steps-above-T", [*DDS, "--steps", "5000", "--dry-run", *o], "ok")  # capped, recorded
    for k, extra in {"neg": ["--cache-interval", "-1"], "above-steps": ["--cache-interval", "3"],
                     "str": ["--cache-interval", "often"], "param-clash": ["--cache-interval", "2", "-p",
                                                                            "cache_interval=1"]}.items():
        add(f"reconstruct-dds-cache-interval-{k}", [*DDS, *extra, *o])  # --steps 2: an interval of 3 never reuses
    add("reconstruct-tv-cache-interval", [*RECON, "--cache-interval", "2", *o])  # tv has no network to cache
    # auto-tuning asked by name of a measurement too small to split; left at its default it falls back (recorded)
    tv3 = ["reconstruct", "good/m3views.h5", "--sampler", "tv", "--steps", "3", "--quiet"]
    add("reconstruct-tv-auto-unsplittable", [*tv3, "-p", "lam_rel=auto", *o])
    add("reconstruct-tv-default-unsplittable", [*tv3, *o], "ok")
    add("reconstruct-dry-run", [*RECON, "--dry-run", *o], "ok")
    for k, extra in {
        "op-unknown": ["ct.nope"], "views-neg": ["ct.parallel", "-p", "n_views=-1"],
        "views-str": ["ct.parallel", "-p", "n_views=many"], "views-huge": ["ct.parallel", "-p", "n_views=1000000000"],
        "param-unknown": ["ct.parallel", "-p", "frob=2"], "noise-neg": ["ct.parallel", "--noise", "-1"],
        "noise-nan": ["ct.parallel", "--noise", "nan"], "slices-reversed": ["ct.parallel", "--slices", "2:1"],
        "slices-str": ["ct.parallel", "--slices", "a:b"], "resample-bogus": ["ct.parallel", "--resample", "big"],
        "resample-huge": ["ct.parallel", "--resample", "100000x100000"],
        "pixel-size-neg": ["ct.parallel", "--pixel-size", "-2"], "batch-0": ["ct.parallel", "--batch-size", "0"],
        "device-bogus": ["ct.parallel", "--device", "tpu"], "out-exists": ["ct.parallel", "-o", "good/m.h5"],
        "out-not-h5": ["ct.parallel", "-o", "{out}/m.png"], "out-is-input": ["ct.parallel", "-o", "good/v.nii.gz"],
        "series-bogus": ["ct.parallel", "--series", "99"],
        "anisotropic-pixels": ["ct.parallel", "-i", "bad/aniso.nii.gz"],
    }.items():
        argv = ["simulate", *extra] + ([] if "-i" in extra else ["-i", "good/v.nii.gz"])
        if "-o" not in extra:
            argv += ["-o", "{out}/m.h5"]
        add(f"simulate-{k}", argv)
    add("simulate-anisotropic-resampled", ["simulate", "ct.parallel", "-i", "bad/aniso.nii.gz", "-o", "{out}/m.h5",
                                           "--pixel-size", "1.0"], "ok")
    add("simulate-slices-clamped", ["simulate", "ct.parallel", "-i", "good/v.nii.gz", "-o", "{out}/m.h5",
                                    "-p", "n_views=10", "--slices", "0:100"], "ok")  # says it was clamped
    for k, extra in {
        "size-neg": ["--size", "-1"], "size-0": ["--size", "0"], "lr-nan": ["--lr", "nan"], "lr-neg": ["--lr", "-1"],
        "steps-0": ["--steps", "0"], "batch-0": ["--batch-size", "0"], "channels-bogus": ["--channels", "huge"],
        "schedule-bogus": ["--schedule", "quadratic"], "prediction-bogus": ["--prediction", "x0"],
        "modality-bogus": ["--modality", "xray"], "out-existing-file": ["-o", "good/notes.json"],
        "out-existing-prior": ["-o", "good/prior"], "data-missing": ["--data", "bad/nope.nii.gz"],
        "no-data": [], "patch-bigger": ["--patch", "64"], "ema-bogus": ["--ema-decay", "2"],
        "init-from-missing": ["--init-from", "bad/missing_prior"],
    }.items():
        argv = ["train-prior", "--size", "32", "--steps", "2", "--channels", "tiny", "--device", "cpu",
                "--samples", "0", *extra]
        if "--data" not in extra and k != "no-data":
            argv += ["--data", "good/v.nii.gz"]
        if "-o" not in extra:
            argv += ["-o", "{out}/p"]
        add(f"train-{k}", argv)
    for k, extra in {
        "size-huge": ["--size", "100000"], "size-0": ["--size", "0"], "n-huge": ["--n", "100000000"],
        "n-0": ["--n", "0"], "steps-0": ["--steps", "0"], "eta-nan": ["--eta", "nan"], "eta-neg": ["--eta", "-1"],
        "sampler-bogus": ["--sampler", "euler"], "out-weights": ["-o", "good/prior/weights.safetensors"],
        "npy-exists": ["--npy", "good/notes.json"], "out-exists": ["-o", "good/notes.json"],
    }.items():
        argv = ["sample-prior", "good/prior", "--n", "1", "--steps", "2", "--device", "cpu", *extra]
        if "-o" not in extra:
            argv += ["-o", "{out}/s.png"]
        add(f"sample-{k}", argv)
    for k, argv in {
        "json-onto-input": ["evaluate", "good/v.nii.gz", "-r", "good/v.nii.gz", "--json", "good/v.nii.gz"],
        "json-exists": ["evaluate", "good/v.nii.gz", "-r", "good/v.nii.gz", "--json", "good/notes.json"],
        "window-bogus": ["evaluate", "good/v.nii.gz", "-r", "good/v.nii.gz", "--window", "a,b"],
        "window-flipped": ["evaluate", "good/v.nii.gz", "-r", "good/v.nii.gz", "--window", "1000,-1000"],
        "png-new-folder": ["evaluate", "good/v.nii.gz", "-r", "good/v.nii.gz", "--png", "{out}/x/f.png"],
        "grid-mismatch": ["evaluate", "good/v.nii.gz", "-r", "bad/4d.nii.gz"],
        "target-bogus": ["evaluate", "good/v.nii.gz", "--target", "1,2"],
        "no-reference": ["evaluate", "good/v.nii.gz"],
        "classical-bogus": ["evaluate", "good/v.nii.gz", "-r", "good/v.nii.gz", "--classical", "bad/text.h5"],
        "ok": ["evaluate", "good/v.nii.gz", "-r", "good/v.nii.gz", "--json", "{out}/e.json"],
    }.items():
        add(f"evaluate-{k}", argv, "ok" if k in ("ok", "png-new-folder") else "refuse")  # parents are created
    for k, argv in {
        "convert-out-exists": ["convert", "good/v.nii.gz", "good/m.h5"],
        "convert-onto-itself": ["convert", "good/v.nii.gz", "good/v.nii.gz", "--overwrite"],
        "convert-bad-ext": ["convert", "good/v.nii.gz", "{out}/v.png"],
        "convert-like-bogus": ["convert", "good/v.nii.gz", "{out}/series", "--like", "bad/nodcm"],
        "convert-series-bogus": ["convert", "good/dcm", "{out}/v.nii.gz", "--series", "7"],
        "info-series-bogus": ["info", "good/dcm", "--series", "nope"],
        "data-verify-traversal": ["data", "verify", "../etc"],
        "data-verify-slash": ["data", "verify", "a/b"],
        "data-verify-unknown": ["data", "verify", "no-such-set"],
        "data-fetch-traversal": ["data", "fetch", "../../x", "--dest", "{out}"],
        "data-fetch-unknown": ["data", "fetch", "no-such-set", "--dest", "{out}"],
        "data-list-bad-manifests": ["data", "list", "--manifests", "bad/text.h5"],
        "plugins-check-unknown": ["plugins", "check", "ct.nope"],
        "plugins-check-bad-param": ["plugins", "check", "ct.parallel", "--param", "n_views=-2"],
        "unknown-command": ["frobnicate"],
        "missing-argument": ["reconstruct"],
        "reconstruct-many-missing": ["reconstruct-many", "bad/missing.h5", "--sampler", "classical",
                                     "--output-dir", "{out}"],
        "import-option-unknown": ["import", "good/m.h5", "--import-option", "frob=1", "-o", "{out}/m.h5"],
        "import-out-exists": ["import", "good/m.h5", "-o", "good/mri.h5"],
        "import-raw-option-unknown": ["import", "good/k.npy", "--import-option", "frob=1", "-o", "{out}/k.h5"],
        "import-raw-ambiguous": ["import", "good/k.npy", "-o", "{out}/k.h5"],  # coils or slices first?
        "reconstruct-raw-option-unknown": ["reconstruct", "good/k.npy", "--sampler", "classical", "--import-option",
                                           "frob=1", "-o", "{out}/r.nii.gz"],
        "import-no-output": ["import", "good/k.npy"],
        "import-raw": ["import", "good/k.npy", "--import-option", "layout=cha_col_lin", "-o", "{out}/k.h5"],
        "import-list-options": ["import", "--list-options"],
        "plugins-list": ["plugins", "list"],
        "data-list": ["data", "list"],
    }.items():
        add(k, argv, "ok" if k in ("plugins-list", "data-list", "import-raw", "import-list-options") else "refuse")
    return cases


KNOWN_CASES = corpus()


def _checksums(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):  # every file but the cases' own outputs
        if p.is_file() and not p.is_symlink() and "out" not in p.relative_to(root).parts[:1]:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    w = tmp_path_factory.mktemp("corpus")
    build_world(w)
    before = _checksums(w)
    cases = []
    for c in KNOWN_CASES:
        out = w / "out" / c["id"]
        out.mkdir(parents=True)
        cases.append({"id": c["id"], "cwd": str(w), "argv": [a.replace("{out}", f"out/{c['id']}") for a in c["argv"]]})
    (w / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "MEDRECON_DATA": str(w / "data_root")}
    proc = subprocess.run([sys.executable, str(DRIVER), str(w / "cases.json"), str(w / "results.json")],
                          capture_output=True, text=True, env=env, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((w / "results.json").read_text())
    (w / "cases.json").unlink()
    (w / "results.json").unlink()
    return w, before, res


def test_corpus_is_large():
    assert len(KNOWN_CASES) >= 150, len(KNOWN_CASES)
    assert len({c["id"] for c in KNOWN_CASES}) == len(KNOWN_CASES)


def _verdict(case: dict, r: dict) -> str | None:
    """None when the case behaved as expected, else what went wrong."""
    err = r["stderr"]
    if "Traceback" in err:
        return "traceback: " + err.strip().splitlines()[-1]
    if case["expect"] == "ok":
        return None if r["rc"] == 0 else f"expected success, got exit {r['rc']}: {err.strip()[-300:]}"
    if r["rc"] != 2:
        return f"expected exit 2, got {r['rc']}: {err.strip()[-300:]}"
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("medrecon: warning:")]
    if len(lines) != 1:
        return f"expected one line on stderr, got {len(lines)}: {err.strip()[-500:]}"
    if not lines[0].startswith("medrecon: error:"):
        return f"not a medrecon error line: {lines[0]}"
    return None


def test_every_case_is_refused_in_one_sentence_or_succeeds(results):
    _, _, res = results
    bad = {c["id"]: _verdict(c, res[c["id"]]) for c in KNOWN_CASES}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{len(bad)} of {len(KNOWN_CASES)} cases misbehaved:\n" + "\n".join(
        f"{k}: {v}" for k, v in sorted(bad.items()))


def test_no_input_is_modified(results):
    w, before, _ = results
    assert _checksums(w) == before


def test_refused_cases_write_nothing(results):
    w, _, res = results
    wrote = [c["id"] for c in KNOWN_CASES
             if c["expect"] == "refuse" and res[c["id"]]["rc"] == 2 and any((w / "out" / c["id"]).iterdir())]
    assert not wrote, wrote
