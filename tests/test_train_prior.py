"""Prior training: slice stacks, a few steps on a tiny network, checkpoint + resume, CLI, immiscible."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medrecon.errors import FileFormatError, InputError
from medrecon.priors.data import SliceStack, read_stack, resample_slices, write_stack

pytestmark = pytest.mark.slow  # skipped by `make test-fast`


def _stack(tmp_path, name="train", n=6, s=32, modality="ct"):
    rng = np.random.default_rng(0)
    data = rng.uniform(-1000, 1500, (n, s, s)).astype(np.float32)
    lo = np.full(n, -1000.0 if modality == "ct" else 0.0)
    hi = np.full(n, 2000.0 if modality == "ct" else 1400.0)
    meta = {"intensity": {"kind": "window"} if modality == "ct" else {"kind": "percentile", "p_lo": 0.5, "p_hi": 99.5}}
    return write_stack(SliceStack(data, modality, 2.0, lo, hi, meta), tmp_path / f"{name}.npy")


def test_stack_roundtrip_and_errors(tmp_path):
    p = _stack(tmp_path, modality="mr")
    st = read_stack(p)
    assert st.data.shape == (6, 32, 32) and st.modality == "mr" and st.pixel_size_mm == 2.0
    assert np.load(p).dtype == np.float16
    side = json.loads(p.with_suffix(".json").read_text())
    assert side["intensity"]["lo"] == [0.0] * 6 and side["sha256"]
    net = st.to_net()
    assert net.dtype == np.float32
    np.testing.assert_allclose(net, 2 * st.data / 1400 - 1, atol=1e-5)
    with pytest.raises(FileFormatError):
        read_stack(tmp_path / "missing.npy")
    np.save(tmp_path / "bare.npy", np.zeros((2, 8, 8), np.float16))
    with pytest.raises(FileFormatError):
        read_stack(tmp_path / "bare.npy")


def test_resample_area_average():
    x = np.arange(4 * 4, dtype=np.float32).reshape(1, 4, 4)
    y, px = resample_slices(x, (1.0, 1.0), 2)
    assert px == 2.0
    np.testing.assert_allclose(y[0], [[2.5, 4.5], [10.5, 12.5]])
    # non-square: padded with the minimum, centred
    z, px = resample_slices(np.ones((1, 4, 8), np.float32), (1.0, 1.0), 4)
    assert px == 2.0 and z.shape == (1, 4, 4) and z[0, 0, 0] == 1.0


def test_train_checkpoint_resume(tmp_path):
    from medrecon.priors.model import DiffusionPrior
    from medrecon.priors.train import train_prior

    tr, va = _stack(tmp_path, "train"), _stack(tmp_path, "val", n=2)
    out = tmp_path / "prior"
    kw = dict(val_data=[va], batch_size=2, device="cpu", channels="tiny", val_every=2, ckpt_every=2,
              log_every=1, n_samples=2, sample_steps=2, progress=False, warmup=1)
    r1 = train_prior([tr], out, steps=3, **kw)
    assert r1["steps"] == 3 and (out / "checkpoint" / "state.safetensors").is_file()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
    assert (out / "samples.png").is_file() and (out / "train_report.json").is_file()
    assert DiffusionPrior.load(out).config["training"]["steps"] == 3
    r2 = train_prior([tr], out, steps=5, resume=True, **kw)
    assert r2["steps"] == 5 and r2["resumed"]
    assert [s for s, _ in r2["losses"]] == [1, 2, 3, 4, 5]
    rep = json.loads((out / "train_report.json").read_text())
    assert rep["data"][0]["sha256"] and rep["torch"] == torch.__version__ and rep["val_losses"]
    # resuming reproduces an uninterrupted run exactly (same seed, same generator state)
    r3 = train_prior([tr], tmp_path / "straight", steps=5, **kw)
    assert np.allclose([v for _, v in r3["losses"]], [v for _, v in r2["losses"]], rtol=1e-5)


def test_train_cap_and_patch(tmp_path):
    from medrecon.priors.train import train_prior

    tr = _stack(tmp_path, "train", n=4, s=32)
    r = train_prior([tr], tmp_path / "p", steps=1000, max_minutes=0.0, batch_size=2, device="cpu",
                    channels="tiny", patch=16, n_samples=0, progress=False)
    assert r["steps"] == 0 and r["stopped_by"] == "max_minutes"
    with pytest.raises(InputError):
        train_prior([tr], tmp_path / "q", steps=1, patch=64, device="cpu", channels="tiny", n_samples=0)
    with pytest.raises(InputError):
        train_prior([tr], tmp_path / "q", steps=1, modality="mr", device="cpu", channels="tiny", n_samples=0)
    with pytest.raises(InputError, match="rotate"):
        train_prior([tr], tmp_path / "q", steps=1, device="cpu", channels="tiny", n_samples=0, zoom=1.5)


def test_augment_and_crop_shapes():
    from medrecon.priors.augment import augment_batch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 32, 32)
    assert augment_batch(x, g, None, 4).shape == x.shape
    assert augment_batch(x, g, 16, 0).shape == (5, 1, 16, 16)


def test_rotate_zoom_moves_half_the_batch_by_the_drawn_rotation():
    """A disk off the centre: rotated about the centre its mass centre moves on a circle (radius
    kept, up to the zoom), and slices not picked stay bit-identical."""
    from medrecon.priors.augment import augment_batch, rotate_zoom

    n = 64
    yy, xx = torch.meshgrid(torch.arange(n) - n / 2 + 0.5, torch.arange(n) - n / 2 + 0.5, indexing="ij")
    disk = ((yy - 0) ** 2 + (xx - 16) ** 2 < 36).float()
    x = disk.expand(16, 1, n, n).clone()
    g = torch.Generator().manual_seed(3)
    out = rotate_zoom(x, g, rotate_deg=90.0, zoom=0.0)
    same = (out == x).flatten(1).all(1)
    assert 3 <= int(same.sum()) <= 13  # about half untouched
    moved = out[~same, 0]
    inner = (yy ** 2 + xx ** 2 < 28 ** 2).float()  # corners sample reflected copies from outside the grid
    w = (moved.clamp(min=0) * inner).flatten(1)
    cy = (w * yy.flatten()).sum(1) / w.sum(1)
    cx = (w * xx.flatten()).sum(1) / w.sum(1)
    radius = (cy ** 2 + cx ** 2).sqrt()
    assert torch.allclose(radius, torch.full_like(radius, 16.0), atol=0.6)  # rotated about the centre
    assert float(torch.atan2(cy, cx).abs().max()) > 0.2  # and really rotated
    assert torch.allclose(w.sum(1), disk.sum().expand(len(moved)), rtol=0.03)  # no zoom: same area
    big = rotate_zoom(x, torch.Generator().manual_seed(4), rotate_deg=0.0, zoom=0.3)
    areas = (big.clamp(min=0) * inner).sum((1, 2, 3)) / disk.sum()
    assert float(areas.max()) > 1.05 or float(areas.min()) < 0.95  # zoomed ones change area
    assert float(areas.max()) < 1.3 ** 2 + 0.05 and float(areas.min()) > 0.7 ** 2 - 0.05
    assert augment_batch(x, g, None, 4, rotate_deg=10, zoom=0.1).shape == x.shape


def test_immiscible_is_permutation():
    pytest.importorskip("scipy")
    from medrecon.priors.augment import immiscible_assign

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 1, 6, 6, generator=g)
    noise = torch.randn(8, 1, 6, 6, generator=g)
    out = immiscible_assign(x0, noise)
    flat_n, flat_o = noise.flatten(1), out.flatten(1)
    perm = [int(torch.where((flat_n == row).all(1))[0][0]) for row in flat_o]
    assert sorted(perm) == list(range(8))
    assert torch.cdist(x0.flatten(1), flat_o).diagonal().sum() <= torch.cdist(x0.flatten(1), flat_n).diagonal().sum() + 1e-5


def test_cli_train_and_sample(tmp_path, capsys):
    from medrecon.cli.main import main

    tr = _stack(tmp_path, "train", n=4, s=16)
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as e:
        main(["train-prior", "--data", str(tr), "--output", str(out), "--steps", "2", "--batch-size", "2",
              "--channels", "tiny", "--device", "cpu", "--samples", "0", "--val-every", "0"])
    assert e.value.code in (0, None)
    assert (out / "weights.safetensors").is_file()
    with pytest.raises(SystemExit) as e:
        main(["sample-prior", str(out), "--n", "2", "--steps", "2", "--device", "cpu",
              "--output", str(tmp_path / "s.png"), "--sampler", "dpmpp2m"])
    assert e.value.code in (0, None) and (tmp_path / "s.png").is_file()
    with pytest.raises(SystemExit) as e:
        main(["train-prior", "--output", str(out)])
    assert e.value.code == 2
    assert "medrecon: error:" in capsys.readouterr().err


def test_evaluate_prior_tiny(tmp_path):
    from medrecon.priors.evaluate import evaluate_prior, gaussian_filter
    from medrecon.priors.model import DiffusionPrior, default_config

    x = torch.ones(1, 1, 12, 12)
    assert torch.allclose(gaussian_filter(x, 1.5), x, atol=1e-6)
    tr, ho = _stack(tmp_path, "train", n=3, s=16), _stack(tmp_path, "hold", n=2, s=16)
    prior = DiffusionPrior(default_config("ct", 16, 2.0, preset="tiny")).eval()
    res = evaluate_prior(prior, ho, tr, tmp_path / "q")
    assert set(res["denoising"]) == {"100", "300", "500"}
    assert res["evidence"]["gaussian_sigma_px"] > 0 and (tmp_path / "q" / "prior_quality.png").is_file()


def test_manifest(tmp_path):
    from medrecon.priors.data import read_manifest

    (tmp_path / "m.txt").write_text("# comment\na.npy\n/abs/b.npy\n")
    assert read_manifest(tmp_path / "m.txt") == [str(tmp_path / "a.npy"), "/abs/b.npy"]
    (tmp_path / "m.json").write_text(json.dumps({"train": ["x.npy", {"path": "y.npy"}]}))
    assert read_manifest(tmp_path / "m.json") == [str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    with pytest.raises(FileFormatError):
        read_manifest(tmp_path / "none.txt")


@pytest.mark.shared_data
def test_prepare_and_train_from_dicom(shared_data, tmp_path):
    """Real CT: prepare stacks with a held-out block, and train 2 steps straight from the DICOM folder."""
    from medrecon.priors.prepare import prepare_slices
    from medrecon.priors.train import train_prior

    src = shared_data / "ct-pancreas-tcia"
    if not src.is_dir():
        pytest.skip("ct-pancreas-tcia is not present")
    summary = prepare_slices(src, tmp_path / "ct", size=32, holdout="0:4", modality="ct")
    assert summary["files"]["train"]["slices"] == 130 and summary["files"]["holdout"]["slices"] == 4
    hold = read_stack(tmp_path / "ct" / "holdout.npy")
    assert hold.meta["z_indices"] == [0, 1, 2, 3] and abs(hold.pixel_size_mm - 512 * 1.07421875 / 32) < 1e-6
    assert hold.data.min() >= -1000 and hold.data.max() <= 2000
    r = train_prior([src], tmp_path / "p", size=32, steps=2, batch_size=2, device="cpu", channels="tiny",
                    n_samples=0, progress=False, val_every=0)
    assert r["steps"] == 2 and r["modality"] == "ct"


def test_training_data_without_usable_slices_is_one_sentence_and_writes_nothing(tmp_path):
    """All-air (constant) slices teach nothing: refused before the output folder exists; a few
    constant slices among usable ones are left out with a warning."""
    from medrecon.priors.train import train_prior

    air = write_stack(SliceStack(np.full((4, 16, 16), -1000.0, np.float32), "ct", 2.0, np.full(4, -1000.0),
                                 np.full(4, 2000.0), {"intensity": {"kind": "window"}}), tmp_path / "air.npy")
    with pytest.raises(InputError, match="none of the 4 training slices is usable"):
        train_prior([air], tmp_path / "out", steps=1, batch_size=2, device="cpu", channels="tiny", n_samples=0,
                    progress=False)
    assert not (tmp_path / "out").exists()
    mixed = np.full((6, 16, 16), -1000.0, np.float32)
    mixed[:4, 4:12, 4:12] = 50.0
    st = write_stack(SliceStack(mixed, "ct", 2.0, np.full(6, -1000.0), np.full(6, 2000.0),
                                {"intensity": {"kind": "window"}}), tmp_path / "mixed.npy")
    with pytest.warns(UserWarning, match="2 of 6 training slices are constant"):
        train_prior([st], tmp_path / "ok", steps=1, batch_size=2, device="cpu", channels="tiny", n_samples=0,
                    progress=False, val_every=0, ckpt_every=0)
    assert (tmp_path / "ok" / "config.json").exists()


def test_resume_on_other_data_is_refused_and_a_fine_tune_names_its_source_data(tmp_path, capsys):
    """A prior's config names the data its weights learnt from: resuming a checkpoint on other
    ``--data`` is one sentence and exit 2 with the checkpoint untouched, and ``--init-from``
    records the source prior and the data it was trained on (issue 19, bad input)."""
    from medrecon.cli.main import main
    from medrecon.priors.model import DiffusionPrior

    a, b = _stack(tmp_path, "a", n=4, s=16), _stack(tmp_path, "b", n=5, s=16)
    out = tmp_path / "p"
    common = ["--steps", "2", "--batch-size", "2", "--channels", "tiny", "--device", "cpu", "--samples", "0",
              "--val-every", "0"]
    with pytest.raises(SystemExit) as e:
        main(["train-prior", "--data", str(a), "--output", str(out), *common])
    assert e.value.code in (0, None)
    state = (out / "checkpoint" / "state.json").read_bytes()
    config = (out / "config.json").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train-prior", "--data", str(b), "--output", str(out), "--resume", *common[2:], "--steps", "4"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "was trained on a.npy, not on the --data given now (b.npy)" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (out / "checkpoint" / "state.json").read_bytes() == state and (out / "config.json").read_bytes() == config
    sha_a = json.loads(a.with_suffix(".json").read_text())["sha256"]
    with pytest.raises(SystemExit) as e:
        main(["train-prior", "--data", str(b), "--output", str(tmp_path / "ft"), "--init-from", str(out), *common])
    assert e.value.code in (0, None)
    lineage = DiffusionPrior.load(tmp_path / "ft").config["training"]["init_from"]
    assert lineage["prior"] == str(out) and lineage["data_sha256"] == [sha_a] and lineage["steps"] == 2
    assert lineage["weights_sha256"] == json.loads(config)["weights"]["sha256"]
    # resuming the fine-tune keeps its lineage
    with pytest.raises(SystemExit) as e:
        main(["train-prior", "--data", str(b), "--output", str(tmp_path / "ft"), "--resume", *common[2:],
              "--steps", "3"])
    assert e.value.code in (0, None)
    assert DiffusionPrior.load(tmp_path / "ft").config["training"]["init_from"] == lineage


def test_a_stop_while_the_prior_is_written_keeps_the_checkpoint_and_resume_writes_it(tmp_path, monkeypatch, capsys):
    """Ctrl-C / SIGTERM after the loop (final validation, weights, fit reference, samples): the
    checkpoint was saved first, the message says how to finish, and --resume --steps N writes the
    prior an uninterrupted run writes."""
    from medrecon.priors import train as train_module
    from medrecon.priors.model import DiffusionPrior
    from medrecon.priors.train import train_prior

    tr = _stack(tmp_path, "train", n=4)
    kw = dict(batch_size=2, device="cpu", channels="tiny", ckpt_every=100, n_samples=0, progress=False, warmup=1)
    real = train_module._record_fit_reference

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_record_fit_reference", stop)
    with pytest.raises(KeyboardInterrupt):
        train_prior([tr], tmp_path / "p", steps=3, **kw)
    assert "rerun with --resume --steps 3 to write the prior" in capsys.readouterr().err
    assert json.loads((tmp_path / "p" / "checkpoint" / "state.json").read_text())["step"] == 3
    monkeypatch.setattr(train_module, "_record_fit_reference", real)
    r = train_prior([tr], tmp_path / "p", steps=3, resume=True, **kw)
    assert r["steps"] == 3 and r["resumed"]
    straight = train_prior([tr], tmp_path / "q", steps=3, **kw)
    a, b = DiffusionPrior.load(tmp_path / "p"), DiffusionPrior.load(tmp_path / "q")
    assert straight["steps"] == 3 and a.config["training"]["steps"] == 3
    for u, v in zip(a.net.state_dict().values(), b.net.state_dict().values(), strict=True):  # fp16 weights;
        assert torch.allclose(u, v, atol=2e-3)  # threaded CPU reductions need not be bit-identical


def test_a_subset_of_a_read_stack_records_its_own_shape_and_digest(tmp_path):
    """A stack read from a file carries its source's sidecar in meta; writing a subset of it must
    describe the rows written (shape, sha256), not the source's."""
    import hashlib

    st = read_stack(_stack(tmp_path, "full", n=6))
    sub = SliceStack(st.data[2:5], st.modality, st.pixel_size_mm, st.lo[2:5], st.hi[2:5], dict(st.meta))
    p = write_stack(sub, tmp_path / "sub.npy")
    side = json.loads(p.with_suffix(".json").read_text())
    assert side["shape"] == [3, 32, 32] and np.load(p).shape == (3, 32, 32)
    assert side["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert read_stack(p).data.shape == (3, 32, 32) and sorted(q.name for q in tmp_path.iterdir()) == [
        "full.json", "full.npy", "sub.json", "sub.npy"]  # no temporary files left


