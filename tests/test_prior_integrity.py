"""A result is what its record says it is (issue 27, items 1 and 3), with real files and real
``medrecon`` processes: a prior's weights are verified against config.json on load (digest, a
plain file name inside the folder, finite values), a weights file swapped under a stopped run
makes ``--resume`` refuse, and NaN / infinity is refused where it can enter (training data, the
training loss, loaded weights, sampler parameters), each with one sentence and exit status 2."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from medrecon.errors import FileFormatError, InputError
from medrecon.priors.data import SliceStack, write_stack
from medrecon.priors.model import DiffusionPrior, default_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Z, N, VIEWS = 3, 32, 10
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def medrecon(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "medrecon.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=ENV)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def one_line_error(proc, *words):
    """Exit status 2, no traceback, exactly one error line on stderr (progress and warnings aside)
    holding every one of ``words``; returns it."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines()
             if not ln.startswith(("medrecon: warning:", "[train-prior]")) and "slices done" not in ln]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_prior(folder, seed: int, recorded: bool = True):
    """A tiny CT prior (random weights from ``seed``) saved in ``folder``; ``recorded=False``
    leaves ``weights.sha256`` out of config.json (an older or hand-made prior)."""
    torch.manual_seed(seed)
    DiffusionPrior(default_config("ct", image_size=N, pixel_size_mm=1.0, preset="tiny")).save(folder)
    if not recorded:
        cfg = json.loads((folder / "config.json").read_text())
        del cfg["weights"]["sha256"]
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def _dds(study, prior, out, *extra):
    return medrecon("reconstruct", study / "m.h5", "--sampler", "dds", "--prior", prior, "--steps", 2,
                    "--device", "cpu", "--batch-size", 1, "-o", out, *extra)


# --------------------------------------------------------------------------- a swapped prior
@pytest.mark.parametrize("recorded", [True, False], ids=["sha256-recorded", "no-sha256-recorded"])
def test_weights_swapped_under_a_stopped_run_refuse_the_resume(study, tmp_path, recorded):
    """Recorded digest: loading refuses the swapped file.  No recorded digest: the prior's
    fingerprint comes from the file's bytes, so the settings hash changes and the checkpoint
    refuses.  Either way exit 2, one line, no output; with the original weights back it resumes."""
    a = make_prior(tmp_path / "a", seed=0, recorded=recorded)
    b = make_prior(tmp_path / "b", seed=1, recorded=recorded)
    assert sha(a / "weights.safetensors") != sha(b / "weights.safetensors")
    out = tmp_path / "r.nii.gz"
    one_line_error(_dds(study, a, out, "--stop-after", 1), "--resume")
    assert sorted(os.listdir(tmp_path / "r.nii.gz.partial")) == ["made.json", "slice_00000.npy", "state.json"]

    original = (a / "weights.safetensors").read_bytes()
    shutil.copyfile(b / "weights.safetensors", a / "weights.safetensors")
    p = _dds(study, a, out, "--resume")
    if recorded:
        one_line_error(p, sha(b / "weights.safetensors"), hashlib.sha256(original).hexdigest(),
                       str(a / "weights.safetensors"), "refused")
    else:
        one_line_error(p, "cannot resume", "different settings (prior)")
    assert not out.exists()
    assert sorted(os.listdir(tmp_path / "r.nii.gz.partial")) == ["made.json", "slice_00000.npy", "state.json"]

    (a / "weights.safetensors").write_bytes(original)  # the same network again: the run resumes
    p = _dds(study, a, out, "--resume")
    assert p.returncode == 0, p.stderr
    assert "1 resumed" in p.stdout and out.is_file()


