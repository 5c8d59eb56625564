"""Prepare slice stacks for prior training: ``python -m medrecon.priors.prepare``.

Reads a DICOM folder or NIfTI file with :func:`medrecon.load_volume`, resamples every
axial slice to S x S (whole field of view, area averaging), holds out a contiguous block
of slices (``--holdout a:b`` in the z order of load_volume), and writes::

    OUT/train.npy + train.json      float16 (N, S, S) in physical units + sidecar
    OUT/holdout.npy + holdout.json  the held-out block

Example::

    python -m medrecon.priors.prepare /work/shared/data/ct-pancreas-tcia --modality ct \\
        --size 256 --holdout 0:32 --output .gpu/ct
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def prepare_slices(source, output, size: int = 256, holdout: str | None = None,
                   modality: str | None = None, pixel_size_mm: float | None = None,
                   overwrite: bool = False) -> dict:
    """Write train (and holdout) stacks from one volume; returns a summary dict.  Stacks already in
    ``output`` are replaced only with ``overwrite``."""
    import numpy as np

    from medrecon.errors import InputError
    from medrecon.priors.data import SliceStack, parse_block, stack_from_volume, write_stack

    there = [n for n in ("train.npy", "holdout.npy") if (Path(output) / n).exists()]
    if there and not overwrite:
        raise InputError(f"{str(output)!r} already holds {' and '.join(there)}; pass --overwrite to replace them")
    full = stack_from_volume(source, size, modality, pixel_size_mm)
    n = full.data.shape[0]
    block = parse_block(holdout, n)
    out = Path(output)
    idx = np.arange(n)
    parts = {"train": idx}
    if block is not None:
        a, b = block
        parts = {"train": np.concatenate([idx[:a], idx[b:]]), "holdout": idx[a:b]}
    summary = {"source": str(source), "modality": full.modality, "size": size,
               "pixel_size_mm": full.pixel_size_mm, "holdout": list(block) if block else None, "files": {}}
    for name, sel in parts.items():
        meta = dict(full.meta)
        meta["z_indices"] = [full.meta["z_indices"][i] for i in sel]
        meta["part"] = name
        st = SliceStack(full.data[sel], full.modality, full.pixel_size_mm, full.lo[sel], full.hi[sel], meta)
        p = write_stack(st, out / f"{name}.npy")
        summary["files"][name] = {"path": str(p), "slices": int(len(sel)), "bytes": p.stat().st_size}
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medrecon.priors.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="DICOM folder or NIfTI file")
    ap.add_argument("--output", "-o", required=True, help="output folder (train.npy/.json, holdout.npy/.json)")
    ap.add_argument("--size", type=int, default=256, help="slice size S (default 256)")
    ap.add_argument("--holdout", default=None, help="contiguous z block a:b held out (z order of load_volume)")
    ap.add_argument("--modality", choices=["ct", "mr", "us"], default=None, help="default: from the file")
    ap.add_argument("--pixel-size", type=float, default=None, help="target pixel size mm (default: FOV / S)")
    ap.add_argument("--overwrite", action="store_true", help="replace stacks already in --output")
    args = ap.parse_args(argv)
    from medrecon.errors import MedreconError

    try:
        summary = prepare_slices(args.source, args.output, args.size, args.holdout, args.modality, args.pixel_size,
                                 args.overwrite)
    except MedreconError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
