"""B-mode display: FFT Hilbert envelope against scipy and a known envelope, log compression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medrecon_us.bmode import bmode, envelope, log_compress
from scipy.signal import hilbert

from medrecon.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gaussian_pulse(nz=512, nx=3, sigma=25.0, w=0.9):
    z = np.arange(nz, dtype=np.float64)[:, None] * np.ones((1, nx))
    g = np.exp(-0.5 * ((z - nz / 2) / sigma) ** 2)
    return g * np.cos(w * z + 0.3), g


@pytest.mark.parametrize("n", [255, 256])  # odd and even lengths (Nyquist handling)
def test_envelope_matches_scipy_hilbert(n):
    rng = np.random.default_rng(0)
    rf = rng.standard_normal((2, n, 7))
    ref = np.abs(hilbert(rf, axis=-2))
    np.testing.assert_allclose(envelope(rf), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(envelope(rf, axis=0), np.abs(hilbert(rf, axis=0)), rtol=1e-10, atol=1e-10)


def test_envelope_of_gaussian_modulated_sinusoid_is_the_gaussian():
    rf, g = _gaussian_pulse()
    env = envelope(rf)
    assert np.max(np.abs(env - g)) < 1e-6
    assert env.shape == rf.shape and rf[0, 0] == _gaussian_pulse()[0][0, 0]  # input untouched


def test_envelope_torch_in_torch_out_same_values_and_gradient():
    rf, g = _gaussian_pulse(nx=2)
    t = torch.tensor(rf, dtype=torch.float64, requires_grad=True)
    env = envelope(t)
    assert isinstance(env, torch.Tensor) and env.dtype == torch.float64
    np.testing.assert_allclose(env.detach().numpy(), envelope(rf), atol=1e-12)
    env.sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()
    assert envelope(torch.tensor(rf, dtype=torch.float32)).dtype == torch.float32


def test_complex_iq_envelope_is_magnitude():
    iq = np.array([[3 + 4j, 0], [1j, -2]])
    np.testing.assert_allclose(envelope(iq), [[5, 0], [1, 2]])


def test_log_compress_range_reference_and_per_frame_max():
    env = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 100.0)])
    env[:, 0, 0] *= 10.0
    b = log_compress(env, 30)
    # each frame's own max is 0 dB; the rest is 20 log10(1/10) = -20 dB in both frames
    np.testing.assert_allclose(b[:, 0, 0], 0.0)
    np.testing.assert_allclose(b[:, 1:, 1:], -20.0)
    # a shared reference puts frame 0 40 dB below frame 1 (clipped at -30)
    b2 = log_compress(env, 30, reference=1000.0)
    np.testing.assert_allclose(b2[1, 0, 0], 0.0)
    np.testing.assert_allclose(b2[0, 1, 1], -30.0)
    np.testing.assert_allclose(b2[1, 1, 1], -20.0)
    z = log_compress(np.zeros((3, 3)) + np.eye(3), 60)
    assert z.min() == -60.0 and z.max() == 0.0
    # an all-zero frame (e.g. an empty haze estimate) is black, not 0 dB
    zero = np.stack([np.zeros((3, 3)), np.ones((3, 3))])
    np.testing.assert_array_equal(log_compress(zero, 40)[0], -40.0)
    np.testing.assert_array_equal(log_compress(torch.tensor(zero), 40)[0].numpy(), -40.0)


def test_bmode_numpy_and_torch_agree():
    rf, _ = _gaussian_pulse()
    b = bmode(rf, 50)
    bt = bmode(torch.tensor(rf), 50)
    np.testing.assert_allclose(bt.numpy(), b, atol=1e-9)
    assert b.max() == 0.0 and b.min() == -50.0


@pytest.mark.parametrize("dr", [0, -10, float("nan"), "abc"])
def test_bad_dynamic_range(dr):
    with pytest.raises(InputError, match="dynamic range"):
        bmode(np.ones((4, 4)), dr)


def test_nan_rf_and_bad_reference():
    with pytest.raises(InputError, match="NaN"):
        envelope(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(InputError, match="reference"):
        log_compress(np.ones((2, 2)), 60, reference=0)
