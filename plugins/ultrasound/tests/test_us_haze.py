"""us.haze: conformance, the sum model and its adjoint, classical, measurements made from RF data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from medrecon_us.haze import TissueHaze, haze_measurement

import medrecon
from medrecon.errors import InputError
from medrecon.testing import check_operator, dot_product_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("params", [dict(shape=[8, 6]), dict(shape=[1, 5], pixel_mm=[0.0385, 0.149])])
def test_conformance(params):
    op = medrecon.get_operator("us.haze", **params)
    assert isinstance(op, TissueHaze)
    report = check_operator(op)
    assert report.passed, report.table()
    assert dot_product_error(op, torch.float64) <= 1e-14


def test_sum_adjoint_classical_and_components():
    op = TissueHaze([3, 4])
    assert op.domain_shape == (2, 3, 4) and op.range_shape == (3, 4)
    assert op.component_names == ("tissue", "haze")
    z = torch.randn(5, 2, 3, 4, dtype=torch.float64)
    keep = z.clone()
    y = op(z)
    assert torch.equal(y, z[:, 0] + z[:, 1]) and torch.equal(z, keep)
    assert torch.equal(op.adjoint(y), torch.stack([y, y], 1))
    c = op.classical(y)
    assert torch.equal(c[:, 0], y) and not c[:, 1].any()
    assert torch.allclose(op(c), y)  # the no-dehazing baseline is data consistent


@pytest.mark.parametrize("bad, msg", [
    (dict(shape=[4]), "shape must be"), (dict(shape=[4, 0]), "positive integers"),
    (dict(shape=[4, 2.5]), "positive integers"), (dict(shape=[4, 4], pixel_mm=[0.1, -1]), "pixel_mm"),
    (dict(shape=[4, 4], pixel_mm=[0.1]), "pixel_mm"),
])
def test_bad_parameters(bad, msg):
    with pytest.raises(InputError, match=msg):
        TissueHaze(**bad)


def _rf_measurement(frames=2):
    """A small us.planewave measurement of two point targets (RF channel data)."""
    from medrecon_us.simulate import planewave_params

    from medrecon.measurement import Measurement

    params = planewave_params((48, 24), [10.0, 11.8], [-1.8, 1.8], {"n_elements": 32})
    op = medrecon.get_operator("us.planewave", **params)
    x = torch.zeros(frames, 48, 24)
    x[:, 20, 12] = 1.0
    x[-1, 30, 5] = -2.0
    y = op(x).numpy()
    aff = np.diag([0.15, 0.0375, 1.0, 1.0])
    return Measurement(y=y, operator_spec=op.spec(), noise_std=0.0, volume_shape=(frames, 48, 24), affine=aff,
                       units="reflectivity", provenance={"source": "test"}), op, y


def test_haze_measurement_beamforms_each_frame():
    m, op, y = _rf_measurement()
    hm = haze_measurement(m)
    assert hm.operator_spec["name"] == "us.haze" and hm.y.shape == (2, 48, 24)
    assert hm.volume_shape == (2, 48, 24) and np.array_equal(hm.affine, m.affine)
    expect = op.classical(torch.from_numpy(y)).numpy()
    assert np.allclose(hm.y, expect, atol=1e-5 * np.abs(expect).max())
    # the targets are where they were put
    assert np.unravel_index(np.abs(hm.y[0]).argmax(), (48, 24)) == (20, 12)
    hz = hm.operator()
    assert hz.params["pixel_mm"] == pytest.approx([1.8 / 47, 3.6 / 23])
    one = haze_measurement(m, frames=[1])
    assert np.allclose(one.y[0], hm.y[1], atol=1e-6)


def test_haze_measurement_refuses_other_operators():
    from medrecon.measurement import Measurement

    m = Measurement(y=np.zeros((1, 4, 4), np.float32), operator_spec=TissueHaze([4, 4]).spec(), noise_std=0,
                    volume_shape=(1, 4, 4), affine=np.eye(4))
    with pytest.raises(InputError, match="us.planewave"):
        haze_measurement(m)


def test_haze_measurement_command(tmp_path):
    from medrecon.measurement import load_measurement, save_measurement

    m, _, _ = _rf_measurement(frames=1)
    save_measurement(m, tmp_path / "rf.h5")
    cmd = [sys.executable, "-m", "medrecon_us.haze", str(tmp_path / "rf.h5"), "-o", str(tmp_path / "hazy.h5")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert load_measurement(tmp_path / "hazy.h5").operator_spec["name"] == "us.haze"
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # exists: refused, one line
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "exists" in p.stderr
