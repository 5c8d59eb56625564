"""ct.dxchange: Data Exchange HDF5 import (synthetic file, and the real tooth projections)."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from medrecon_ct.dxchange import DataExchangeImporter

import medrecon
from medrecon.errors import FileFormatError, InputError

OUT = Path(__file__).parent / "_out"


def _write(path, counts, white, dark, theta, units="degrees"):
    with h5py.File(path, "w") as f:
        f["exchange/data"] = counts.astype(np.float32)
        f["exchange/data_white"] = white.astype(np.float32)
        f["exchange/data_dark"] = dark.astype(np.float32)
        f["exchange/theta"] = theta
        f["exchange/theta"].attrs["units"] = units


@pytest.fixture()
def synthetic(tmp_path):
    """Two detector rows of a 48x48 object, rotation axis at detector pixel 36.3 of 80."""
    n, n_det, c = 48, 80, 36.3
    theta = np.linspace(0, 180, 90, endpoint=False)
    op = medrecon.get_operator("ct.parallel", shape=n, angles=theta.tolist(), n_det=n_det,
                               det_offset=(n_det - 1) / 2 - c).with_precision(True)
    yy, xx = np.mgrid[:n, :n]
    x = np.stack([((yy - 20) ** 2 + (xx - 28) ** 2 < 120) * 0.03 + ((yy - 30) ** 2 + (xx - 15) ** 2 < 30) * 0.05,
                  ((yy - 24) ** 2 + (xx - 24) ** 2 < 200) * 0.02])
    x = torch.from_numpy(x.astype(np.float64))
    y = op(x).numpy()  # (rows, angles, det)
    flat, dark = 1000.0, 10.0
    counts = np.transpose(flat * np.exp(-y) + dark, (1, 0, 2))  # (angles, rows, det)
    path = tmp_path / "scan.h5"
    _write(path, counts, np.full((3, 2, n_det), flat + dark), np.full((2, 2, n_det), dark), theta)
    return path, x, y, c


def test_can_read(synthetic, tmp_path):
    path = synthetic[0]
    assert DataExchangeImporter.can_read(path)
    assert DataExchangeImporter.name == "ct.dxchange"
    (tmp_path / "x.txt").write_text("hello")
    assert not DataExchangeImporter.can_read(tmp_path / "x.txt")
    assert not DataExchangeImporter.can_read(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    assert not DataExchangeImporter.can_read(tmp_path / "other.h5")
    from medrecon import registry

    assert registry.load("medrecon.importers", "ct.dxchange") is DataExchangeImporter


def test_read_normalises_and_finds_center(synthetic):
    path, x, y, c = synthetic
    yi, A, meta = DataExchangeImporter().read(path, shape=48)
    assert abs(meta["center"] - c) < 0.25, meta["center"]
    assert yi.dtype == torch.float32 and yi.shape == (2, 90, A.range_shape[1])
    lo, hi = meta["detector_bins_kept"]
    assert hi - lo == A.range_shape[1] and (lo + hi - 1) / 2 == round(meta["center"])
    np.testing.assert_allclose(yi.numpy(), y[:, :, lo:hi], atol=1e-4)  # flat/dark + -log
    # the returned operator describes the data: with the true centre it reproduces it
    y1, A1, _ = DataExchangeImporter().read(path, row=1, center=c, shape=48)
    assert y1.shape[0] == 1
    sim = A1.with_precision(True)(x[1:2]).numpy()
    assert np.linalg.norm(sim - y1.numpy()) / np.linalg.norm(sim) < 1e-4
    # no crop: every bin kept, the whole shift in det_offset
    y2, A2, m2 = DataExchangeImporter().read(path, row=1, center=c, crop=False, shape=48)
    assert y2.shape[-1] == 80
    sim2 = A2.with_precision(True)(x[1:2]).numpy()
    assert np.linalg.norm(sim2 - y2.numpy()) / np.linalg.norm(sim2) < 1e-4


def test_read_bad_input(synthetic, tmp_path):
    path = synthetic[0]
    with pytest.raises(InputError, match="row must be"):
        DataExchangeImporter().read(path, row=5)
    with pytest.raises(InputError, match="center must be"):
        DataExchangeImporter().read(path, center=500)
    with pytest.raises(InputError, match="pixel_size must be finite"):
        DataExchangeImporter().read(path, pixel_size=float("nan"))
    with pytest.raises(FileFormatError, match="no such file"):
        DataExchangeImporter().read(tmp_path / "missing.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(FileFormatError, match="not a readable HDF5"):
        DataExchangeImporter().read(tmp_path / "bad.h5")


def edge_sharpness(img: np.ndarray) -> float:
    """99.5th percentile of the gradient magnitude (Sobel, after a 1-pixel Gaussian)
    divided by the 99th percentile of the intensity: how steep the strongest edges
    are relative to the contrast.  A wrong rotation centre doubles and smears edges."""
    from scipy.ndimage import gaussian_filter, sobel

    s = gaussian_filter(img.astype(np.float64), 1.0)
    g = np.hypot(sobel(s, 0), sobel(s, 1))
    return float(np.percentile(g, 99.5) / np.percentile(s, 99))


@pytest.mark.shared_data
def test_tooth_reconstruction(shared_data):
    path = shared_data / "ct-projections-tooth" / "tooth.h5"
    if not path.is_file():
        pytest.skip("tooth.h5 not present")
    assert DataExchangeImporter.can_read(path)
    imp = DataExchangeImporter()
    y, A, meta = imp.read(path, row=0, shape=320)
    assert 294.0 < meta["center"] < 298.0, meta["center"]  # the data set's README: near pixel 296
    assert y.shape == (1, 181, A.range_shape[1]) and torch.isfinite(y).all()
    rec = A.classical(y)[0].numpy()
    recs = {0: rec}
    for dc in (-5, 5):
        y2, A2, _ = imp.read(path, row=0, center=meta["center"] + dc, shape=320)
        recs[dc] = A2.classical(y2)[0].numpy()
    sharp = {k: edge_sharpness(v) for k, v in recs.items()}
    assert sharp[0] > 1.02 * max(sharp[-5], sharp[5]), sharp
    neg = {k: float(-v[v < 0].sum()) for k, v in recs.items()}  # wrong centre: more negative streaks
    assert neg[0] < min(neg[-5], neg[5]), neg

    # the tooth: a compact object of sensible size near the middle of the slice
    from scipy.ndimage import gaussian_filter, label
    from skimage.filters import threshold_otsu

    s = gaussian_filter(rec, 2.0)
    mask = s > threshold_otsu(s)
    lab, n = label(mask)
    biggest = lab == (1 + int(np.argmax(np.bincount(lab.ravel())[1:]))) if n else mask
    frac = biggest.mean()
    assert 0.05 < frac < 0.6, frac
    cy, cx = np.argwhere(biggest).mean(0)
    assert abs(cy - 160) < 60 and abs(cx - 160) < 60, (cy, cx)
    inside, outside = rec[biggest].mean(), rec[~mask].mean()
    assert inside > 5 * abs(outside), (inside, outside)

    OUT.mkdir(exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    vmin, vmax = np.percentile(rec, [0.5, 99.8])
    for ax, k in zip(axes, (0, -5, 5), strict=True):
        ax.imshow(recs[k], cmap="gray", vmin=vmin, vmax=vmax)
        title = f"centre {meta['center'] + k:.2f}" + (" (estimated)" if k == 0 else f" ({k:+d} px)")
        ax.set_title(f"{title}\nedge sharpness {sharp[k]:.3f}")
        ax.axis("off")
    fig.suptitle("tooth.h5 row 0: FBP (ram-lak), 181 views, ct.dxchange + ct.parallel")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(OUT / "tooth_fbp.png", dpi=90)
    plt.close(fig)
    plt.imsave(OUT / "tooth_fbp_estimated_centre.png", rec, cmap="gray", vmin=vmin, vmax=vmax)