def test_the_fingerprint_comes_from_the_weights_bytes_not_the_config(tmp_path):
    """A config without sha256 fingerprints like one recording the true digest; a false claim is
    refused; a network built in memory is fingerprinted by its tensors, whatever its config claims."""
    from medrecon.engine.settings import prior_fingerprint

    a = make_prior(tmp_path / "a", seed=0)
    bare = tmp_path / "bare"  # the same weights file, its config without the digest
    shutil.copytree(a, bare)
    cfg = json.loads((bare / "config.json").read_text())
    del cfg["weights"]["sha256"]
    (bare / "config.json").write_text(json.dumps(cfg, indent=2))
    b = make_prior(tmp_path / "b", seed=1, recorded=False)
    pa, pbare, pb = (DiffusionPrior.load(f) for f in (a, bare, b))
    assert pa.weights_sha256 == pbare.weights_sha256 == sha(a / "weights.safetensors")
    assert pb.weights_sha256 == sha(b / "weights.safetensors")
    assert prior_fingerprint(pbare) == prior_fingerprint(pa)
    assert prior_fingerprint(pb) != prior_fingerprint(pbare)
    # B's network under A's config (which claims A's digest): the claim is not believed
    assert prior_fingerprint(DiffusionPrior(pa.config, net=pb.net)) != prior_fingerprint(pa)


def test_a_digest_mismatch_is_refused_naming_both_digests_and_the_file(tmp_path):
    a, b = make_prior(tmp_path / "a", seed=0), make_prior(tmp_path / "b", seed=1)
    claimed = json.loads((a / "config.json").read_text())["weights"]["sha256"]
    shutil.copyfile(b / "weights.safetensors", a / "weights.safetensors")
    actual = sha(a / "weights.safetensors")
    with pytest.raises(FileFormatError) as exc:
        DiffusionPrior.load(a)
    msg = str(exc.value)
    assert claimed in msg and actual in msg and str(a / "weights.safetensors") in msg and "\n" not in msg
    one_line_error(medrecon("prior-info", a), claimed, actual)
    medrecon("prior-info", b, check=True)  # the file itself is fine where its config records it


def _set_weights_file(folder, name):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["weights"]["file"] = name
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


@pytest.mark.parametrize("case", ["dotdot", "absolute", "subfolder", "symlink-out"])
def test_weights_must_be_a_plain_file_inside_the_prior_folder(tmp_path, case):
    """Each target is a real, matching weights file: only where it lies makes the refusal."""
    a = make_prior(tmp_path / "p" / "a", seed=0)
    w = a / "weights.safetensors"
    outside = tmp_path / "p" / "x.safetensors"
    shutil.copyfile(w, outside)
    if case == "dotdot":
        _set_weights_file(a, "../x.safetensors")
        words = ["'weights.file' must be a plain file name", "../x.safetensors"]
    elif case == "absolute":
        _set_weights_file(a, str(outside))
        words = ["'weights.file' must be a plain file name", str(outside)]
    elif case == "subfolder":
        (a / "sub").mkdir()
        shutil.copyfile(w, a / "sub" / "w.safetensors")
        _set_weights_file(a, "sub/w.safetensors")
        words = ["'weights.file' must be a plain file name", "sub/w.safetensors"]
    else:
        w.unlink()
        w.symlink_to(outside)
        words = ["outside the prior folder", str(outside)]
    with pytest.raises(FileFormatError) as exc:
        DiffusionPrior.load(a)
    for word in words:
        assert word in str(exc.value), str(exc.value)
    one_line_error(medrecon("prior-info", a), *words)


def test_a_symlink_inside_the_prior_folder_and_another_plain_name_still_load(tmp_path):
    a = make_prior(tmp_path / "a", seed=0)
    (a / "weights.safetensors").rename(a / "real.safetensors")
    (a / "weights.safetensors").symlink_to(a / "real.safetensors")
    assert DiffusionPrior.load(a).weights_sha256 == sha(a / "real.safetensors")
    _set_weights_file(a, "real.safetensors")
    assert DiffusionPrior.load(a).weights_sha256 == sha(a / "real.safetensors")


