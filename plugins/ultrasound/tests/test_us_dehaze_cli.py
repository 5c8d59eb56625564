"""``medrecon reconstruct --sampler dehaze`` as a real process: tissue to OUT, haze to OUT.haze.

Small synthetic case (2 frames of 32 x 32 beamformed RF, the shipped priors ``us-tissue`` and,
by default, ``us-haze``; 3 steps), so the test checks the plumbing -- measurement, engine,
entry-point priors, component outputs, data consistency, errors -- not the dehazing quality
(test_us_dehaze_real.py does that on real RF).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from medrecon_us.haze import TissueHaze

from medrecon.engine import component_path
from medrecon.measurement import Measurement, save_measurement

MEDRECON = Path(sys.executable).parent / "medrecon"
N = 32

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args):
    return subprocess.run([str(MEDRECON), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from medrecon_us.simulate import haze_image

    d = tmp_path_factory.mktemp("dehaze_cli")
    rng = np.random.default_rng(0)
    tissue = rng.standard_normal((2, N, N))
    y = tissue + np.stack([2 * haze_image((N, N), rng) for _ in range(2)])
    op = TissueHaze([N, N], pixel_mm=[0.0385, 0.149])
    m = Measurement(y=y.astype(np.float32), operator_spec=op.spec(), noise_std=0.0, volume_shape=(2, N, N),
                    affine=np.diag([0.149, 0.0385, 1.0, 1.0]), units="RF (arbitrary)", provenance={"source": "test"})
    save_measurement(m, d / "hazy.h5")
    return d, y


def test_reconstruct_writes_tissue_and_haze(case):
    from medrecon.io import load_volume

    d, y = case
    out = d / "out.nii.gz"
    p = run("reconstruct", d / "hazy.h5", "--sampler", "dehaze", "--prior", "us-tissue", "--param", "gamma=1e6",
            "--steps", 3, "--batch-size", 1, "-q", "-o", out)
    assert p.returncode == 0, p.stderr
    assert (d / "out.haze.nii.gz").is_file() and not (d / "out.nii.gz.partial").exists()
    assert "out.haze.nii.gz: the haze component" in p.stdout
    tissue, haze = load_volume(out), load_volume(d / "out.haze.nii.gz")
    assert tissue.shape == haze.shape == (2, N, N)
    assert np.allclose(tissue.affine, haze.affine)
    # the two components add up to the data (gamma = 1e6: 1e-6 of the residual is left)
    assert np.abs(tissue.data + haze.data - y).max() < 1e-3 * np.abs(y).max()
    assert np.abs(haze.data).max() > 0.05 * np.abs(y).max()  # the haze is not just zeros


def test_refusals(case):
    """An existing component output is refused before any work; single-image samplers refuse
    component images (InputError: exit code 2 in the CLI)."""
    import medrecon
    from medrecon.errors import InputError

    d, _ = case
    (d / "taken.haze.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="taken.haze.nii.gz.*already exists"):
        medrecon.reconstruct(d / "hazy.h5", "dehaze", "us-tissue", steps=1, progress=False,
                             output=d / "taken.nii.gz")
    assert not (d / "taken.nii.gz").exists() and not (d / "taken.nii.gz.partial").exists()
    with pytest.raises(InputError, match="components tissue, haze"):
        medrecon.reconstruct(d / "hazy.h5", "dds", "us-tissue", steps=1, progress=False)


def test_classical_keeps_the_hazy_image(case):
    """The no-dehazing baseline through the engine: tissue = y, haze = 0."""
    import medrecon

    d, y = case
    vol = medrecon.reconstruct(d / "hazy.h5", "classical", progress=False, output=d / "base.nii.gz")
    assert np.allclose(vol.data, y, atol=1e-5) and not vol.components["haze"].data.any()
    assert vol.meta["component"] == "tissue" and vol.components["haze"].meta["component"] == "haze"
    assert vol.meta["reconstruction"]["components"]["haze"] == str(d / "base.haze.nii.gz")


@pytest.mark.parametrize("out, expect", [
    ("a/out.nii.gz", "a/out.haze.nii.gz"), ("out.NII", "out.haze.NII"), ("series/", "series.haze"),
    ("series", "series.haze"),
])
def test_component_path(out, expect):
    assert component_path(out, "haze") == Path(expect)


def test_stopped_run_resumes_to_the_same_result(case, tmp_path):
    """Finished slices of a component image are checkpointed whole (tissue and haze) and resume."""
    import medrecon
    from medrecon.engine import RunStopped
    from medrecon.io import load_volume

    d, _ = case
    kw = dict(steps=2, seed=3, batch_size=1, progress=False)
    full = medrecon.reconstruct(d / "hazy.h5", "dehaze", "us-tissue", **kw)
    out = tmp_path / "r.nii.gz"
    with pytest.raises(RunStopped):
        medrecon.reconstruct(d / "hazy.h5", "dehaze", "us-tissue", output=out, _stop_after=1, **kw)
    assert not out.exists() and (tmp_path / "r.nii.gz.partial").is_dir()
    vol = medrecon.reconstruct(d / "hazy.h5", "dehaze", "us-tissue", output=out, resume=True, **kw)
    assert vol.meta["reconstruction"]["resumed_slices"] == 1
    assert np.allclose(load_volume(out).data, full.data, atol=1e-5)
    assert np.allclose(load_volume(tmp_path / "r.haze.nii.gz").data, full.components["haze"].data, atol=1e-5)
