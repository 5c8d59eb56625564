"""Sampler settings a prior recommends (``config.json`` ``recommended``;
:mod:`medrecon.priors.recommended`): resolution rules, config validation, the engine applying
them (and recording what it applied), the caller's values winning, and the CLI (a real
process) reporting them and ``--no-recommended``."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import medrecon
from medrecon.engine import reconstruct
from medrecon.errors import FileFormatError, InputError
from medrecon.priors.model import DiffusionPrior, default_config, load_prior
from medrecon.priors.recommended import resolve, validate_recommended
from medrecon.samplers import get_sampler, sampler_class
from medrecon.testing import disk_phantom

Z, N = 2, 16
DPS = sampler_class("dps")
DDS = sampler_class("dds")

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.usefixtures("one_torch_thread")]

MR_LIKE = {"dps": {"operators": ["mri."], "evidence": "test",
                   "by_steps": [{"steps": 50, "params": {"zeta": 20.0}}, {"steps": 200, "params": {"zeta": 10.0}},
                                {"steps": 1000, "params": {"zeta": 5.0}}]}}


def cfg_with(rec):
    return {"recommended": rec}


# ---------------------------------------------------------------------------- resolution rules
@pytest.mark.parametrize("steps, zeta", [
    (50, 20.0), (200, 10.0), (1000, 5.0), (None, 5.0),  # None: DPS's default 1000 steps
    (100, 20.0 / np.sqrt(2)),  # half-way between 50 and 200 in log steps: the geometric mean
    (500, 10.0 * 0.5 ** (np.log(500 / 200) / np.log(1000 / 200))),
])
def test_listed_points_and_log_log_interpolation(steps, zeta):
    r = resolve(cfg_with(MR_LIKE), DPS, steps, {}, "mri.sense")
    assert r is not None and r.sampler == "dps" and r.steps is None and r.evidence == "test"
    assert r.params["zeta"] == pytest.approx(zeta, rel=1e-12)


@pytest.mark.parametrize("steps", [10, 49, 1001, 5000])
def test_nothing_outside_the_measured_range(steps):
    assert resolve(cfg_with(MR_LIKE), DPS, steps, {}, "mri.sense") is None


def test_the_callers_values_win_and_the_operator_filter():
    assert resolve(cfg_with(MR_LIKE), DPS, 200, {"zeta": 3.0}, "mri.sense") is None
    assert resolve(cfg_with(MR_LIKE), DPS, 200, {}, "ct.parallel") is None  # evidence is for mri.* only
    assert resolve(cfg_with(MR_LIKE), DPS, 200, {}, "mri.cartesian").params == {"zeta": 10.0}  # a prefix
    assert resolve(cfg_with(MR_LIKE), DDS, 50, {}, "mri.sense") is None  # nothing for dds
    assert resolve({}, DPS, 200, {}, "mri.sense") is None


def test_recommended_steps_only_when_the_caller_gives_none():
    rec = {"dps": {"steps": 200, "by_steps": [{"steps": 200, "params": {"zeta": 5.0, "variance": "large"}},
                                              {"steps": 400, "params": {"zeta": 4.0, "variance": "small"}}]}}
    r = resolve(cfg_with(rec), DPS, None, {}, "ct.parallel")
    assert r.steps == 200 and r.params == {"zeta": 5.0, "variance": "large"}
    r = resolve(cfg_with(rec), DPS, 390, {"zeta": 1.0}, "ct.parallel")  # nearer 400 in log steps
    assert r.steps is None and r.params == {"variance": "small"}
    assert "steps=200" in resolve(cfg_with(rec), DPS, None, {}, None).describe()
    # a zeta of one's own goes with the sampler's own 1000 steps, outside what was measured
    assert resolve(cfg_with(rec), DPS, None, {"zeta": 1.0}, "ct.parallel") is None
    # a parameter the prior does not recommend does not cancel its step count
    assert resolve(cfg_with(rec), DPS, None, {"spacing": "leading"}, "ct.parallel").steps == 200


def test_between_two_points_only_what_both_list():
    rec = {"dps": {"by_steps": [{"steps": 100, "params": {"zeta": 8.0, "variance": "large"}},
                                {"steps": 400, "params": {"zeta": 4.0}}]}}
    assert resolve(cfg_with(rec), DPS, 100, {}, "x").params == {"zeta": 8.0, "variance": "large"}
    assert resolve(cfg_with(rec), DPS, 200, {}, "x").params == {"zeta": pytest.approx(8.0 / 2 ** 0.5)}


def test_the_step_count_is_capped_at_the_priors_timesteps():
    assert resolve(cfg_with(MR_LIKE), DPS, 1200, {}, "mri.sense") is None
    assert resolve(cfg_with(MR_LIKE), DPS, 1200, {}, "mri.sense", num_timesteps=1000).params == {"zeta": 5.0}
    with pytest.raises(FileFormatError, match="more than the prior's 1000 timesteps"):
        validate_recommended({"dps": {"steps": 2000, "by_steps": [{"steps": 5, "params": {}}]}}, "p", 1000)


@pytest.mark.parametrize("a, b", [(5, 20), (5.0, 20.0)])
def test_integer_parameters_stay_integers(a, b):
    """The parameter's declared type decides, not how the JSON writes the number."""
    rec = {"dds": {"by_steps": [{"steps": 50, "params": {"cg_iters": a}}, {"steps": 200, "params": {"cg_iters": b}}]}}
    for n in (70, 100, 150):
        r = resolve(cfg_with(rec), DDS, n, {}, "x")
        assert isinstance(r.params["cg_iters"], int)
        get_sampler("dds", **r.params)  # a valid parameter value
    assert resolve(cfg_with(rec), DDS, 100, {}, "x").params == {"cg_iters": 10}


