"""Bad input raises one-sentence InputErrors."""

import pytest
import torch

import medrecon
from medrecon.errors import InputError


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("ct.parallel", dict(shape=16, n_views=0), "n_views must be at least 1"),
        ("ct.parallel", dict(shape=16, n_views=2.5), "n_views must be a positive integer"),
        ("ct.parallel", dict(shape=16, pixel_size=float("nan")), "pixel_size must be finite"),
        ("ct.parallel", dict(shape=16, pixel_size=-1), "pixel_size must be positive"),
        ("ct.parallel", dict(shape=16, det_spacing=float("inf")), "det_spacing must be finite"),
        ("ct.parallel", dict(shape=16, det_offset=float("nan")), "det_offset must be finite"),
        ("ct.parallel", dict(shape=16, angles=[0, float("nan")]), "angles must be finite"),
        ("ct.parallel", dict(shape=16, angles=[]), "at least one angle"),
        ("ct.parallel", dict(shape=16, n_views=3, angles=[0, 1]), "disagrees"),
        ("ct.parallel", dict(shape=16, arc=[0, float("inf")]), "arc must be two different finite"),
        ("ct.parallel", dict(shape=[16, 0]), "shape must be"),
        ("ct.parallel", dict(shape=16, n_det=0), "n_det must be a positive integer"),
        ("ct.parallel", dict(shape=16, filter="hamm"), "did you mean 'hamming'"),
        ("ct.parallel", dict(shape=16, filter="shep-logan"), "did you mean 'shepp-logan'"),
        ("ct.fan", dict(shape=16, source_to_center=-100.0), "source_to_center must be positive"),
        ("ct.fan", dict(shape=16, source_to_center=100.0, source_to_detector=-5.0),
         "source_to_detector must be positive"),
        ("ct.fan", dict(shape=16, source_to_center=5.0), "must exceed the radius"),
        ("ct.fan", dict(shape=16, source_to_center=100.0, source_to_detector=101.0), "outside the image"),
    ],
)
def test_bad_parameters(name, params, match):
    with pytest.raises(InputError, match=match) as info:
        medrecon.get_operator(name, **params)
    msg = str(info.value)
    assert "\n" not in msg and msg.count(". ") == 0


def test_bad_shapes_and_dtypes():
    A = medrecon.get_operator("ct.parallel", shape=16, n_views=4)
    with pytest.raises(InputError, match=r"shaped \(B, 16, 16\)"):
        A(torch.zeros(16, 16))
    with pytest.raises(InputError, match=r"shaped \(B, 4, 23\)"):
        A.adjoint(torch.zeros(1, 4, 22))
    with pytest.raises(InputError, match="real"):
        A(torch.zeros(1, 16, 16, dtype=torch.complex64))
    with pytest.raises(InputError, match="shaped"):
        A.classical(torch.zeros(1, 5, 23))
    with pytest.raises(InputError, match="unknown FBP filter"):
        A.classical(torch.zeros(1, 4, 23), filter="triangle")
