"""us.planewave: conformance kit, pulse and delays, point-target focusing, bad parameters."""

import json
import math

import numpy as np
import pytest
import torch
from medrecon_us.geometry import element_positions, receive_apodization, transmit_delays
from medrecon_us.pulse import convolve_time, correlate_time, gaussian_pulse

import medrecon
from medrecon.errors import InputError
from medrecon.testing import check_operator, dot_product_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(shape=[24, 16], z_mm=[5, 15], x_mm=[-3, 3], n_elements=16, pitch_mm=0.3, angles_deg=[-5, 0, 5],
             fs_hz=20e6, n_samples=400)


def point_geometry(**over):
    """64 elements, 3 transmits, a 20 x 10 mm grid at 0.25 mm."""
    p = dict(shape=[81, 41], z_mm=[10, 30], x_mm=[-5, 5], n_elements=64, pitch_mm=0.3, angles_deg=[-10, 0, 10],
             fs_hz=20e6, n_samples=1024)
    p.update(over)
    return p


@pytest.mark.parametrize(
    "params",
    [
        SMALL,
        dict(SMALL, angles_deg=[7.5], apodization="boxcar", tx_reference="first_element", t0_s=2e-6, c=1480,
             n_samples=300),
        # 1-pixel-wide column, few samples (delays fall off the record), tiny chunks (one transmit per step)
        dict(shape=[10, 1], z_mm=[2, 40], x_mm=[1, 1], n_elements=5, pitch_mm=0.5, angles_deg=[-3, 0, 3, 6],
             fs_hz=10e6, n_samples=200, f0_hz=3e6, bandwidth=0.9, f_number=0.8, chunk=7),
    ],
)
def test_conformance(params):
    op = medrecon.get_operator("us.planewave", **params)
    assert type(op).__module__ == "medrecon_us.planewave"
    report = check_operator(op)
    assert report.passed, report.table()
    assert dot_product_error(op, torch.float64) <= 1e-12
    assert json.loads(json.dumps(op.spec()))["params"]["angles_deg"] == [float(a) for a in params["angles_deg"]]


def test_shapes_and_chunking_do_not_change_results():
    op = medrecon.get_operator("us.planewave", **SMALL)
    assert op.domain_shape == (24, 16) and op.range_shape == (3, 16, 400)
    one = medrecon.get_operator("us.planewave", **dict(SMALL, chunk=97))  # chunk edges inside an element
    x = torch.randn(2, 24, 16, dtype=torch.float64)
    y = op(x)
    assert torch.allclose(y, one(x), atol=1e-12)
    assert torch.allclose(op.adjoint(y), one.adjoint(y), atol=1e-9)
    assert torch.equal(x, x.clone())  # input untouched (no in-place ops)


def test_pulse_is_scipy_gausspulse_and_correlation_is_adjoint():
    from scipy.signal import gausspulse

    h = gaussian_pulse(5e6, 0.6, 20e6)
    k = (len(h) - 1) // 2
    assert np.allclose(h, gausspulse(np.arange(-k, k + 1) / 20e6, fc=5e6, bw=0.6, bwr=-6))
    # -6 dB fractional bandwidth: |H| at f0 (1 +- B/2) is 10^(-6/20) of the peak (dense sampling)
    fs = 400e6
    hd = gaussian_pulse(5e6, 0.6, fs)
    f = np.fft.rfftfreq(1 << 16, 1 / fs)
    H = np.abs(np.fft.rfft(hd, 1 << 16))
    for fe in (5e6 * 0.7, 5e6 * 1.3):
        assert abs(np.interp(fe, f, H) / H.max() - 10 ** (-6 / 20)) < 2e-3
    ht = torch.from_numpy(h)
    u, v = torch.randn(3, 50, dtype=torch.float64), torch.randn(3, 50, dtype=torch.float64)
    assert abs(float((convolve_time(u, ht) * v).sum() - (u * correlate_time(v, ht)).sum())) < 1e-10
    d = torch.zeros(1, 41, dtype=torch.float64)
    d[0, 20] = 1
    assert torch.allclose(convolve_time(d, ht)[0, 20 - k : 21 + k], ht)  # impulse response is the pulse, centred