def test_the_shipped_priors_match_their_recorded_digests():
    from medrecon.priors.model import load_prior
    from medrecon.priors.shipped import BY_NAME

    for name, folder in BY_NAME.items():
        cfg = json.loads((folder() / "config.json").read_text())
        assert cfg["weights"]["sha256"] == sha(folder() / cfg["weights"]["file"]), name
        assert load_prior(name).weights_sha256 == cfg["weights"]["sha256"]


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["schedule"].update(beta_end=float("nan")), "'schedule.beta_start' and 'beta_end'"),
    (lambda c: c["schedule"].update(num_timesteps="many"), "'schedule.num_timesteps'"),
    (lambda c: c["schedule"].update(num_timesteps=10**12), "'schedule.num_timesteps'"),
    (lambda c: c.update(pixel_size_mm=float("nan")), "'pixel_size_mm'"),
    (lambda c: c.update(image_size="big"), "'image_size'"),
    (lambda c: c["intensity"].update(hi=float("inf")), "window needs finite numbers"),
    (lambda c: c["weights"].update(sha256="abc"), "'weights.sha256' must be 64 hex digits"),
], ids=["beta-nan", "T-str", "T-huge", "pixel-nan", "size-str", "window-inf", "sha-short"])
def test_the_numbers_a_prior_is_built_from_are_checked_on_load(tmp_path, edit, words):
    a = make_prior(tmp_path / "a", seed=0)
    cfg = json.loads((a / "config.json").read_text())
    edit(cfg)
    (a / "config.json").write_text(json.dumps(cfg))  # NaN and Infinity as Python's json writes them
    with pytest.raises(FileFormatError, match="not a valid medrecon prior config") as exc:
        DiffusionPrior.load(a)
    assert words in str(exc.value) and "\n" not in str(exc.value)


