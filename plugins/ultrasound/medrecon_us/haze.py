"""``us.haze``: the tissue + haze measurement model of ultrasound dehazing.

Stevens et al. ("Dehazing ultrasound using diffusion models", IEEE TMI 2024) model a hazy
beamformed RF image ``y`` (depth x lateral) as the sum of the tissue signal ``x`` and haze
``h`` (multipath reverberation clutter) on the same grid::

    A [x; h] = x + h                     (B, 2, nz, nx) -> (B, nz, nx)
    A^T y    = [y; y]                    the exact adjoint (||A||^2 = 2)

Both components are real RF images in the units of ``y``.  ``classical(y) = [y; 0]``: no
dehazing (the beamformed image is taken as tissue).  The paper's model is this plain sum;
a blend ``y = x + g h`` with a fixed haze gain ``g`` is the same model with ``h`` rescaled,
so it is not a separate parameter here.

The image domain has two *components* (``component_names = ("tissue", "haze")``): the
engine writes the first as the reconstruction and each further one next to it
(``out.nii.gz`` and ``out.haze.nii.gz``; see docs/dehazing.md).  The sampler that inverts it
is ``dehaze`` (:mod:`medrecon_us.dehaze`), one diffusion prior per component.

A measurement for dehazing holds beamformed RF frames ``y`` shaped ``(frames, nz, nx)``:
:func:`haze_measurement` makes one from RF channel data measured with ``us.planewave``
(delay-and-sum with its ``classical()``), and ``python -m medrecon_us.haze RF.h5 -o HAZY.h5``
does it from the command line.

Example::

    >>> import torch, medrecon
    >>> A = medrecon.get_operator("us.haze", shape=[4, 3])
    >>> y = A(torch.ones(2, 2, 4, 3))
    >>> tuple(y.shape), float(y[0, 0, 0])
    ((2, 4, 3), 2.0)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, ClassVar

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.operators.base import Operator
from medrecon.operators.params import Param

__all__ = ["TissueHaze", "haze_measurement"]


def _shape(shape) -> list[int]:
    if not isinstance(shape, (list, tuple, np.ndarray)) or len(shape) != 2:
        raise InputError(f"shape must be [nz, nx], got {shape!r}")
    out = []
    for v in shape:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not float(v).is_integer() or int(v) < 1:
            raise InputError(f"shape must be two positive integers [nz, nx], got {shape!r}")
        out.append(int(v))
    return out


def _pixel_mm(pixel_mm) -> list[float] | None:
    if pixel_mm is None:
        return None
    if not isinstance(pixel_mm, (list, tuple, np.ndarray)) or len(pixel_mm) != 2 or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and np.isfinite(v) and v > 0 for v in pixel_mm):
        raise InputError(f"pixel_mm must be two positive sizes [dz, dx] in mm, got {pixel_mm!r}")
    return [float(v) for v in pixel_mm]


class TissueHaze(Operator):
    """``A [x; h] = x + h``: ``(B, 2, nz, nx) -> (B, nz, nx)``, real (module docstring).

    Parameters: ``shape`` ``[nz, nx]`` (the beamformed RF grid, depth x lateral) and optional
    ``pixel_mm`` ``[dz, dx]`` (pixel size in mm, recorded for the measurement's affine).
    """

    name: ClassVar[str] = "us.haze"
    per_slice: ClassVar[bool] = True
    domain_is_complex: ClassVar[bool] = False
    range_is_complex: ClassVar[bool] = False
    #: The image's components along axis 1 of the domain; the engine writes one volume each.
    component_names: ClassVar[tuple[str, ...]] = ("tissue", "haze")

    PARAMS: ClassVar[tuple[Param, ...]] = (
        Param("shape", check=_shape, grid="shape", doc="[nz, nx] beamformed RF grid (depth x lateral), pixels"),
        Param("pixel_mm", None, check=_pixel_mm, doc="[dz, dx] pixel size, mm (recorded for the affine)"),
    )

    @classmethod
    def example(cls) -> "TissueHaze":
        """A 16 x 16 grid."""
        return cls(shape=[16, 16])

    def _build(self, p) -> None:
        self.domain_shape = (2, *p["shape"])
        self.range_shape = tuple(p["shape"])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] + x[:, 1]

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y, y], dim=1)

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A [x; h] = [x + h; x + h]`` (the same numbers as ``adjoint(forward(.))``)."""
        s = x[:, 0] + x[:, 1]
        return torch.stack([s, s], dim=1)

    def classical(self, y: torch.Tensor) -> torch.Tensor:
        """``[y; 0]``: the hazy image as tissue, no haze (the baseline without dehazing)."""
        self._check(y, self.range_shape, "measurement")
        return torch.stack([y, torch.zeros_like(y)], dim=1)


def haze_measurement(rf, *, frames=None, device: str = "cpu"):
    """A ``us.haze`` measurement from an ``us.planewave`` measurement (RF channel data).

    Each frame of ``rf.y`` ``(frames, n_angles, n_elements, n_samples)`` is beamformed with
    the plane-wave operator's ``classical()`` (delay-and-sum, normalised per pixel) on its
    image grid; the result ``(frames, nz, nx)`` is the ``y`` of the new measurement, whose
    operator is ``us.haze`` on that grid.  ``frames`` selects frames (a list of indices).
    The volume keeps the RF measurement's affine; ``noise_std`` is 0 (unknown after
    beamforming).  ``rf`` is a :class:`~medrecon.measurement.Measurement` or a path.
    """
    from medrecon.engine import load_input
    from medrecon.measurement import Measurement

    m = rf if isinstance(rf, Measurement) else load_input(rf)
    name = m.operator_spec.get("name")
    if name != "us.planewave":
        raise InputError(f"dehazing measurements are made from us.planewave RF data, not {name!r}")
    op = m.operator(device=device)
    y = m.y if frames is None else m.y[np.asarray(frames, dtype=int)]
    if y.shape[0] == 0:
        raise InputError("no frames selected")
    with torch.no_grad():
        img = torch.cat([op.classical(torch.from_numpy(np.ascontiguousarray(y[k:k + 1])).to(device).float())
                         for k in range(y.shape[0])]).cpu().numpy().astype(np.float32)
    p = op.params
    nz, nx = p["shape"]
    dz = (p["z_mm"][1] - p["z_mm"][0]) / max(nz - 1, 1)
    dx = (p["x_mm"][1] - p["x_mm"][0]) / max(nx - 1, 1)
    hz = TissueHaze([nz, nx], pixel_mm=[dz, dx])
    prov: dict[str, Any] = {"source": (m.provenance or {}).get("source"), "beamformed_from": m.operator_spec,
                            "frames": None if frames is None else [int(f) for f in frames],
                            "made_by": "medrecon_us.haze.haze_measurement"}
    return Measurement(y=img, operator_spec=hz.spec(), noise_std=0.0, volume_shape=(img.shape[0], nz, nx),
                       affine=np.asarray(m.affine, dtype=np.float64), units=m.units or "RF (arbitrary)",
                       provenance=prov, reference_meta=m.reference_meta)


def main(argv: list[str] | None = None) -> int:
    """``python -m medrecon_us.haze RF.h5 --output HAZY.h5``: beamform plane-wave RF for dehazing."""
    ap = argparse.ArgumentParser(prog="python -m medrecon_us.haze", description=main.__doc__)
    ap.add_argument("rf", help="us.planewave measurement file, or a raw RF file an importer reads")
    ap.add_argument("--output", "-o", required=True, help="us.haze measurement file to write (.h5)")
    ap.add_argument("--frames", default=None, help="comma-separated frame indices (default: all)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    from medrecon.errors import MedreconError
    from medrecon.measurement import save_measurement

    try:
        frames = None if args.frames is None else [int(f) for f in args.frames.split(",") if f.strip()]
        m = haze_measurement(args.rf, frames=frames)
        save_measurement(m, args.output, overwrite=args.overwrite)
    except (MedreconError, ValueError) as exc:
        print(f"medrecon_us.haze: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: y {tuple(m.y.shape)} (beamformed RF), operator us.haze")
    return 0


if __name__ == "__main__":
    sys.exit(main())