def test_float_parameters_written_as_json_integers_stay_floats():
    rec = {"dps": {"by_steps": [{"steps": 50, "params": {"zeta": 20}}, {"steps": 200, "params": {"zeta": 10}}]}}
    assert resolve(cfg_with(rec), DPS, 100, {}, "x").params["zeta"] == pytest.approx(20 / 2 ** 0.5, rel=1e-12)


@pytest.mark.parametrize("section, words", [
    ([], "JSON object"),
    ({"dps": {"by_steps": []}}, "non-empty list"),
    ({"dps": {"by_steps": [{"steps": 0, "params": {}}]}}, "positive integer 'steps'"),
    ({"dps": {"by_steps": [{"steps": 5, "params": {}}, {"steps": 5, "params": {}}]}}, "twice"),
    ({"dps": {"steps": "many", "by_steps": [{"steps": 5, "params": {}}]}}, "'steps' must be"),
    ({"dps": {"operators": "mri.", "by_steps": [{"steps": 5, "params": {}}]}}, "'operators'"),
    ({"dps": {"zeta": 5, "by_steps": [{"steps": 5, "params": {}}]}}, "unknown key 'zeta'"),
])
def test_bad_sections_are_one_sentence_errors(section, words):
    with pytest.raises(FileFormatError, match=words) as e:
        validate_recommended(section, "prior X")
    assert "\n" not in str(e.value) and "'recommended'" in str(e.value)


def test_an_unknown_parameter_is_the_priors_fault():
    rec = {"dps": {"by_steps": [{"steps": 5, "params": {"zetta": 5.0}}]}}
    with pytest.raises(FileFormatError, match="'zetta'.*known: "):
        resolve(cfg_with(rec), DPS, 5, {}, "x")


