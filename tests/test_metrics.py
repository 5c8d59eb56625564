"""Metrics against known values: PSNR of a known MSE (NumPy and torch), SSIM of identical images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medrecon.errors import InputError
from medrecon.evaluation import evaluate
from medrecon.metrics import (
    CT_WINDOW,
    compare,
    default_window,
    psnr,
    psnr_slices,
    ssim,
    ssim_slices,
)


def test_psnr_of_a_known_mse():
    r = np.zeros((3, 8, 8))
    x = r + 10.0  # MSE = 100, window width 2000
    assert psnr(x, r, window=(-1000, 1000)) == pytest.approx(10 * math.log10(2000**2 / 100))
    assert psnr(x, r, window=(-1000, 1000)) == pytest.approx(46.0206, abs=1e-4)


def test_psnr_clips_to_the_window():
    r = np.full((4, 4), 0.0)
    x = np.full((4, 4), 5000.0)  # clipped to 1000: error 1000 everywhere
    assert psnr(x, r, window=(-1000, 1000)) == pytest.approx(10 * math.log10(2000**2 / 1000**2))


def test_psnr_identical_is_inf_and_json_null():
    r = np.arange(64, dtype=float).reshape(1, 8, 8)
    assert psnr(r, r, (0, 63)) == math.inf
    assert compare(r, r, (0, 63))["psnr"] is None


def test_volume_psnr_is_from_the_volume_mse_and_slices_are_separate():
    r = np.zeros((2, 8, 8))
    x = r.copy()
    x[0] += 1.0  # slice MSEs 1 and 0
    assert psnr(x, r, (0, 10)) == pytest.approx(10 * math.log10(100 / 0.5))
    per = psnr_slices(x, r, (0, 10))
    assert per[0] == pytest.approx(20.0) and per[1] == math.inf


def test_ssim_matches_skimage_per_slice_and_identity():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    r = rng.uniform(0, 1, (2, 16, 16))
    x = r + rng.normal(0, 0.1, r.shape)
    assert ssim(r, r, (0, 1)) == pytest.approx(1.0)
    per = ssim_slices(x, r, (0, 1))
    for k in range(2):
        ref = structural_similarity(r[k], np.clip(x[k], 0, 1), data_range=1.0)
        assert per[k] == pytest.approx(ref)
    assert ssim(x, r, (0, 1)) == pytest.approx(per.mean())
    assert ssim_slices(x[:, :5, :5], r[:, :5, :5], (0, 1)).shape == (2,)  # small images: smaller window


def test_errors_are_one_sentence():
    with pytest.raises(InputError, match="shape"):
        psnr(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(InputError, match="NaN"):
        psnr(np.full((2, 2), np.nan), np.zeros((2, 2)))
    with pytest.raises(InputError, match="lo < hi"):
        psnr(np.zeros((2, 2)), np.zeros((2, 2)), window=(1, 0))


def test_default_window_and_evaluate_writes_json_and_png(tmp_path):
    from medrecon.volume import Volume

    rng = np.random.default_rng(1)
    ref = Volume(rng.uniform(-1000, 1000, (3, 16, 16)).astype(np.float32), np.eye(4), {"modality": "CT"})
    rec = Volume(ref.data + 20.0, np.eye(4), {})
    cl = Volume(ref.data + 100.0, np.eye(4), {})
    assert default_window(ref) == CT_WINDOW
    assert default_window(np.array([[1.0, 3.0]])) == (1.0, 3.0)
    assert default_window(Volume(np.full((1, 4, 4), 0.02), np.eye(4), {"modality": "CT"})) == pytest.approx((0.02, 1.02))
    res = evaluate(rec, ref, classical=cl, json_path=tmp_path / "m.json", png=tmp_path / "f.png")
    assert res["window"] == [-1000.0, 1000.0] and res["data_range"] == 2000.0
    assert res["psnr"] > res["classical"]["psnr"]
    assert len(res["ssim_per_slice"]) == 3
    assert json.loads((tmp_path / "m.json").read_text())["psnr"] == pytest.approx(res["psnr"])
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_psnr_of_torch_tensors_unclipped_and_per_slice():
    import torch

    from medrecon.metrics import psnr_slices

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 8, 8, generator=g, dtype=torch.float64)
    x = ref + 0.3 * torch.randn(3, 8, 8, generator=g, dtype=torch.float64)  # leaves the reference's range
    # unclipped, L = the reference's peak-to-peak range: the tuning convention (computed in float64)
    L = float(ref.max() - ref.min())
    expect = 10 * math.log10(L**2 / float(torch.mean((x - ref) ** 2)))
    assert psnr(x, ref, clip=False) == expect
    assert psnr(x.float(), ref.float(), clip=False) == pytest.approx(expect, abs=1e-4)
    assert psnr(x, ref) > expect  # clipping to the window removes the overshoot
    assert psnr(x, ref, (0, 1)) == psnr(x.numpy(), ref.numpy(), (0, 1))  # torch and NumPy agree
    assert psnr(torch.complex(ref, ref), torch.complex(ref, ref), clip=False) == math.inf
    # per slice on the network range [-1, 1] (L = 2), in the input's dtype, MSE floored at 1e-12
    xb, rb = (2 * v[:, None].float() - 1 for v in (x, ref))
    per = psnr_slices(xb, rb, (-1, 1), clip=False)
    assert per.dtype == torch.float32 and per.shape == (3,)
    assert torch.equal(per, 10 * torch.log10(4.0 / ((xb - rb) ** 2).flatten(1).mean(1).clamp(min=1e-12)))
    assert bool(torch.isfinite(psnr_slices(rb, rb, (-1, 1), clip=False)).all())
    with pytest.raises(InputError, match="shape"):
        psnr(torch.zeros(2, 2), torch.zeros(3, 3))
