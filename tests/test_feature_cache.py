"""Feature caching across diffusion steps (medrecon.priors.feature_cache, issue 23 item 1).

The network is the shipped ``ct-default`` prior's (a trained MONAI DiffusionModelUNet) on
32 x 32 images, so a pass costs milliseconds and the deep features are those of a real prior.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import medrecon
from medrecon.errors import InputError
from medrecon.priors import feature_cache as fc
from medrecon.priors.model import DiffusionPrior, default_config, load_prior
from medrecon.samplers import get_sampler, slice_generators

DRIVER = Path(__file__).resolve().parent / "cli_driver.py"
N = 32


@pytest.fixture(scope="module")
def prior():
    return load_prior("ct-default")


@pytest.fixture(scope="module")
def problem():
    """(operator, y (2, views, det), truth (2, N, N) HU): two Shepp-Logan slices, 12 parallel views."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    ph = resize(shepp_logan_phantom(), (N, N), anti_aliasing=True)
    x = torch.tensor(np.stack([ph, ph[::-1].copy()]) * 1000 - 1000, dtype=torch.float32)
    op = medrecon.get_operator("ct.parallel", shape=[N, N], n_views=12, pixel_size=2.0)
    with torch.no_grad():
        y = op(x)
    return op, y, x


def _run(sampler, problem, prior, n, steps=12, slices=(0, 1), **params):
    op, y, _ = problem
    s = get_sampler(sampler, cache_interval=n, **params)
    idx = list(slices)
    with torch.no_grad() if sampler != "dps" else torch.enable_grad():
        return s.sample(y[idx], op, prior, steps=steps, generators=slice_generators(0, idx)).detach()


def _spy(monkeypatch) -> list:
    """The list that every FeatureCache made from now on is appended to."""
    made = []
    orig = fc.FeatureCache.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(fc.FeatureCache, "__init__", init)
    return made


# ------------------------------------------------------------------------------ the two passes
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_full_pass_is_the_network_and_shallow_pass_reuses_it_exactly(prior, depth):
    """A full pass is MONAI's forward bit for bit; a shallow pass at the same (x, t) with the
    feature it stored gives the same output (the split is exact; only reuse at another step
    approximates)."""
    torch.manual_seed(0)
    x, t = torch.randn(2, 1, N, N), torch.tensor([700, 300])
    with torch.no_grad():
        ref = prior.net(x, t)
        cache = fc.FeatureCache(2, depth=depth)
        full = cache.run(prior.net, x, t)
        shallow = cache.run(prior.net, x, t)
    assert torch.equal(full, ref)
    assert (cache.full_passes, cache.shallow_passes) == (1, 1)
    assert torch.allclose(shallow, ref, rtol=0, atol=1e-5)
    assert float(ref.abs().mean()) > 0.1  # a trained network: the comparison is not of zeros


def test_interval_decides_full_and_shallow_passes(prior):
    cache = fc.FeatureCache(3)
    x = torch.randn(1, 1, N, N)
    with torch.no_grad():
        for k in range(7):
            cache.run(prior.net, x, torch.tensor([900 - 100 * k]))
    assert (cache.full_passes, cache.shallow_passes) == (3, 4)  # calls 0, 3, 6 full
    with torch.no_grad():  # another input shape: a full pass, never a stale feature
        cache.run(prior.net, torch.randn(2, 1, N, N), torch.tensor([200, 200]))
    assert cache.full_passes == 4


def test_shallow_pass_skips_the_deep_levels(prior):
    """In a shallow pass (depth 1) the middle block and the deep levels do not run."""
    ran = []
    hooks = [m.register_forward_hook(lambda *a, name=name: ran.append(name))
             for name, m in [("mid", prior.net.middle_block), ("down1", prior.net.down_blocks[1]),
                             ("up0", prior.net.up_blocks[0]), ("up_last", prior.net.up_blocks[-1])]]
    try:
        cache = fc.FeatureCache(2, depth=1)
        with torch.no_grad():
            cache.run(prior.net, torch.randn(1, 1, N, N), torch.tensor([500]))
            ran.clear()
            cache.run(prior.net, torch.randn(1, 1, N, N), torch.tensor([480]))
    finally:
        for h in hooks:
            h.remove()
    assert ran == ["up_last"]


def test_gradient_flows_through_the_shallow_path_only(prior):
    """DPS differentiates a cached step: the input gets a gradient, the stored feature is a constant."""
    cache = fc.FeatureCache(2)
    x0 = torch.randn(1, 1, N, N)
    with torch.no_grad():
        cache.run(prior.net, x0, torch.tensor([500]))
    x = x0.clone().requires_grad_(True)
    out = cache.run(prior.net, x, torch.tensor([480]))
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert cache.shallow_passes == 1 and not cache._feature.requires_grad
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0