def test_the_shipped_priors_recommend_what_their_validation_picked():
    """The numbers in the shipped configs are those of docs/mri.md and docs/quality.md."""
    mr, ct = load_prior("mr-default").config, load_prior("ct-default").config
    assert resolve(mr, DPS, None, {}, "mri.sense").params == {"zeta": 7.0}  # 1000 steps (session 9)
    assert resolve(mr, DPS, 200, {}, "mri.sense").params == {"zeta": 10.0}
    assert resolve(mr, DPS, 50, {}, "mri.sense").params == {"zeta": 20.0}
    assert resolve(mr, DPS, 50, {}, "mri.cartesian") is None  # measured with mri.sense only
    assert resolve(mr, DDS, None, {}, "mri.sense").params == {"cg_iters": 20}  # 50 steps (session 36)
    assert resolve(mr, DDS, 200, {}, "mri.sense") is None
    r = resolve(ct, DPS, None, {}, "ct.parallel")
    assert r.steps == 200 and r.params == {"zeta": 5.0, "tv": 0.25}
    assert resolve(ct, DDS, None, {}, "ct.parallel").params == {"eta": 0.5, "tv": 0.15}
    assert resolve(ct, DDS, 100, {}, "ct.parallel") is None  # measured at 50 steps only
    assert resolve(ct, DDS, None, {}, "ct.fan") is None  # measured on parallel beam only


# ---------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def meas():
    return medrecon.simulate(disk_phantom(Z, N), "ct.parallel", {"n_views": 8, "pixel_size": 0.8}, noise_std=0.5,
                             seed=3)


REC = {"dps": {"steps": 3, "operators": ["ct.parallel"], "evidence": "a test",
               "by_steps": [{"steps": 3, "params": {"zeta": 7.0}}]}}


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    cfg = default_config("ct", image_size=N, pixel_size_mm=0.8, preset="tiny")
    cfg["recommended"] = REC
    return DiffusionPrior(cfg)


def test_the_engine_applies_and_records_them(meas, prior):
    got = reconstruct(meas, "dps", prior, progress=False)
    info = got.meta["reconstruction"]
    assert info["steps"] == 3 and info["sampler"]["params"]["zeta"] == 7.0
    assert info["recommended"] == {"params": {"zeta": 7.0}, "steps": 3, "evidence": "a test"}
    same = reconstruct(meas, "dps", prior, steps=3, params={"zeta": 7.0}, recommended=False, progress=False)
    np.testing.assert_array_equal(got.data, same.data)
    assert "recommended" not in same.meta["reconstruction"]
    generic = reconstruct(meas, "dps", prior, steps=3, recommended=False, progress=False)
    assert generic.meta["reconstruction"]["sampler"]["params"]["zeta"] == 1.0
    assert not np.allclose(generic.data, got.data)  # zeta matters


def test_the_callers_settings_win(meas, prior):
    mine = reconstruct(meas, "dps", prior, steps=3, params={"zeta": 2.0}, progress=False)
    assert mine.meta["reconstruction"]["sampler"]["params"]["zeta"] == 2.0
    assert "recommended" not in mine.meta["reconstruction"]
    inst = reconstruct(meas, get_sampler("dps"), prior, steps=3, progress=False)  # a built sampler is the caller's
    assert inst.meta["reconstruction"]["sampler"]["params"]["zeta"] == 1.0
    other = reconstruct(meas, "dps", prior, steps=2, progress=False)  # 2 steps: outside what was measured
    assert other.meta["reconstruction"]["sampler"]["params"]["zeta"] == 1.0


def test_resume_keeps_them_and_a_mismatch_names_them(meas, prior, tmp_path):
    """A partial run resumes with the recommendation it was started with; one started with other
    values (here: without it, as before a prior's recommendation changed) is refused with the
    values the prior supplied named, and resumes when they are turned off."""
    from medrecon.engine import RunStopped

    out, old = tmp_path / "r.nii.gz", tmp_path / "old.nii.gz"
    with pytest.raises(RunStopped):  # the engine's test hook: stop after the first slice
        reconstruct(meas, "dps", prior, output=out, batch_size=1, progress=False, _stop_after=1)
    done = reconstruct(meas, "dps", prior, output=out, batch_size=1, resume=True, progress=False)
    assert done.meta["reconstruction"]["resumed_slices"] == 1
    whole = reconstruct(meas, "dps", prior, progress=False)
    np.testing.assert_allclose(done.data, whole.data, rtol=0, atol=1e-4 * float(np.abs(whole.data).max()))

    with pytest.raises(RunStopped):
        reconstruct(meas, "dps", prior, steps=3, output=old, batch_size=1, recommended=False, progress=False,
                    _stop_after=1)
    with pytest.raises(InputError, match="zeta=7 from the prior's recommended settings.*--no-recommended") as e:
        reconstruct(meas, "dps", prior, steps=3, output=old, resume=True, progress=False)
    assert "\n" not in str(e.value)
    got = reconstruct(meas, "dps", prior, steps=3, output=old, batch_size=1, resume=True, recommended=False,
                      progress=False)
    assert got.meta["reconstruction"]["resumed_slices"] == 1


