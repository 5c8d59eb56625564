"""The slice-varying operator contract (``slice_varying``, ``for_slices``) and the conformance
kit's checks of it: a correct per-slice operator passes, wrong selections are caught."""

from __future__ import annotations

import pytest
import torch

from medrecon.errors import InputError
from medrecon.operators.base import Operator
from medrecon.testing import check_operator


class _PerSliceGain(Operator):
    """``y_s = g_s * (x_s shifted by one pixel)``: slice ``s`` has its own gain ``g_s`` (a real
    per-slice operator; the shift makes forward and adjoint differ)."""

    name = "test.gain"
    slice_buffers = ("gains",)

    def __init__(self, gains, n: int = 6):
        super().__init__(gains=list(gains), n=n)
        self.register_buffer("gains", torch.tensor(gains, dtype=torch.float32))
        self.domain_shape = self.range_shape = (n,)
        self.slice_varying = True
        self.n_slices = len(gains)

    def _g(self, t):
        return self.gains.to(t.dtype)[:, None]

    def _forward(self, x):
        return self._g(x) * torch.roll(x, 1, dims=1)

    def _adjoint(self, y):
        return torch.roll(self._g(y) * y, -1, dims=1)

    def classical(self, y):
        self._check(y, self.range_shape, "measurement")
        return torch.roll(y / self._g(y), -1, dims=1)


class _SortedSelection(_PerSliceGain):
    """Wrong: for_slices returns the slices in sorted order, not the order asked for."""

    def _select(self, idx):
        return super()._select(sorted(idx))


class _RootAdjoint(_PerSliceGain):
    """Wrong: the adjoint of a selection uses the first gains of the root operator."""

    def _adjoint(self, y):
        g = self.slice_root.gains[: y.shape[0]].to(y.dtype)[:, None]
        return torch.roll(g * y, -1, dims=1)


def _rebuild(cls):
    return lambda spec: cls.from_spec(spec)


GAINS = [1.0, 2.0, -3.0, 0.5]


def test_a_correct_slice_varying_operator_passes_every_check():
    op = _PerSliceGain(GAINS)
    report = check_operator(op, rebuild=_rebuild(_PerSliceGain))
    assert report.passed, report.table()
    assert report["for-slices"].status == "pass"
    assert report["slice-independence"].status == "pass"
    assert "(4, 6)" in report["shapes"].detail  # run on a batch of all n_slices


@pytest.mark.parametrize("cls,where", [(_SortedSelection, "for-slices"), (_RootAdjoint, "for-slices")])
def test_wrong_selections_are_caught(cls, where):
    report = check_operator(cls(GAINS), rebuild=_rebuild(cls))
    assert not report.passed
    assert report[where].status == "FAIL", report.table()


def test_other_operators_skip_the_check_and_return_themselves():
    from medrecon.operators.matrix import MatrixOperator

    op = MatrixOperator(torch.eye(4)[:3], shape=[2, 2])
    assert op.for_slices([5, 2]) is op and not op.slice_varying and op.n_slices is None
    report = check_operator(op, rebuild=MatrixOperator.from_spec)
    assert report.passed and report["for-slices"].status == "skip"


def test_selection_semantics():
    op = _PerSliceGain(GAINS)
    x = torch.randn(4, 6)
    y = op(x)
    sel = op.for_slices([3, 1, 1])
    assert sel.n_slices == 3 and sel.slice_indices == (3, 1, 1) and sel.slice_root is op
    torch.testing.assert_close(sel(x[[3, 1, 1]]), y[[3, 1, 1]])
    sub = sel.for_slices([2, 0])  # indices count the selection's own slices
    assert sub.slice_indices == (1, 3) and sub.slice_root is op
    assert sub.spec()["slices"] == [1, 3] and "slices" not in op.spec()
    again = _PerSliceGain.from_spec(sub.spec())
    torch.testing.assert_close(again(x[[1, 3]]), y[[1, 3]])
    assert op.gains.tolist() == GAINS  # selecting never modifies the operator
    with pytest.raises(InputError, match="exactly those 4 slice"):
        op(x[:2])
    with pytest.raises(InputError, match="exactly those 3 slice"):
        sel.adjoint(y)
    for bad in ([4], [], [1.5], ["a"], [True]):
        with pytest.raises(InputError, match=r"\[0, 4\)"):
            op.for_slices(bad)


def test_selection_moves_and_keeps_precision():
    op = _PerSliceGain(GAINS).with_precision(True)
    sel = op.for_slices([2])
    assert sel.gains.dtype == torch.float64 and sel.gains.tolist() == [-3.0]
    assert set(dict(sel.named_buffers())) == {"gains"}  # the root is not a submodule