def test_training_into_a_folder_that_holds_a_prior_needs_resume_or_overwrite(tmp_path, capsys):
    """Forgetting --resume must not restart a long run over its checkpoint: an output folder that
    holds a prior or a checkpoint is refused in one sentence (exit 2, nothing touched); --overwrite
    starts afresh (the old checkpoint goes), and --resume with --overwrite is a contradiction."""
    from medrecon.cli.main import main

    a = _stack(tmp_path, "a", n=4, s=16)
    out = tmp_path / "p"
    common = ["--data", str(a), "--output", str(out), "--batch-size", "2", "--channels", "tiny", "--device", "cpu",
              "--samples", "0", "--val-every", "0"]
    with pytest.raises(SystemExit) as e:
        main(["train-prior", *common, "--steps", "3"])
    assert e.value.code in (0, None)
    before = {p.name: p.read_bytes() for p in [out / "config.json", out / "checkpoint" / "state.json"]}
    capsys.readouterr()
    for extra in ([], ["--resume", "--overwrite"]):
        with pytest.raises(SystemExit) as e:
            main(["train-prior", *common, "--steps", "2", *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert ("--overwrite" in err) and {p.name: p.read_bytes() for p in [
            out / "config.json", out / "checkpoint" / "state.json"]} == before
    with pytest.raises(SystemExit) as e:
        main(["train-prior", *common, "--steps", "2", "--overwrite", "--ckpt-every", "0"])
    assert e.value.code in (0, None)
    assert json.loads((out / "config.json").read_text())["training"]["steps"] == 2
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2  # the final save


def test_prepare_slices_replaces_existing_stacks_only_with_overwrite(tmp_path, capsys):
    import nibabel as nib

    from medrecon.cli.main import main

    vol = np.random.default_rng(0).uniform(-900, 900, (16, 16, 6)).astype(np.float32)
    src = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 3.0, 1.0])), str(src))
    args = ["prepare-slices", str(src), "--output", str(tmp_path / "st"), "--size", "16", "--modality", "ct",
            "--holdout", "0:2"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code in (0, None)
    train = (tmp_path / "st" / "train.npy").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args + ["--holdout", "0:3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "st" / "train.npy").read_bytes() == train
    with pytest.raises(SystemExit) as e:
        main(args[:-2] + ["--holdout", "0:3", "--overwrite"])
    assert e.value.code in (0, None) and read_stack(tmp_path / "st" / "holdout.npy").data.shape[0] == 3
