"""us.planewave on real plane-wave RF (Verasonics, L7-4, wire phantom): delay-and-sum shows the wires.

Skipped where ../shared/data is absent.  The data is for local evaluation only: nothing
derived from it is written outside pytest's tmp_path.
"""

import numpy as np
import pytest
import torch
from medrecon_us.bmode import bmode, envelope
from scipy.ndimage import maximum_filter

import medrecon

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DZ, DX = 0.05, 0.1  # mm: below a quarter wavelength (0.077 mm) axially, so the RF image is not aliased


@pytest.fixture(scope="module")
def wires(shared_data):
    """RF (1, 7, 128, 2688) float32 with the mean removed, and the operator parameters from param1."""
    from scipy.io import loadmat

    d = loadmat(shared_data / "us-rf-planewave-wires" / "RFdata1.mat")
    rf = d["RF1"].astype(np.float64)
    rf -= rf.mean()
    p = d["param1"][0, 0]
    params = dict(n_elements=rf.shape[1], pitch_mm=float(p["pitch"].squeeze()) * 1e3,
                  angles_deg=np.degrees(p["TXangle"].ravel()).tolist(), fs_hz=float(p["fs"].squeeze()),
                  n_samples=rf.shape[0], c=float(p["c"].squeeze()))
    y = torch.from_numpy(np.ascontiguousarray(rf.transpose(2, 1, 0), dtype=np.float32))[None]
    return y, params


def grid(z_mm, x_mm):
    nz = int(round((z_mm[1] - z_mm[0]) / DZ)) + 1
    nx = int(round((x_mm[1] - x_mm[0]) / DX)) + 1
    return dict(shape=[nz, nx], z_mm=list(z_mm), x_mm=list(x_mm))


def lateral_fwhm(env: np.ndarray, step: float) -> float:
    """Full width at half maximum (mm) of the lateral profile through the envelope's peak."""
    iz, ix = np.unravel_index(int(np.argmax(env)), env.shape)
    prof = env[iz]
    half = prof[ix] / 2
    left = ix
    while left > 0 and prof[left] > half:
        left -= 1
    right = ix
    while right < len(prof) - 1 and prof[right] > half:
        right += 1
    assert prof[left] <= half and prof[right] <= half, "the profile does not fall to half inside the window"
    xl = left + (half - prof[left]) / (prof[left + 1] - prof[left])
    xr = right - 1 + (prof[right - 1] - half) / (prof[right - 1] - prof[right])
    return float((xr - xl) * step)


def test_delay_and_sum_shows_the_wires(wires, tmp_path, record_property):
    y, params = wires
    g = grid((5.0, 45.0), (-12.0, 12.0))
    A = medrecon.get_operator("us.planewave", **params, **g)
    assert A.range_shape == tuple(y.shape[1:])
    img = A.classical(y)[0].numpy()
    env = envelope(img)
    z = np.linspace(5.0, 45.0, g["shape"][0])
    x = np.linspace(-12.0, 12.0, g["shape"][1])
    background = float(np.median(env))  # speckle: the wires cover a tiny fraction of the image
    peaks = (env == maximum_filter(env, size=(41, 21))) & (env > 30 * background)  # > 29.5 dB above
    found = [(float(z[i]), float(x[j])) for i, j in zip(*np.nonzero(peaks), strict=True)]
    assert len(found) >= 4, found
    # the vertical row of wires at x = 1.8 mm: one at about 22.6 mm and one at about 42.3 mm depth
    for depth in (22.6, 42.3):
        assert any(abs(zf - depth) < 1.0 and abs(xf - 1.8) < 0.6 for zf, xf in found), found
    # the brightest wires stand far above the speckle
    assert float(env.max()) > 100 * background  # 40 dB
    b = bmode(img, dynamic_range_db=50)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 6))
    ax.imshow(b, cmap="gray", extent=[x[0], x[-1], z[-1], z[0]], vmin=-50, vmax=0)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("z (mm)")
    fig.savefig(tmp_path / "wires_bmode.png", dpi=80)
    plt.close(fig)
    assert (tmp_path / "wires_bmode.png").stat().st_size > 1000
    record_property("wires_found", len(found))


@pytest.mark.parametrize("apodization, limit", [("boxcar", 1.0), ("hann", 1.5)])
def test_lateral_fwhm_of_one_wire(wires, apodization, limit, record_property):
    """The wire at about (x 1.8 mm, z 42.3 mm): lateral FWHM of the envelope (about lambda F = 0.46 mm
    for an unapodised aperture, wider with the Hann weights applied in forward and adjoint)."""
    y, params = wires
    g = grid((39.0, 46.0), (-2.0, 6.0))
    A = medrecon.get_operator("us.planewave", **params, **g, apodization=apodization)
    env = envelope(A.classical(y)[0].numpy())
    fwhm = lateral_fwhm(env, DX)
    print(f"lateral FWHM of the wire at 42 mm depth ({apodization} apodisation): {fwhm:.2f} mm")
    record_property(f"lateral_fwhm_mm_{apodization}", fwhm)
    assert 0.3 < fwhm < limit


def test_first_element_time_reference_focuses_this_recording(wires):
    """Verasonics starts the clock when the first element fires: with that reference the 7 steered
    transmits add coherently; with the centre reference the +-1.5 degree ones are off by up to
    6 samples (1.5 periods) and the wire peak collapses."""
    y, params = wires
    g = grid((20.0, 25.0), (-1.0, 4.5))
    peak = {}
    for ref in ("first_element", "center"):
        A = medrecon.get_operator("us.planewave", **params, **g, tx_reference=ref)
        peak[ref] = float(envelope(A.classical(y)[0].numpy()).max())
    assert peak["first_element"] > 2.5 * peak["center"], peak