# --------------------------------------------------------------------------- NaN weights
def test_nan_weights_are_refused_on_load_and_never_saved(tmp_path):
    from safetensors.torch import load_file, save_file

    a = make_prior(tmp_path / "a", seed=0)
    w = a / "weights.safetensors"
    sd = load_file(str(w))
    key = sorted(sd)[3]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = float("nan")
    save_file(sd, str(w))
    cfg = json.loads((a / "config.json").read_text())
    cfg["weights"]["sha256"] = sha(w)  # the record is right: only the values are wrong
    (a / "config.json").write_text(json.dumps(cfg, indent=2))
    with pytest.raises(FileFormatError, match="NaN or infinite"):
        DiffusionPrior.load(a)
    one_line_error(medrecon("prior-info", a), "NaN or infinite", key)
    one_line_error(medrecon("sample-prior", a, "--n", 1, "--steps", 1, "--device", "cpu",
                            "-o", tmp_path / "s.png"), "NaN or infinite")
    assert not (tmp_path / "s.png").exists()

    torch.manual_seed(0)
    prior = DiffusionPrior(default_config("ct", image_size=N, preset="tiny"))
    with torch.no_grad():
        next(prior.net.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        prior.save(tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with torch.no_grad():  # finite in float32 but beyond float16: infinite once saved as float16
        next(prior.net.parameters()).view(-1)[0] = 1e6
    with pytest.raises(InputError, match="float16"):
        prior.save(tmp_path / "never")
    prior.save(tmp_path / "as32", dtype="float32")
    assert DiffusionPrior.load(tmp_path / "as32").weights_sha256 == sha(tmp_path / "as32" / "weights.safetensors")


# --------------------------------------------------------------------------- training
def _stack(path, data):
    n = data.shape[0]
    return write_stack(SliceStack(data, "ct", 2.0, np.full(n, -1000.0), np.full(n, 2000.0),
                                  {"intensity": {"kind": "window"}}), path)


def _train(data, out, *extra, check=False):
    return medrecon("train-prior", "--data", data, "-o", out, "--steps", 2, "--batch-size", 2, "--channels", "tiny",
                    "--device", "cpu", "--samples", 0, "--val-every", 0, *extra, check=check)


def test_nan_in_training_data_exits_2_naming_the_file_and_writes_no_folder(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(-1000, 1500, (6, 16, 16)).astype(np.float32)
    good = _stack(tmp_path / "good.npy", data)
    data[4, 3, 5] = np.nan
    bad = _stack(tmp_path / "bad.npy", data)
    one_line_error(_train(bad, tmp_path / "out"), str(bad), "NaN or infinite", "1 of 6 slices", "slice 4")
    assert not (tmp_path / "out").exists()
    p = medrecon("train-prior", "--data", good, "--val-data", bad, "-o", tmp_path / "out2", "--steps", 1,
                 "--channels", "tiny", "--device", "cpu", "--samples", 0)
    one_line_error(p, str(bad), "NaN or infinite")
    assert not (tmp_path / "out2").exists()
    _train(good, tmp_path / "ok", check=True)  # the same data without the NaN trains
    assert (tmp_path / "ok" / "weights.safetensors").is_file()


def test_infinity_in_a_training_volume_exits_2_naming_it(tmp_path):
    import nibabel as nib

    vol = np.random.default_rng(1).uniform(-1000, 1000, (16, 16, 4)).astype(np.float32)
    vol[2, 2, 1] = np.inf
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "v.nii.gz")
    one_line_error(_train(tmp_path / "v.nii.gz", tmp_path / "out", "--size", 16, "--modality", "ct"),
                   str(tmp_path / "v.nii.gz"), "NaN or infinite")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("log_every", [1, 100], ids=["caught-at-log", "caught-at-checkpoint"])
def test_a_diverging_loss_stops_training_keeping_the_last_finite_checkpoint(tmp_path, log_every):
    """lr 1e30: the first step is finite (huge but finite weights, checkpointed), the second loss
    is not: exit 2, one sentence, no prior written, the step-1 checkpoint kept and finite."""
    from safetensors.torch import load_file

    data = np.random.default_rng(0).uniform(-1000, 1500, (6, 16, 16)).astype(np.float32)
    tr = _stack(tmp_path / "tr.npy", data)
    out = tmp_path / "out"
    p = _train(tr, out, "--steps", 6, "--lr", 1e30, "--warmup", 1, "--ckpt-every", 1, "--log-every", log_every)
    one_line_error(p, "training stopped at step 2", "NaN or infinite", "no prior is written",
                   "last finite checkpoint (step 1)")
    assert not (out / "config.json").exists() and not (out / "weights.safetensors").exists()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 1
    tensors = load_file(str(out / "checkpoint" / "state.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for k, v in tensors.items() if k.startswith(("model.", "ema.")))
    one_line_error(_train(tr, tmp_path / "o2", "--lr", "nan"), "--lr")
    assert not (tmp_path / "o2").exists()


# --------------------------------------------------------------------------- sampler parameters
@pytest.mark.parametrize("param", ["eta=nan", "eta=inf", "gamma=-inf", "cg_iters=inf", "clip=nan"])
def test_a_non_finite_sampler_parameter_exits_2(study, tmp_path, param):
    a = make_prior(tmp_path / "a", seed=0)
    p = _dds(study, a, tmp_path / "o.nii.gz", "--param", param)
    one_line_error(p, f"parameter {param.split('=')[0]!r}", "finite")
    assert not (tmp_path / "o.nii.gz").exists()


def test_sample_prior_refuses_a_non_finite_eta(tmp_path):
    a = make_prior(tmp_path / "a", seed=0)
    for eta in ("nan", "inf", "-0.5"):
        one_line_error(medrecon("sample-prior", a, "--eta", eta, "--n", 1, "--steps", 1, "--device", "cpu",
                                "-o", tmp_path / "s.png"), "eta", eta)
        assert not (tmp_path / "s.png").exists()
    medrecon("sample-prior", a, "--eta", 0.5, "--n", 1, "--steps", 1, "--device", "cpu", "-o", tmp_path / "s.png",
             check=True)
    assert (tmp_path / "s.png").is_file()
