"""Slice orientation from Siemens protocols (medrecon_mri.geometry) and the oriented affine of
the shared GRE twix file, checked against the rotation the scanner wrote into the readouts."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import numpy as np
import pytest
from medrecon_mri.geometry import phase_read_directions, siemens_affine

GRE_DAT = "mri-kspace-gre-phantom/gre.dat"


@pytest.mark.parametrize("normal,gp,gr", [
    ((0, 0, 1), (0, 1, 0), (-1, 0, 0)),   # transverse: phase A->P, readout R<-L
    ((0, 1, 0), (1, 0, 0), (0, 0, -1)),   # coronal
    ((1, 0, 0), (0, 1, 0), (0, 0, 1)),    # sagittal
])
def test_main_orientations(normal, gp, gr):
    p, r = phase_read_directions(normal)
    np.testing.assert_allclose(p, gp, atol=1e-12)
    np.testing.assert_allclose(r, gr, atol=1e-12)


def test_oblique_slice_with_inplane_rotation_is_a_rotation():
    n = np.array([0.2, -0.3, 0.9])
    n /= np.linalg.norm(n)
    p0, r0 = phase_read_directions(n)
    p, r = phase_read_directions(n, np.pi / 2)
    np.testing.assert_allclose(p, -r0, atol=1e-12)  # G_P <- cos G_P - sin G_R
    R = np.stack([p, r, n], axis=1)
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    assert abs(p0[0]) < 1e-12  # transverse-like: the unrotated phase direction has no L-R part


def test_affine_maps_the_centre_and_steps_between_slices():
    geom = [{"position": np.array([10.0, -5.0, 20.0 + 6 * k]), "normal": np.array([0.0, 0.0, 1.0]),
             "inplane_rot": 0.0, "thickness": 5.0} for k in range(3)]
    aff, pos = siemens_affine(geom, (8, 6), 2.0, 1.5)
    np.testing.assert_allclose(aff @ [3, 4, 0, 1], [-10.0, 5.0, 20.0, 1])  # centre pixel -> slice centre (RAS)
    np.testing.assert_allclose(aff @ [3, 4, 2, 1], [-10.0, 5.0, 32.0, 1])
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [2.0, 1.5, 6.0])
    assert pos == [20.0, 26.0, 32.0]


def _twix(path):
    twixtools = pytest.importorskip("twixtools")
    with redirect_stdout(io.StringIO()):
        return twixtools.read_twix(str(path), parse_data=True, verbose=False)[-1]


@pytest.mark.shared_data
def test_gre_twix_affine_from_the_protocol(shared_data):
    pytest.importorskip("twixtools")
    from twixtools.geometry import quat_to_rotmat

    from medrecon.engine import load_input

    dat = shared_data / GRE_DAT
    if not dat.is_file():
        pytest.skip("gre.dat is not present")
    scan = _twix(dat)
    sl = scan["hdr"]["MeasYaps"]["sSliceArray"]["asSlice"][0]
    normal = np.array([sl["sNormal"].get(k, 0.0) for k in ("dSag", "dCor", "dTra")])
    centre = np.array([sl["sPosition"].get(k, 0.0) for k in ("dSag", "dCor", "dTra")])
    # the protocol's phase / read / slice directions are the rotation in every readout header
    readout = next(m for m in scan["mdb"] if m.is_image_scan())
    prs = quat_to_rotmat(*readout.mdh.SliceData.Quaternion)
    gp, gr = phase_read_directions(normal, sl.get("dInPlaneRot", 0.0))
    np.testing.assert_allclose(np.stack([gp, gr, normal], axis=1), prs, atol=1e-4)

    m = load_input(dat)
    assert m.provenance["orientation"].startswith("protocol")
    aff = m.affine
    ras = np.diag([-1, -1, 1])
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [1.25, 1.25, 4.0], atol=1e-6)
    np.testing.assert_allclose(aff @ [80, 80, 0, 1], [*(ras @ centre), 1], atol=1e-6)  # image centre
    np.testing.assert_allclose(aff[:3, 2] / 4.0, ras @ normal, atol=1e-6)  # slice axis along the normal
    assert abs(aff[2, 2]) > 0.99 * 4.0  # this phantom scan is (nearly) transverse
    np.testing.assert_allclose(aff[:3, 0] / 1.25, ras @ -gp, atol=1e-6)


def test_near_ties_follow_siemens_tolerance():
    """|sag| and |cor| equal within 1e-6 (fGSLAlmEqual) count as a tie: coronal, not sagittal."""
    from medrecon_mri.geometry import _main_orientation

    assert _main_orientation(np.array([0.70710679, 0.70710677, 0.0])) == 1
    assert _main_orientation(np.array([0.7072, 0.7070, 0.0])) == 0