def test_jacobian_none_leaves_the_network_out_of_a_cached_steps_gradient(prior):
    """jacobian="none": a shallow pass gives the same output as "shallow" but no gradient to its input
    (DPS's d x0_hat / d x_t is then 1 / sqrt(abar_t)); a full pass still differentiates the network."""
    x0 = torch.randn(1, 1, N, N)
    outs = {}
    for jac in ("shallow", "none"):
        cache = fc.FeatureCache(2, jacobian=jac)
        x = x0.clone().requires_grad_(True)
        full = cache.run(prior.net, x, torch.tensor([500]))
        (g_full,) = torch.autograd.grad(full.square().sum(), x)
        assert float(g_full.abs().sum()) > 0
        x = x0.clone().requires_grad_(True)
        outs[jac] = cache.run(prior.net, x, torch.tensor([480]))
        assert cache.shallow_passes == 1
        if jac == "none":
            assert not outs[jac].requires_grad
    assert torch.equal(outs["none"], outs["shallow"].detach())
    with pytest.raises(InputError, match="jacobian"):
        fc.FeatureCache(2, jacobian="full")
    with pytest.raises(InputError, match="cache_jacobian"):
        get_sampler("dps", cache_jacobian="deep")


# ------------------------------------------------------------------------------ samplers
@pytest.mark.parametrize("sampler", ["dds", "dps", "reddiff"])
def test_interval_0_and_1_are_the_uncached_sampler_bit_for_bit(problem, prior, sampler, monkeypatch):
    """cache_interval 0 (the default) makes no cache and runs the network as before this feature;
    1 (a full pass every step) is the same computation."""
    made = _spy(monkeypatch)
    op, y, _ = problem
    with torch.no_grad() if sampler != "dps" else torch.enable_grad():
        default = get_sampler(sampler).sample(y[[0, 1]], op, prior, steps=6,  # y[idx] as in _run: same strides
                                              generators=slice_generators(0, [0, 1])).detach()
    off = _run(sampler, problem, prior, 0, steps=6)
    one = _run(sampler, problem, prior, 1, steps=6)
    assert not made
    assert torch.equal(off, default) and torch.equal(one, default)


@pytest.mark.parametrize("sampler,max_rel", [("dds", 0.03), ("dps", 0.1)])
def test_caching_changes_the_result_a_little(problem, prior, sampler, max_rel):
    """On a trained prior, N = 2 and 3 move the result by a few percent of the image (measured
    0.5-0.8 % for DDS, 3.5-3.8 % for DPS at 20 steps) and keep its error to the truth."""
    _, _, truth = problem
    ref = _run(sampler, problem, prior, 0, steps=16)
    err0 = float((ref - truth).norm() / truth.norm())
    for n in (2, 3):
        out = _run(sampler, problem, prior, n, steps=16)
        rel = float((out - ref).norm() / ref.norm())
        assert 0 < rel < max_rel, (n, rel)
        assert float((out - truth).norm() / truth.norm()) < err0 + max_rel


def test_cache_is_per_call_batch_equals_single_slices_and_draws_repeat(problem, prior):
    """No feature crosses slices, batches or draws: a batch of 2 gives what 2 single-slice calls
    give, and a second call with the same generators repeats the first."""
    both = _run("dds", problem, prior, 3)
    one = torch.cat([_run("dds", problem, prior, 3, slices=(k,)) for k in (0, 1)])
    assert torch.allclose(both, one, rtol=0, atol=1e-4 * float(both.abs().max()))
    assert torch.equal(_run("dds", problem, prior, 3), both)
    assert not torch.equal(both, _run("dds", problem, prior, 0))  # the cache did act


def test_wrapped_prior_passes_the_cache_through(problem, prior, monkeypatch):
    """A RescaledPrior (the engine's wrapper at another pixel size) and a Gaussian prior without a
    UNet: the first runs cached, the second uncached (no deep features to reuse)."""
    from medrecon.priors.rescaled import RescaledPrior
    from medrecon.testing import smooth_gaussian_prior

    made = _spy(monkeypatch)
    _run("dds", problem, RescaledPrior(prior, 2.0), 2, steps=6)
    assert made[-1].shallow_passes == 3
    g = smooth_gaussian_prior(N)
    assert torch.equal(_run("dds", problem, g, 2, steps=6), _run("dds", problem, g, 0, steps=6))
    assert made[-1].full_passes == made[-1].shallow_passes == 0


def test_sample_prior_cached_and_off(prior):
    from medrecon.priors.sample import sample_prior

    tiny = DiffusionPrior(default_config("ct", image_size=16, preset="tiny")).eval()
    assert torch.equal(sample_prior(tiny, n=2, steps=4, size=16), sample_prior(tiny, n=2, steps=4, size=16,
                                                                              cache_interval=0))
    a = sample_prior(prior, n=2, steps=6, size=N)
    b = sample_prior(prior, n=2, steps=6, size=N, cache_interval=2)
    assert not torch.equal(a, b) and float((a - b).abs().mean()) < 0.1