def test_delays_and_apodization():
    z = torch.tensor([0.01, 0.02], dtype=torch.float64)
    x = torch.tensor([-0.002, 0.0, 0.004], dtype=torch.float64)
    th = math.radians(10)
    tc = transmit_delays([th], z, x, 1540.0, n_elements=128, pitch_m=3e-4)
    assert torch.allclose(tc[0, 1, 2], torch.tensor((0.02 * math.cos(th) + 0.004 * math.sin(th)) / 1540, dtype=tc.dtype))
    tf = transmit_delays([th, -th], z, x, 1540.0, n_elements=128, pitch_m=3e-4, reference="first_element")
    shift = 127 * 3e-4 * math.sin(th) / 2 / 1540
    assert torch.allclose(tf[0] - tc[0], torch.full_like(tc[0], shift))
    # the first-firing edge element (x_0 for +theta) sees the wavefront at t = 0 on the probe face
    xe = element_positions(128, 3e-4, dtype=torch.float64)
    t_edge = transmit_delays([th, -th], torch.zeros(1, dtype=torch.float64), xe[[0, -1]], 1540.0, n_elements=128,
                             pitch_m=3e-4, reference="first_element")
    assert abs(float(t_edge[0, 0, 0])) < 1e-15 and abs(float(t_edge[1, 0, 1])) < 1e-15
    w = receive_apodization(xe, z, x, 1.5, "hann")
    half = z / 3  # aperture half-width z / (2 F)
    inside = (x[None, None, :] - xe[:, None, None]).abs() <= half[None, :, None]
    assert torch.equal(w > 0, inside & (w > 0)) and float(w.max()) <= 1.0
    assert torch.equal(receive_apodization(xe, z, x, 1.5, "boxcar") > 0, inside)


@pytest.mark.parametrize("iz, ix", [(40, 25), (12, 5), (70, 33)])
def test_point_scatterer_focuses_at_its_pixel(iz, ix):
    A = medrecon.get_operator("us.planewave", **point_geometry())
    x = torch.zeros(1, 81, 41, dtype=torch.float64)
    x[0, iz, ix] = 2.0
    y = A(x)
    assert float(y.abs().max()) > 0
    im = A.classical(y)[0]
    pz, px = np.unravel_index(int(im.abs().argmax()), im.shape)
    assert (pz, px) == (iz, ix)
    assert abs(float(im[iz, ix]) - 2.0) < 1e-9  # classical() is normalised by diag(A^T A)


@pytest.mark.parametrize("reference", ["center", "first_element"])
def test_point_scatterer_echo_arrives_at_round_trip_time(reference):
    """Channel data of one reflector: each channel's peak sits at (tau_tx + tau_rx - t0) fs."""
    p = point_geometry(angles_deg=[0.0, 12.0], apodization="boxcar", f_number=2.0, t0_s=1e-6, tx_reference=reference)
    A = medrecon.get_operator("us.planewave", **p)
    x = torch.zeros(1, 81, 41, dtype=torch.float64)
    x[0, 60, 30] = 1.0
    y = A(x)[0]
    zp, xp = 10e-3 + 60 * 0.25e-3, -5e-3 + 30 * 0.25e-3
    xe = (np.arange(64) - 31.5) * 0.3e-3
    for a, th in enumerate(np.radians([0.0, 12.0])):
        tau = (zp * np.cos(th) + xp * np.sin(th) + np.hypot(xp - xe, zp)) / 1540 - 1e-6
        if reference == "first_element":  # time zero when the edge element fires: later by half the aperture
            tau += 63 * 0.3e-3 * abs(np.sin(th)) / 2 / 1540
        heard = np.abs(xp - xe) <= zp / 4  # f-number 2
        peaks = y[a].abs().argmax(-1).numpy()
        assert 0 < heard.sum() < 64 and np.all(np.abs(peaks[heard] - tau[heard] * 20e6) <= 1.0)
        assert float(y[a][~heard].abs().max()) == 0.0


