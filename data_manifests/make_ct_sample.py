"""Build the shipped CT sample ``medrecon/data/ct_sample.nii.gz`` from the pancreas CT series.

Source: TCIA "Pancreatic-CT-CBCT-SEG", patient Pancreas-CT-CB_001, the 134-slice
axial breath-hold CT (512 x 512, 1.074 mm pixels, 3 mm slices), CC BY 4.0.

What the sample is
------------------
* slices k = 12..19 of the series in medrecon's z order (``load_volume`` sorts by
  position along the slice normal, so k = 0 is the lowest z, the most inferior
  slice); these lie inside the held-out evaluation block k = 0..31 that prior
  training must not use, so the demo reconstructs slices the shipped prior never saw;
* each slice downsampled 2x by 2x2 block averaging over the full field of view
  (512 -> 256 pixels, 1.074 -> 2.148 mm): the grid and pixel size of the shipped
  ``ct-default`` prior;
* values rounded to integer HU, stored as int16 NIfTI (gzip with mtime 0, so the
  file is byte-for-byte reproducible); the affine is the series' own, with the
  pixel size x2 and the origin moved to the centre of the first 2x2 block.

Usage (from the repository root)::

    .venv/bin/python data_manifests/make_ct_sample.py [--source ../shared/data/ct-pancreas-tcia]

It rewrites ``medrecon/data/ct_sample.nii.gz`` and the ``sample`` entry of
``data_manifests/ct-pancreas-tcia.json`` (sha256, size, slices).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLICES = (12, 20)  # k range in medrecon's z order, inside the held-out block 0..31
FACTOR = 2
KEEP_DICOM = ("PatientID", "PatientName", "PatientSex", "PatientIdentityRemoved", "StudyInstanceUID",
              "StudyDescription", "FrameOfReferenceUID", "Manufacturer", "ManufacturerModelName",
              "BodyPartExamined", "PatientPosition", "KVP", "ConvolutionKernel", "Modality",
              "SOPClassUID", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber")


def build(source: Path):
    import medrecon

    vol = medrecon.load_volume(source)
    z, ny, nx = vol.shape
    if ny % FACTOR or nx % FACTOR:
        raise SystemExit(f"slices {ny}x{nx} are not a multiple of {FACTOR}")
    slab = vol.slab(*SLICES)
    d = slab.data.astype(np.float64)
    d = d.reshape(d.shape[0], ny // FACTOR, FACTOR, nx // FACTOR, FACTOR).mean(axis=(2, 4))
    data = np.round(d).astype(np.int16)
    scale = np.eye(4)
    scale[0, 0] = scale[1, 1] = FACTOR
    scale[0, 3] = scale[1, 3] = (FACTOR - 1) / 2.0  # new voxel centre = centre of the FACTOR x FACTOR block
    affine = slab.affine @ scale
    m = vol.meta
    meta = {
        "modality": "CT",
        "units": "HU",
        "source": "TCIA Pancreatic-CT-CBCT-SEG, Pancreas-CT-CB_001 (doi:10.7937/TCIA.ESHQ-4D90), CC BY 4.0",
        "source_format": "dicom",
        "series_uid": m.get("series_uid"),
        "series_description": m.get("series_description"),
        "series_number": m.get("series_number"),
        "pixel_spacing": [p * FACTOR for p in m["pixel_spacing"]],
        "slice_spacing": m.get("slice_spacing"),
        "slice_thickness": m.get("slice_thickness"),
        "derived": f"slices {SLICES[0]}..{SLICES[1] - 1} (z order) of the series, {FACTOR}x{FACTOR} block mean, "
                   "rounded to integer HU",
        "slab": list(SLICES),
        "dicom": {k: v for k, v in m.get("dicom", {}).items() if k in KEEP_DICOM},
    }
    return medrecon.Volume(data.astype(np.float32), affine, meta), vol


def write_reproducible(vol, out: Path) -> bytes:
    import medrecon

    with tempfile.TemporaryDirectory() as tmp:
        nii = Path(tmp) / "s.nii"
        medrecon.save_volume(vol, nii)
        raw = nii.read_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as g:
        g.write(raw)
    blob = buf.getvalue()
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_bytes(blob)
    tmp_out.replace(out)
    return blob


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "ct-pancreas-tcia")
    ap.add_argument("--output", type=Path, default=REPO / "medrecon" / "data" / "ct_sample.nii.gz")
    ap.add_argument("--manifest", type=Path, default=REPO / "data_manifests" / "ct-pancreas-tcia.json")
    args = ap.parse_args(argv)
    if not args.source.is_dir():
        print(f"source folder {args.source} not found", file=sys.stderr)
        return 2
    sample, full = build(args.source)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    blob = write_reproducible(sample, args.output)
    sha = hashlib.sha256(blob).hexdigest()
    manifest = json.loads(args.manifest.read_text()) if args.manifest.is_file() else {}
    manifest["sample"] = {
        "path": "medrecon/data/ct_sample.nii.gz",
        "sha256": sha,
        "bytes": len(blob),
        "generator": "data_manifests/make_ct_sample.py",
        "slices_z_order": list(range(*SLICES)),
        "source_files": [Path(f).name for f in full.meta["source_files"][SLICES[0]:SLICES[1]]],
        "shape_zyx": list(sample.shape),
        "spacing_zyx_mm": [round(v, 6) for v in sample.spacing],
        "downsampling": f"{FACTOR}x{FACTOR} block mean over the full 512x512 field of view, integer HU, int16",
        "held_out_block": "slices 0..31 in z order are reserved for evaluation; the sample lies inside it",
    }
    args.manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.output} ({len(blob)} bytes, sha256 {sha}); shape {sample.shape}, "
          f"spacing {tuple(round(v, 4) for v in sample.spacing)} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
