"""Determinism as documented (docs/engine.md, "Seeding and determinism"): what is bit for bit the same, what
agrees within a stated bound, and what a resumed run records about itself.

On a 3-slice 32 x 32 CT (10 views) with the shipped ``ct-default`` prior:

* the same plan twice, and one or two CPU workers at the same batch size: the same bits;
* ``classical`` and ``tv`` with a set weight: the same bits for batch sizes 1, 2 and 3;
* a slice that runs in a batch of the same size at the same position: the same bits;
* the diffusion samplers across batch sizes, and ``tv`` with its cross-validated weight: within
  ``BOUND`` (1e-4) of the result's largest magnitude;
* a resumed run records ``resumed_bit_identical``: true (and the same bits) when every slice ran
  in the batch an uninterrupted run gives it on the same CPU and thread count, false with the
  reason otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medrecon
from medrecon.engine import RunStopped, partial_path, reconstruct
from medrecon.engine.checkpoint import Checkpoint
from medrecon.engine.output import kernel_signature, made_record, resume_statement

Z, N, VIEWS, STEPS = 3, 32, 10, 5
#: what docs/engine.md states for the diffusion samplers across batch sizes (ct-default, 5 steps)
BOUND = 1e-4

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.filterwarnings("ignore::medrecon.engine.PriorMismatchWarning")]


@pytest.fixture(scope="module")
def meas():
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    ph = resize(shepp_logan_phantom(), (N, N), anti_aliasing=True)
    vol = (np.stack([ph * (1 + 0.05 * k) for k in range(Z)]) * 1000 - 1000).astype(np.float32)
    v = medrecon.Volume(vol, np.diag([1.0, 1.0, 2.5, 1.0]), {"modality": "CT", "units": "HU"})
    return medrecon.simulate(v, "ct.parallel", {"n_views": VIEWS}, noise_std=0.01, relative=True)


@pytest.fixture(scope="module")
def prior():
    from medrecon.priors.model import load_prior

    p = load_prior("ct-default")
    # without the prior-fit scoring pass (a TV reconstruction per batch, metadata only): faster tests
    p.config = {k: v for k, v in p.config.items() if k not in ("fit_reference", "training")}
    return p


def run(m, *args, **kw):
    kw.setdefault("progress", False)
    return reconstruct(m, *args, **kw)


def rel_diff(a, b):
    return float(np.abs(a - b).max()) / float(np.abs(b).max())


# ------------------------------------------------------------------ the same bits
def test_the_same_plan_twice_gives_the_same_bits(meas, prior):
    a = run(meas, "dds", prior, steps=STEPS, batch_size=2, seed=0).data
    b = run(meas, "dds", prior, steps=STEPS, batch_size=2, seed=0).data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(meas, "dds", prior, steps=STEPS, batch_size=2, seed=1).data)


def test_two_cpu_workers_give_the_bits_of_one(meas, prior):
    one = run(meas, "dds", prior, steps=STEPS, batch_size=2).data
    two = run(meas, "dds", prior, steps=STEPS, batch_size=2, devices=["cpu", "cpu"]).data
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("sampler,params", [("classical", None), ("tv", {"lam_rel": 2e-4})])
def test_samplers_without_a_network_or_tuning_give_the_same_bits_for_any_batch_size(meas, sampler, params):
    vols = [run(meas, sampler, steps=20, params=params, batch_size=b).data for b in (1, 2, 3)]
    np.testing.assert_array_equal(vols[0], vols[1])
    np.testing.assert_array_equal(vols[0], vols[2])


def test_a_slice_in_a_batch_of_the_same_shape_gives_the_same_bits(meas, prior):
    alone = run(meas, "dds", prior, steps=STEPS, batch_size=1).data
    pairs = run(meas, "dds", prior, steps=STEPS, batch_size=2).data  # batches [0, 1], [2]
    np.testing.assert_array_equal(pairs[2], alone[2])  # slice 2 runs alone in both


# ------------------------------------------------------------------ within the stated bound
@pytest.mark.parametrize("sampler", ["dds", "dps", "reddiff"])
def test_diffusion_samplers_agree_across_batch_sizes_within_the_bound(meas, prior, sampler):
    a = run(meas, sampler, prior, steps=STEPS, batch_size=1).data
    b = run(meas, sampler, prior, steps=STEPS, batch_size=3).data
    assert rel_diff(b, a) <= BOUND, rel_diff(b, a)


def test_tv_with_its_cross_validated_weight_agrees_across_batch_sizes_within_the_bound(meas):
    a = run(meas, "tv", steps=20, batch_size=1)
    b = run(meas, "tv", steps=20, batch_size=3)
    assert rel_diff(b.data, a.data) <= BOUND, rel_diff(b.data, a.data)
    wa = a.meta["reconstruction"]["auto_tuned"]["values"]
    wb = b.meta["reconstruction"]["auto_tuned"]["values"]
    assert all(abs(wa[k] - wb[k]) <= 1e-6 * wa[k] for k in wa)  # the weights: to about float32 rounding


# ------------------------------------------------------------------ what a resumed run records
def test_a_resume_with_the_same_batch_size_is_bit_identical_and_says_so(tmp_path, meas, prior):
    full = run(meas, "dds", prior, steps=STEPS, batch_size=2).data
    out = tmp_path / "r.nii.gz"
    with pytest.raises(RunStopped):
        run(meas, "dds", prior, steps=STEPS, batch_size=2, output=out, _stop_after=1)  # batch [0, 1]
    vol = run(meas, "dds", prior, steps=STEPS, batch_size=2, output=out, resume=True)
    rec = vol.meta["reconstruction"]
    assert rec["resumed_slices"] == 2
    assert rec["resumed_bit_identical"] is True, rec["resumed_reason"]
    np.testing.assert_array_equal(vol.data, full)
    np.testing.assert_array_equal(medrecon.load_volume(out).data, full)


@pytest.mark.parametrize("first,then,moved", [(2, 1, "0-1"), (1, 3, "0-2")])
def test_a_resume_with_another_batch_size_says_it_is_not_bit_identical(tmp_path, meas, prior,
                                                                       first, then, moved):
    full = run(meas, "dds", prior, steps=STEPS, batch_size=then).data
    out = tmp_path / "r.nii.gz"
    with pytest.raises(RunStopped):
        run(meas, "dds", prior, steps=STEPS, batch_size=first, output=out, _stop_after=1)
    vol = run(meas, "dds", prior, steps=STEPS, batch_size=then, output=out, resume=True)
    rec = vol.meta["reconstruction"]
    assert rec["resumed_bit_identical"] is False
    assert rec["resumed_reason"].startswith(f"slices {moved} ran in other batches")
    assert f"batch size {then}" in rec["resumed_reason"]
    assert rel_diff(vol.data, full) <= BOUND


def test_a_resume_with_another_thread_count_says_it_is_not_bit_identical(tmp_path, meas, prior):
    out = tmp_path / "r.nii.gz"
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    with pytest.raises(RunStopped):
        run(meas, "dds", prior, steps=STEPS, batch_size=2, output=out, _stop_after=1)
    torch.set_num_threads(other)
    try:
        vol = run(meas, "dds", prior, steps=STEPS, batch_size=2, output=out, resume=True)
    finally:
        torch.set_num_threads(threads)
    rec = vol.meta["reconstruction"]
    assert rec["resumed_bit_identical"] is False
    assert rec["resumed_reason"].startswith(f"slices 0-1 were made with {threads} CPU threads rather than {other}")


@pytest.mark.parametrize("batch,identical", [(2, True), (3, False)])
def test_a_split_run_says_whether_its_parts_cut_a_batch(tmp_path, meas, batch, identical):
    out = tmp_path / "p.nii.gz"
    kw = {"steps": 5, "params": {"lam_rel": 2e-4}, "batch_size": batch, "output": out, "num_parts": 2}
    assert run(meas, "tv", part_id=0, **kw) is None  # slices 0, 1
    vol = run(meas, "tv", part_id=1, **kw)  # slice 2, then the whole volume
    rec = vol.meta["reconstruction"]
    assert rec["resumed_slices"] == 2 and rec["resumed_bit_identical"] is identical, rec["resumed_reason"]


def test_the_statement_names_each_reason(meas):
    p = medrecon.plan(meas, "classical", batch_size=2, progress=False)
    dev = p.live.devices[0]
    good = {0: made_record(dev, p, [0, 1]), 1: made_record(dev, p, [0, 1]), 2: made_record(dev, p, [2])}
    assert resume_statement(p, good) == {
        "resumed_bit_identical": True,
        "resumed_reason": "every slice ran in the batch an uninterrupted run with batch size 2 gives it, on the "
                          f"CPU with {kernel_signature(dev)['threads']} threads and the same torch build"}

    def no(made):
        st = resume_statement(p, made)
        assert st["resumed_bit_identical"] is False
        return st["resumed_reason"]

    assert no({0: good[0], 1: good[1]}) == "there is no record of how slice 2 was made"
    assert no({k: dict(good[k], torch="0.0") for k in good}).startswith("slices 0-2 were made with torch 0.0 rather")
    assert no({**good, 2: dict(good[2], device="cuda", gpu="X")}).startswith("slice 2 was made on cuda rather than cpu")
    assert no({**good, 2: dict(good[2], batch=[1, 2])}).startswith("slice 2 ran in other batches (of 2 slices)")
    assert "draws side by side" in no({**good, 0: dict(good[0], draw_batch=2)})


def test_an_uninterrupted_run_makes_no_statement(meas):
    rec = run(meas, "classical").meta["reconstruction"]
    assert rec["resumed_slices"] == 0 and "resumed_bit_identical" not in rec and "resumed_reason" not in rec


def test_kept_records_hold_how_each_batch_was_made(tmp_path, meas):
    out = tmp_path / "k.nii.gz"
    with pytest.raises(RunStopped):
        run(meas, "tv", steps=5, params={"lam_rel": 2e-4}, batch_size=2, output=out, _stop_after=1)
    ck = Checkpoint(partial_path(out), {}, "", Z, (N, N))
    made = ck.made()
    assert sorted(made) == [0, 1] and made[0]["batch"] == [0, 1] and made[0]["device"] == "cpu"
    assert made[0]["threads"] == torch.get_num_threads() and made[0]["torch"] == torch.__version__
