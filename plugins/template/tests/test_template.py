"""The template plugin's own tests: discovered through its entry point, conformant."""

import pytest
import torch

import medrecon
from medrecon.testing import check_operator


def test_discovered_through_entry_point():
    op = medrecon.get_operator("template.scale", shape=[6, 5], factor=-1.5)
    assert type(op).__module__ == "medrecon_template.operator"
    assert op.domain_shape == (6, 5)


def test_passes_conformance_kit():
    report = check_operator(medrecon.get_operator("template.scale", shape=[8, 8], factor=3.0))
    assert report.passed, report.table()


def test_classical_inverts():
    op = medrecon.get_operator("template.scale", shape=[4, 4], factor=4.0)
    x = torch.randn(2, 4, 4)
    assert torch.allclose(op.classical(op(x)), x)


def test_bad_factor_is_one_sentence():
    with pytest.raises(medrecon.InputError, match="non-zero factor"):
        medrecon.get_operator("template.scale", shape=[4, 4], factor=0)
