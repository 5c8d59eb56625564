"""DiffusionPrior, its storage and errors, the schedule and sampler helpers (tiny networks, fast)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from medrecon.errors import FileFormatError, InputError, MedreconError
from medrecon.priors.model import DiffusionPrior, default_config, load_prior
from medrecon.priors.protocol import PriorProtocol
from medrecon.priors.schedule import (
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    dpmpp2m_sample,
    eps_from_x0,
    make_schedule,
    tweedie_x0,
)


@pytest.fixture(scope="module")
def tiny_prior():
    torch.manual_seed(0)
    p = DiffusionPrior(default_config("ct", 32, 2.0, preset="tiny"))
    p.eval().requires_grad_(False)
    return p


def _one_sentence(exc: BaseException) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg


def test_protocol_and_members(tiny_prior):
    assert isinstance(tiny_prior, PriorProtocol)
    assert tiny_prior.num_timesteps == 1000
    assert tiny_prior.alphas_cumprod.dtype == torch.float64
    assert tiny_prior.downsample_factor == 8
    x = torch.linspace(-1000, 2000, 7)
    assert torch.allclose(tiny_prior.to_net(x), torch.linspace(-1, 1, 7), atol=1e-6)
    assert torch.allclose(tiny_prior.from_net(tiny_prior.to_net(x)), x, atol=1e-3)
    assert float(tiny_prior.scale) == 1500 and float(tiny_prior.offset) == 500


@pytest.mark.parametrize("hw", [(70, 90), (32, 32), (5, 7), (33, 64)])
def test_eps_any_grid_same_shape(tiny_prior, hw):
    x = torch.randn(2, 1, *hw)
    out = tiny_prior.eps(x, torch.tensor([10, 900]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert tiny_prior.eps(x, 5).shape == x.shape  # scalar t


def test_eps_rejects_bad_shape(tiny_prior):
    with pytest.raises(InputError):
        tiny_prior.eps(torch.randn(1, 2, 8, 8), 3)


def test_save_load_roundtrip_exact(tiny_prior, tmp_path):
    x = torch.randn(2, 1, 40, 24)
    t = torch.tensor([3, 700])
    tiny_prior.save(tmp_path / "p32", dtype="float32")
    q = DiffusionPrior.load(tmp_path / "p32")
    assert torch.equal(tiny_prior.eps(x, t), q.eps(x, t))
    tiny_prior.save(tmp_path / "p16", dtype="float16")
    r = load_prior(str(tmp_path / "p16"))
    for (k, a), (_, b) in zip(tiny_prior.net.state_dict().items(), r.net.state_dict().items(), strict=True):
        assert torch.equal(a.half().float(), b), k
    cfg = json.loads((tmp_path / "p16" / "config.json").read_text())
    assert cfg["weights"]["dtype"] == "float16" and len(cfg["weights"]["sha256"]) == 64
    assert cfg["intensity"] == {"kind": "window", "lo": -1000.0, "hi": 2000.0, "units": "HU"}


def test_load_errors_are_one_sentence(tiny_prior, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileFormatError) as e:
        load_prior(str(tmp_path / "empty"))
    _one_sentence(e.value)
    with pytest.raises(FileFormatError) as e:
        load_prior(str(tmp_path / "nope"))
    _one_sentence(e.value)

    folder = tmp_path / "p"
    tiny_prior.save(folder)
    (folder / "weights.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(FileFormatError) as e:
        load_prior(str(folder))
    _one_sentence(e.value)

    tiny_prior.save(folder)
    with pytest.raises(InputError) as e:
        load_prior(str(folder), modality="mr")
    _one_sentence(e.value)

    cfg = json.loads((folder / "config.json").read_text())
    cfg["modality"] = "pet"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileFormatError) as e:
        load_prior(str(folder))
    _one_sentence(e.value)

    (folder / "config.json").write_text("{not json")
    with pytest.raises(FileFormatError) as e:
        load_prior(str(folder))
    _one_sentence(e.value)

    # weights of another network
    other = DiffusionPrior(default_config("ct", 32, 2.0, preset="xs"))
    other.save(tmp_path / "o")
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    cfg["network"] = tiny_prior.config["network"]
    (tmp_path / "o" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileFormatError) as e:
        load_prior(str(tmp_path / "o"))
    _one_sentence(e.value)


def test_unknown_and_unshipped_names():
    with pytest.raises(MedreconError) as e:
        load_prior("no-such-prior")
    _one_sentence(e.value)


def test_mr_intensity_needs_percentiles(tmp_path):
    p = DiffusionPrior(default_config("mr", 32, 1.0, preset="tiny"))
    with pytest.raises(InputError):
        p.to_net(torch.ones(3))
    vol = np.random.default_rng(0).uniform(0, 1000, (4, 16, 16)).astype(np.float32)
    q = p.for_volume(vol)
    lo, hi = np.percentile(vol, [0.5, 99.5])
    assert torch.allclose(q.to_net(torch.tensor([lo, hi], dtype=torch.float32)), torch.tensor([-1.0, 1.0]), atol=1e-5)
    r = p.with_intensity(torch.tensor([0.0, 10.0]), torch.tensor([100.0, 20.0]))  # per slice
    x = torch.tensor([50.0, 15.0]).view(2, 1, 1, 1)
    assert torch.allclose(r.to_net(x).flatten(), torch.tensor([0.0, 0.0]))
    assert torch.allclose(r.from_net(r.to_net(x)), x)


def test_pixel_size_warning(tiny_prior):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tiny_prior.check_pixel_size(2.2)
    with pytest.warns(UserWarning, match="pixel size"):
        assert not tiny_prior.check_pixel_size(0.8)


def test_v_prediction_converts_to_eps():
    p = DiffusionPrior(default_config("ct", 16, 1.0, preset="tiny", prediction="v")).eval()
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([100, 600])
    v = p.net_output(x, t)
    a = p.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(p.eps(x, t), a.sqrt() * v + (1 - a).sqrt() * x, atol=1e-6)


# -- schedule -----------------------------------------------------------------------------

def test_schedules():
    lin = make_schedule("linear")
    cos = make_schedule("cosine")
    for a in (lin, cos):
        assert a.shape == (1000,) and a.dtype == torch.float64
        assert (a[1:] < a[:-1]).all() and 0 < a[-1] < a[0] < 1
    assert abs(lin[0] - (1 - 1e-4)) < 1e-12
    assert 1e-5 < lin[-1] < 1e-4  # ~4e-5
    assert cos[-1] < 1e-6 < lin[-1]  # cosine ends nearer pure noise
    assert cos[500] > lin[500]  # and keeps more signal mid-way
    with pytest.raises(InputError):
        make_schedule("quadratic")


def test_ddim_timesteps():
    t = ddim_timesteps(50, 1000)
    assert len(t) == 50 and t[0] == 999 and (t[:-1] > t[1:]).all() and t[-1] == 19
    assert ddim_timesteps(10, 1000, "leading").tolist()[-1] == 0
    lt = ddim_timesteps(10, 1000, "linspace")
    assert lt[0] == 999 and lt[-1] == 0
    with pytest.raises(InputError):
        ddim_timesteps(0, 1000)


def test_tweedie_helpers_inverse():
    x0 = torch.randn(3, 1, 4, 4)
    e = torch.randn_like(x0)
    abar = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    xt = abar.float().sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar.float()).sqrt().view(-1, 1, 1, 1) * e
    assert torch.allclose(tweedie_x0(xt, e, abar), x0, atol=1e-5)
    assert torch.allclose(eps_from_x0(xt, x0, abar), e, atol=1e-5)
    assert torch.allclose(ddim_step(xt, e, abar, torch.ones(3, dtype=torch.float64)), x0, atol=1e-5)


def _gauss_eps(s2: float, abar):
    """Exact eps(x_t, t) for x_0 ~ N(0, s2 I)."""
    def fn(x, t):
        a = abar[t].to(x.dtype).view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * s2 + 1 - a)
    return fn


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_samplers_on_gaussian_prior(sampler):
    abar = make_schedule("linear")
    ts = ddim_timesteps(50, 1000)
    s2 = 0.25
    x_T = torch.randn(4096, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    fn = _gauss_eps(s2, abar)
    if sampler == "ddim":
        x = ddim_sample(fn, x_T, abar, ts)
        again = ddim_sample(fn, x_T, abar, ts)
        assert torch.equal(x, again)  # eta = 0 is deterministic
    else:
        x = dpmpp2m_sample(fn, x_T, abar, ts)
    assert abs(float(x.std()) - s2**0.5) < 0.03


def test_ddim_eta0_deterministic_with_network(tiny_prior):
    from medrecon.priors.sample import sample_prior

    a = sample_prior(tiny_prior, n=2, steps=4, sampler="ddim", seed=3, size=16)
    b = sample_prior(tiny_prior, n=2, steps=4, sampler="ddim", seed=3, size=16)
    assert torch.equal(a, b) and a.shape == (2, 1, 16, 16)
    c = sample_prior(tiny_prior, n=2, steps=4, sampler="dpmpp2m", seed=3, size=16)
    assert torch.isfinite(c).all()