# ------------------------------------------------------------------------------ bad input
def test_bad_interval_api(problem, prior):
    op, y, _ = problem
    with pytest.raises(InputError, match="cache_interval"):
        get_sampler("dps", cache_interval=-1)
    with pytest.raises(InputError, match="larger than the 6 step"):
        get_sampler("dds", cache_interval=7).sample(y, op, prior, steps=6)
    with pytest.raises(InputError, match="larger than the 1000 step"):  # DPS's default steps, capped at T
        get_sampler("dps", cache_interval=1001).resolve_steps(None, prior)
    from medrecon.priors.sample import check_sample_args

    with pytest.raises(InputError, match="0 \\(off\\) or a positive"):
        check_sample_args(cache_interval=-2, steps=10)
    with pytest.raises(InputError, match="larger than the 10 step"):
        check_sample_args(cache_interval=11, steps=10)


def test_cli_cache_interval(study, tmp_path):
    """Real processes: a bad --cache-interval is one sentence and exit 2; a good one reaches the
    plan (dry run) as the sampler's cache_interval."""
    m = str(study / "m.h5")
    rec = ["reconstruct", m, "--prior", "ct-default", "-s", "dds", "-o"]
    cases = {
        "negative": rec + [str(tmp_path / "a.nii.gz"), "--cache-interval", "-1", "--steps", "5"],
        "too_long": rec + [str(tmp_path / "b.nii.gz"), "--cache-interval", "6", "--steps", "5"],
        "disagree": rec + [str(tmp_path / "c.nii.gz"), "--cache-interval", "2", "-p", "cache_interval=3"],
        "sample_prior": ["sample-prior", "ct-default", "--steps", "10", "--cache-interval", "11", "-o",
                         str(tmp_path / "s.png")],
        "dry_run": rec + [str(tmp_path / "d.nii.gz"), "--cache-interval", "3", "--steps", "5", "--dry-run"],
        "run": rec + [str(tmp_path / "ok.nii.gz"), "--cache-interval", "2", "--steps", "4", "--device", "cpu", "-q"],
    }
    (tmp_path / "cases.json").write_text(json.dumps([{"id": k, "argv": v, "cwd": str(tmp_path)}
                                                     for k, v in cases.items()]))
    p = subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "cases.json"), str(tmp_path / "res.json")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "res.json").read_text())
    for k in ("negative", "too_long", "disagree", "sample_prior"):
        r = res[k]
        lines = [ln for ln in r["stderr"].splitlines() if ln.strip() and "Warning" not in ln]
        assert r["rc"] == 2 and len(lines) == 1 and "Traceback" not in r["stderr"], (k, r)
        assert "cache" in lines[0].lower(), (k, lines)
    assert res["dry_run"]["rc"] == 0, res["dry_run"]
    plan = json.loads(res["dry_run"]["stdout"])
    assert plan["sampler"]["params"]["cache_interval"] == 3
    assert res["run"]["rc"] == 0, res["run"]
    assert medrecon.load_volume(tmp_path / "ok.nii.gz").meta["reconstruction"]["sampler"]["params"][
        "cache_interval"] == 2
    assert [p.name for p in tmp_path.glob("*.nii.gz")] == ["ok.nii.gz"] and not (tmp_path / "s.png").exists()


# ------------------------------------------------------------------------------ volume samplers
@pytest.mark.parametrize("sampler", ["dds3d", "mbir3d"])
def test_volume_samplers_cache_per_chunk_and_resume_as_an_uninterrupted_run(problem, prior, sampler, monkeypatch):
    """dds3d / mbir3d: off (0) is the uncached loop bit for bit; N = 2 keeps one cache per network
    chunk (net_batch), moves the result a little, and offers checkpoints only before a full pass,
    so resuming any of them gives the uninterrupted result exactly."""
    op, y, truth = problem
    y3 = torch.cat([y, y.flip(0), y])  # 6 slices
    gens = lambda: slice_generators(0, range(6))  # noqa: E731

    def run(n, **kw):
        with torch.no_grad():
            return get_sampler(sampler, cache_interval=n, net_batch=4, **kw.pop("params", {})).sample(
                y3, op, prior, steps=8, generators=gens(), **kw)

    made = _spy(monkeypatch)
    off = run(0)
    assert not made
    assert torch.equal(off, get_sampler(sampler, net_batch=4).sample(y3, op, prior, steps=8, generators=gens()))
    states = []
    cached = run(2, checkpoint=lambda st: states.append({k: (v.clone() if torch.is_tensor(v) else
                                                             [w.clone() for w in v] if k in ("w", "u") and v
                                                             else v) for k, v in st.items()}))
    assert len(made) == 2 and [c.full_passes for c in made] == [4, 4] and made[0].shallow_passes == 4
    rel = float((cached - off).norm() / off.norm())
    assert 0 < rel < 0.05, rel
    assert [s["step"] for s in states] == [2, 4, 6]
    for st in states:
        assert torch.equal(run(2, resume_state=st), cached), st["step"]