def test_reconstruct_many_passes_the_switch_on(meas, prior, tmp_path):
    from medrecon.engine.distributed import reconstruct_many
    from medrecon.measurement import save_measurement

    save_measurement(meas, tmp_path / "m.h5")
    for flag in (True, False):
        reps = reconstruct_many([str(tmp_path / "m.h5")], "dps", prior, output_dir=tmp_path / str(flag),
                                recommended=flag, steps=3, device="cpu")
        assert [r["status"] for r in reps] == ["done"], reps
    a, b = (medrecon.load_volume(tmp_path / f / "m.nii.gz").data for f in ("True", "False"))
    one = reconstruct(meas, "dps", prior, progress=False).data
    np.testing.assert_allclose(a, one, rtol=0, atol=1e-4 * float(np.abs(one).max()))
    assert not np.allclose(a, b)


def test_what_a_prior_recommends_is_not_part_of_its_fingerprint(prior):
    """Nor how it was trained or its fit reference: only what changes its output counts."""
    from medrecon.engine.settings import prior_fingerprint

    cfg = copy.deepcopy(prior.config)
    cfg.pop("recommended")
    cfg["training"] = {"note": "retold"}
    cfg["provenance"] = {"data": "described differently"}
    bare = DiffusionPrior(cfg, net=prior.net)
    assert prior_fingerprint(bare) == prior_fingerprint(prior)
    cfg["intensity"] = {**cfg["intensity"], "units": "changed"}
    assert prior_fingerprint(DiffusionPrior(cfg, net=prior.net)) != prior_fingerprint(prior)


def test_cli_reports_them_and_can_turn_them_off(meas, prior, tmp_path):
    from medrecon.measurement import save_measurement

    save_measurement(meas, tmp_path / "m.h5")
    prior.save(tmp_path / "prior")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "medrecon.cli.main", "reconstruct", str(tmp_path / "m.h5"),
                               "-s", "dps", "--prior", str(tmp_path / "prior"), "--device", "cpu",
                               *map(str, args)], capture_output=True, text=True)

    p = cli("-o", tmp_path / "a.nii.gz")
    assert p.returncode == 0, p.stderr
    assert "medrecon: dps: steps=3, zeta=7 recommended by the prior (a test)" in p.stderr
    assert "(steps=3, zeta=7 recommended by the prior)" in p.stdout and "3 steps" in p.stdout
    p = cli("--steps", 3, "-q", "-o", tmp_path / "q.nii.gz")  # -q: no progress, the note stays
    assert p.returncode == 0 and "zeta=7 recommended by the prior" in p.stderr, p.stderr
    p = cli("--steps", 3, "--no-recommended", "-q", "-o", tmp_path / "b.nii.gz")
    assert p.returncode == 0 and "recommended" not in p.stdout + p.stderr, p.stderr
    import nibabel as nib

    a, b = (np.asarray(nib.load(tmp_path / f).dataobj) for f in ("a.nii.gz", "b.nii.gz"))
    assert not np.allclose(a, b)
    cfg = json.loads((tmp_path / "prior" / "config.json").read_text())
    cfg["recommended"]["dps"]["by_steps"][0]["params"] = {"zeta": -1.0}
    (tmp_path / "prior" / "config.json").write_text(json.dumps(cfg))
    p = cli("-q", "-o", tmp_path / "c.nii.gz")
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "recommended settings for 'dps' are not valid" in p.stderr and not (tmp_path / "c.nii.gz").exists()
