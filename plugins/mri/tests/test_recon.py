"""Reconstruction with the MRI operators: zero-filled, SENSE-CG, the shared tv and dds samplers."""

import numpy as np
import pytest
import torch

import medrecon
from medrecon.metrics import psnr
from medrecon.samplers import get_sampler
from medrecon.samplers.tv import TV
from medrecon.streams import slice_generators

RANDOM = {"kind": "random", "center_fraction": 0.08, "seed": 0}


def _sense(n, R, real_image=False, n_coils=8, mask_kind="random"):
    mask = None if R == 1 else {**RANDOM, "kind": mask_kind, "acceleration": R}
    return medrecon.get_operator("mri.sense", shape=n, coil_maps={"synthetic": "birdcage", "n_coils": n_coils},
                                 mask=mask, real_image=real_image)


def test_classical_is_zero_filled(sl64c):
    x = torch.from_numpy(sl64c).to(torch.complex64)[None]
    assert _sense(64, 4).classical(_sense(64, 4)(x)).dtype == torch.complex64
    A = _sense(64, 1)
    y = A(x)
    zf = A.classical(y)
    assert zf.dtype == torch.complex64 and zf.shape == (1, 64, 64)
    coils = A.zero_filled_coils(y)  # fully sampled, RSS-normalised maps: |coil combination| = RSS
    np.testing.assert_allclose(zf.abs().numpy(), (coils.abs() ** 2).sum(1).sqrt().numpy(), rtol=1e-4, atol=1e-5)
    Ar = _sense(64, 4, real_image=True)
    rss = Ar.classical(Ar(torch.from_numpy(np.abs(sl64c)).float()[None]))
    assert rss.dtype == torch.float32 and float(rss.min()) >= 0
    C = medrecon.get_operator("mri.cartesian", shape=64, real_image=True)
    xr = torch.from_numpy(np.abs(sl64c)).float()[None]
    np.testing.assert_allclose(C.classical(C(xr)).numpy(), xr.numpy(), atol=1e-5)


def test_sense_cg_unfolds_what_zero_filling_cannot(sl64c):
    A = _sense(48, 3, n_coils=6, mask_kind="equispaced_fraction").with_precision(True)
    x = torch.from_numpy(sl64c[8:56, 8:56])[None]
    y = A(x)
    zf, sense = A.classical(y), A.sense(y, iters=40)
    assert sense.dtype == torch.complex128
    assert psnr(sense, x, clip=False) > 35 and psnr(sense, x, clip=False) > psnr(zf, x, clip=False) + 15
    s2 = get_sampler("sense", iters=40, lam=0).sample(y, A)
    assert torch.allclose(s2, sense)
    # batch independence: slice results do not depend on the batch
    yb = torch.cat([y, 2 * y])
    sb = A.sense(yb, iters=40)
    assert torch.allclose(sb[0], sense[0], atol=1e-9) and torch.allclose(sb[1], 2 * sense[0], atol=1e-8)


@pytest.mark.parametrize("name, real_image", [("mri.cartesian", True), ("mri.sense", False)])
def test_tv_beats_zero_filled_at_4x(sl64, name, real_image):
    from skimage.transform import resize

    extra = {"coil_maps": {"synthetic": "birdcage", "n_coils": 4}} if name == "mri.sense" else {}
    A = medrecon.get_operator(name, shape=48, mask={**RANDOM, "acceleration": 4}, real_image=real_image, **extra)
    x = torch.from_numpy(resize(sl64, (48, 48), anti_aliasing=True)).float()[None]
    y = A(x if real_image else x.to(torch.complex64))
    gen = torch.Generator().manual_seed(0)
    y = y + 0.002 * torch.randn(y.shape, dtype=y.dtype, generator=gen) * A.mask
    zf = A.classical(y)
    tv = TV(lam_rel=0.01).sample(y, A, steps=100)
    assert tv.dtype == A.domain_dtype() and tv.shape == x.shape
    p_zf, p_tv = psnr(zf, x, clip=False), psnr(tv, x, clip=False)
    assert p_tv > p_zf + 3, (p_zf, p_tv)


@pytest.fixture(scope="module")
def tiny_mr_prior():
    from medrecon.priors.model import DiffusionPrior, default_config

    prior = DiffusionPrior(default_config("mr", image_size=32, preset="tiny"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # MONAI zero-initialises the output layer (eps = 0): give every weight a value
        for p in prior.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return prior.eval().requires_grad_(False)


@pytest.mark.parametrize("name, real_image", [("mri.sense", True), ("mri.sense", False), ("mri.cartesian", True)])
def test_dds_runs_with_a_random_prior(tiny_mr_prior, sl64, name, real_image):
    extra = {"coil_maps": {"synthetic": "birdcage", "n_coils": 4}} if name == "mri.sense" else {}
    A = medrecon.get_operator(name, shape=[32, 24], mask={**RANDOM, "acceleration": 4}, real_image=real_image,
                              **extra)
    x = torch.rand(2, 32, 24)
    y = A(x)
    prior = tiny_mr_prior.with_intensity(0.0, 1.0)
    out = get_sampler("dds").sample(y, A, prior, steps=3, generators=slice_generators(0, 2))
    assert out.shape == (2, 32, 24) and out.dtype == A.domain_dtype()
    assert torch.isfinite(out.abs() if out.is_complex() else out).all()


def test_engine_reconstructs_an_mri_measurement(tmp_path, tiny_mr_prior):
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    vol = np.stack([resize(shepp_logan_phantom(), (32, 32)) * (k + 1) for k in range(3)]).astype(np.float32)
    v = medrecon.Volume(vol, np.diag([1.0, 1.0, 2.0, 1.0]), {"modality": "MR"})
    m = medrecon.simulate(v, "mri.sense", {"coil_maps": {"synthetic": "birdcage", "n_coils": 4},
                                           "mask": {**RANDOM, "acceleration": 4}, "real_image": True})
    path = medrecon.save_measurement(m, tmp_path / "m.h5")
    a = medrecon.reconstruct(path, "dds", tiny_mr_prior, steps=2, batch_size=1, progress=False).data
    b = medrecon.reconstruct(path, "dds", tiny_mr_prior, steps=2, batch_size=3, progress=False).data
    assert a.shape == (3, 32, 32) and np.allclose(a, b, atol=1e-4 * np.abs(a).max())
    s = medrecon.reconstruct(path, "sense", progress=False).data
    assert psnr(torch.from_numpy(s), torch.from_numpy(vol), clip=False) > 25
