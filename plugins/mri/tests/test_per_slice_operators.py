"""mri.sense with per-slice coil maps (S, C, ny, nx) and mri.cartesian with a per-slice phase
(S, ny, nx): slice-varying operators that pass the conformance kit; 3D maps stay shared."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medrecon_mri.coils import synthetic_coil_maps

import medrecon
from medrecon.errors import InputError
from medrecon.testing import check_operator

N, C, S = 16, 3, 3
MASK = {"kind": "random", "acceleration": 2, "center_fraction": 0.25, "seed": 0}


def _maps():
    return np.stack([np.roll(synthetic_coil_maps((N, N), C, radius=1.0 + 0.5 * s), s, axis=0) for s in range(S)])


@pytest.mark.parametrize("real_image", [False, True])
def test_sense_with_per_slice_maps_passes_the_kit(real_image):
    A = medrecon.get_operator("mri.sense", shape=N, coil_maps=_maps(), mask=MASK, real_image=real_image)
    assert A.slice_varying and A.n_slices == S and A.n_coils == C and A.range_shape == (C, N, N)
    report = check_operator(A)
    assert report.passed, report.table()
    assert report["for-slices"].status == "pass"


def test_sense_slice_k_uses_maps_k_and_3d_maps_are_shared():
    maps = _maps()
    A = medrecon.get_operator("mri.sense", shape=N, coil_maps=maps, mask=MASK)
    x = torch.randn(S, N, N, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    A = A.with_precision(True)
    y = A(x)
    for s in range(S):
        As = medrecon.get_operator("mri.sense", shape=N, coil_maps=maps[s], mask=MASK).with_precision(True)
        assert not As.slice_varying
        torch.testing.assert_close(y[s:s + 1], As(x[s:s + 1]))  # the 3D-map operator of slice s
        torch.testing.assert_close(A.for_slices([s]).classical(y[[s]]), As.classical(y[[s]]))
        torch.testing.assert_close(As(x), torch.cat([As(x[k:k + 1]) for k in range(S)]))  # 3D: any batch
    assert (y[1] - medrecon.get_operator("mri.sense", shape=N, coil_maps=maps[0], mask=MASK)
            .with_precision(True)(x[1:2])[0]).abs().max() > 0.1  # the slices' maps really differ


def test_cartesian_with_per_slice_phase():
    rng = np.random.default_rng(0)
    phase = rng.uniform(-3, 3, (S, N, N))
    A = medrecon.get_operator("mri.cartesian", shape=N, mask=MASK, phase=phase, real_image=True)
    assert A.slice_varying and A.n_slices == S
    report = check_operator(A)
    assert report.passed, report.table()
    x = torch.rand(S, N, N, dtype=torch.float64)
    A = A.with_precision(True)
    for s in range(S):
        As = medrecon.get_operator("mri.cartesian", shape=N, mask=MASK, phase=phase[s],
                                   real_image=True).with_precision(True)
        torch.testing.assert_close(A(x)[s:s + 1], As(x[s:s + 1]))


@pytest.mark.parametrize("maps,match", [(np.ones((S, C, N, N + 1)), "coil_maps must be shaped"),
                                        (np.ones((S, C, N, N, 1)), "coil_maps must be shaped"),
                                        (np.full((S, C, N, N), np.nan), "NaN")])
def test_bad_per_slice_maps_are_one_sentence(maps, match):
    with pytest.raises(InputError, match=match):
        medrecon.get_operator("mri.sense", shape=N, coil_maps=maps)
    A = medrecon.get_operator("mri.sense", shape=N, coil_maps=_maps())
    with pytest.raises(InputError, match="exactly those 3 slice"):
        A.classical(torch.zeros(2, C, N, N, dtype=torch.complex64))
    with pytest.raises(InputError, match="phase must be shaped"):
        medrecon.get_operator("mri.cartesian", shape=N, phase=np.zeros((S, N, N - 1)))
