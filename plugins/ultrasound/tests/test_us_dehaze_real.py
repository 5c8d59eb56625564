"""Dehazing real plane-wave RF (../shared/data/us-rf-planewave-wires, local evaluation only).

RFdata1.mat (Verasonics, ATL L7-4, Gammex wire phantom; RF1 2688 x 128 x 7 uint8, mean
removed) is imported with the ``us.rf`` importer on a 128 x 128 grid around the wire at about
(22.6, 1.8) mm, at the priors' pixel size (0.0385 x 0.149 mm), and beamformed with
``us.planewave`` ``classical()`` (delay-and-sum).  Synthetic haze from the training simulator
(laterally broad, RF band, depth-decaying) is added at RMS ``LEVEL`` times the speckle's, and
``dehaze`` runs with the shipped priors (``us-tissue``, ``us-haze``) through the engine.

gCNR of the wire (disc r = 0.5 mm) against the annulus 2..4 mm around it, on the envelope:
the dehazed tissue must beat the hazy image.  The KS statistic of the background envelope
(dehazed vs. the haze-free image) and the speckle size are reported.  Nothing derived from the
file is committed: the figure and the numbers go to ``tmp_path``; run with ``-s`` to print them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medrecon.measurement import Measurement

LEVEL = 8.0  # haze RMS / speckle RMS (about 2x the RMS of the whole region, wire included)
STEPS = 50
WIRE_MM = (22.6, 1.8)

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.shared_data]


@pytest.fixture(scope="module")
def wires(shared_data):
    from medrecon_us.haze import haze_measurement
    from medrecon_us.importer import RFImporter
    from medrecon_us.simulate import image_grid

    dz, dx = image_grid()
    z0, x0 = WIRE_MM[0] - 64 * dz, WIRE_MM[1] - 64 * dx
    rf = RFImporter().read(shared_data / "us-rf-planewave-wires" / "RFdata1.mat",
                           z_mm=[z0, z0 + 127 * dz], x_mm=[x0, x0 + 127 * dx], shape=[128, 128])
    return haze_measurement(rf), (dz, dx), (z0, x0)


def _regions(env, spacing):
    from medrecon_us.metrics import annulus_mask, circle_mask

    j, i = np.unravel_index(np.argmax(env), env.shape)
    c = (j * spacing[0], i * spacing[1])
    return circle_mask(env.shape, c, 0.5, spacing=spacing), annulus_mask(env.shape, c, 2.0, 4.0, spacing=spacing)


def test_dehaze_improves_wire_gcnr(wires, tmp_path):
    from medrecon_us.bmode import envelope
    from medrecon_us.metrics import gcnr, ks_statistic, speckle_size
    from medrecon_us.simulate import haze_image

    import medrecon

    hm, spacing, (z0, _) = wires
    clean = hm.y[0].astype(np.float64)
    env_clean = envelope(clean)
    target, background = _regions(env_clean, spacing)
    rms = float(np.sqrt(np.mean(clean[background] ** 2)))
    haze = LEVEL * rms * haze_image(clean.shape, np.random.default_rng(0), z_top_mm=z0, lateral_mm=2.0,
                                    decay_mm=20.0)
    hazy = (clean + haze).astype(np.float32)[None]
    m = Measurement(y=hazy, operator_spec=hm.operator_spec, noise_std=0.0, volume_shape=hm.volume_shape,
                    affine=hm.affine, units=hm.units, provenance={"source": "RFdata1.mat + synthetic haze"})
    vol = medrecon.reconstruct(m, "dehaze", "us-tissue", steps=STEPS, seed=0, progress=False)
    tissue, haze_est = vol.data[0].astype(np.float64), vol.components["haze"].data[0].astype(np.float64)
    assert np.isfinite(tissue).all() and np.isfinite(haze_est).all()

    env_hazy, env_tissue = envelope(hazy[0].astype(np.float64)), envelope(tissue)
    res = {
        "gcnr_clean": gcnr(env_clean, target, background),
        "gcnr_hazy": gcnr(env_hazy, target, background),
        "gcnr_dehazed": gcnr(env_tissue, target, background),
        "ks_hazy_vs_clean": ks_statistic(env_hazy[background], env_clean[background]),
        "ks_dehazed_vs_clean": ks_statistic(env_tissue[background], env_clean[background]),
        "speckle_mm_clean": speckle_size(env_clean, spacing, background),
        "speckle_mm_hazy": speckle_size(env_hazy, spacing, background),
        "speckle_mm_dehazed": speckle_size(env_tissue, spacing, background),
        "haze_corr": float(np.corrcoef(haze_est.ravel(), haze.ravel())[0, 1]),
        "steps": STEPS, "level": LEVEL, "seconds": vol.meta["reconstruction"]["seconds"],
    }
    (tmp_path / "dehaze_real.json").write_text(json.dumps(res, indent=1))
    _figure(tmp_path / "dehaze_real.png", env_clean, env_hazy, env_tissue, envelope(haze_est))
    print(json.dumps(res, indent=1))
    assert res["gcnr_hazy"] < res["gcnr_clean"] - 0.03  # the haze does hide the wire
    assert res["gcnr_dehazed"] > res["gcnr_hazy"], res
    assert res["ks_dehazed_vs_clean"] < res["ks_hazy_vs_clean"], res  # background speckle restored
    assert res["haze_corr"] > 0.5, res  # the haze estimate follows the haze that was added


def _figure(path, *envs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from medrecon_us.bmode import log_compress

    ref = float(envs[0].max())
    fig, ax = plt.subplots(1, 4, figsize=(12, 3.5))
    for a, e, title in zip(ax, envs, ("delay-and-sum", "with haze", "dehazed tissue", "haze estimate"),
                           strict=True):
        a.imshow(log_compress(e, 60.0, reference=ref), cmap="gray", vmin=-60, vmax=0, aspect=0.26)
        a.set_title(title)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

