"""Slices for the quality benchmarks from preprocessed float16 stacks (a GPU machine without the DICOM data).

``python -m medrecon.priors.prepare`` writes ``train.npy`` / ``holdout.npy`` with ``.json``
sidecars that list each row's z index in the source series (``z_indices``).  The benchmarks
index slices by that z; :func:`load_stack_folder` puts the rows of every stack in a folder
back at their z (float32; z rows no stack holds are NaN), so ``--stack .gpu/ct`` gives the
same slices as reading the series (up to float16 rounding: a relative 5e-4).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace


def load_stack_folder(folder: str | Path) -> SimpleNamespace:
    """``.data`` (Z, S, S) float32 indexed by source z, ``.pixel_size_mm``, ``.modality``."""
    import numpy as np

    folder = Path(folder)
    parts = []
    for side in sorted(folder.glob("*.json")):
        npy = side.with_suffix(".npy")
        meta = json.loads(side.read_text())
        if npy.exists() and meta.get("format") == "medrecon-slices" and meta.get("z_indices") is not None:
            parts.append((meta, np.load(npy, mmap_mode="r")))
    if not parts:
        raise SystemExit(f"{folder}: no medrecon-slices stacks (.npy + .json with z_indices)")
    px = {round(float(m["pixel_size_mm"]), 6) for m, _ in parts}
    if len(px) != 1:
        raise SystemExit(f"{folder}: the stacks disagree on the pixel size ({sorted(px)})")
    nz = 1 + max(max(m["z_indices"]) for m, _ in parts)
    size = parts[0][1].shape[-1]
    data = np.full((nz, size, size), np.nan, dtype=np.float32)
    for meta, arr in parts:
        data[np.asarray(meta["z_indices"])] = np.asarray(arr, dtype=np.float32)
    return SimpleNamespace(data=data, pixel_size_mm=px.pop(), modality=parts[0][0].get("modality"))