def reference_das(v, p):
    """Independent NumPy delay-and-sum of channels ``v`` (n_angles, n_elements, n_samples), pixel by
    pixel and element by element, from the formulas of the module docstrings."""
    nz, nx = p["shape"]
    zs = np.linspace(*p["z_mm"], nz) * 1e-3
    xs = np.linspace(*p["x_mm"], nx) * 1e-3
    ne, pitch, c, fs, fnum = p["n_elements"], p["pitch_mm"] * 1e-3, p["c"], p["fs_hz"], p["f_number"]
    nt = v.shape[-1]
    out = np.zeros((nz, nx))
    for a, th in enumerate(np.radians(p["angles_deg"])):
        edge = (ne - 1) * pitch * abs(np.sin(th)) / 2  # first_element time reference
        for e in range(ne):
            xe = (e - (ne - 1) / 2) * pitch
            for iz, z in enumerate(zs):
                for ix, x in enumerate(xs):
                    r = abs(x - xe) / (z / (2 * fnum))
                    if r > 1:
                        continue
                    s = ((z * np.cos(th) + x * np.sin(th) + edge + np.hypot(x - xe, z)) / c - p["t0_s"]) * fs
                    i = int(np.floor(s))
                    f = s - i
                    val = sum(wt * v[a, e, k] for k, wt in ((i, 1 - f), (i + 1, f)) if 0 <= k < nt)
                    out[iz, ix] += np.cos(np.pi * r / 2) ** 2 * val
    return out


def test_adjoint_is_delay_and_sum_of_the_matched_filtered_channels():
    p = dict(shape=[6, 5], z_mm=[4, 9], x_mm=[-1, 1.5], n_elements=8, pitch_mm=0.3, angles_deg=[-6, 0, 9],
             fs_hz=20e6, n_samples=160, c=1500.0, t0_s=0.5e-6, f_number=1.0, f0_hz=5e6, bandwidth=0.6)
    A = medrecon.get_operator("us.planewave", **p)
    y = torch.randn(1, 3, 8, 160, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    h = gaussian_pulse(5e6, 0.6, 20e6)
    v = np.stack([[np.convolve(ch, h[::-1], mode="same") for ch in chans] for chans in y[0].numpy()])
    ref = reference_das(v, p)
    got = A.adjoint(y)[0].numpy()
    assert np.abs(ref).max() > 0
    assert np.allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_classical_scale_does_not_depend_on_transmits_and_elements():
    x = torch.zeros(1, 81, 41, dtype=torch.float64)
    x[0, 30, 20] = 1.0
    vals = []
    for over in (dict(), dict(angles_deg=[0.0]), dict(angles_deg=list(np.linspace(-12, 12, 9))), dict(n_elements=96)):
        A = medrecon.get_operator("us.planewave", **point_geometry(**over))
        vals.append(float(A.classical(A(x))[0, 30, 20]))
    assert np.allclose(vals, 1.0, atol=1e-9)


def test_float32_and_batch_of_frames():
    A = medrecon.get_operator("us.planewave", **point_geometry())
    x = torch.randn(3, 81, 41)
    y = A(x)
    assert y.dtype == torch.float32 and y.shape == (3, 3, 64, 1024)
    y64 = A(x.double())
    assert float((y.double() - y64).norm() / y64.norm()) < 2e-4  # float32 delays: ~1e-4 sample rounding
    assert A.classical(y).shape == (3, 81, 41)


@pytest.mark.parametrize(
    "over, words",
    [
        (dict(c=-1540), "c (speed of sound"),
        (dict(c=float("nan")), "c (speed of sound"),
        (dict(fs_hz=0), "fs_hz"),
        (dict(fs_hz=8e6), "below half the sampling rate"),
        (dict(f_number=-1), "f_number"),
        (dict(angles_deg=[]), "non-empty list"),
        (dict(angles_deg=[0, 95]), "angles_deg"),
        (dict(shape=[81]), "shape must be [nz, nx]"),
        (dict(shape=[0, 41]), "shape[0]"),
        (dict(z_mm=[30, 10]), "z_mm must increase"),
        (dict(z_mm=[-1, 10]), "depth >= 0"),
        (dict(n_elements=2.5), "n_elements"),
        (dict(pitch_mm=0), "pitch_mm"),
        (dict(bandwidth=0), "bandwidth"),
        (dict(apodization="tukey"), "apodization"),
        (dict(tx_reference="edge"), "tx_reference"),
        (dict(n_samples=0), "n_samples"),
    ],
)
def test_bad_parameters_raise_one_sentence(over, words):
    with pytest.raises(InputError) as info:
        medrecon.get_operator("us.planewave", **point_geometry(**over))
    msg = str(info.value)
    assert words in msg and "\n" not in msg


def test_shape_mismatch_raises():
    A = medrecon.get_operator("us.planewave", **SMALL)
    with pytest.raises(InputError, match=r"measurement batch shaped \(B, 3, 16, 400\)"):
        A.classical(torch.zeros(1, 3, 16, 399))
    with pytest.raises(InputError, match="image batch"):
        A(torch.zeros(24, 16))
