"""A 20-slice CT series pulled from a real Orthanc over DICOMweb, reconstructed (classical) and pushed back.

The series: 20 contiguous slices (the middle of the series) of the 134-slice 512 x 512 pancreas CT
(``../shared/data/ct-pancreas-tcia``, or ``--folder``), uploaded as they are (STOW-RS of the original
files) to an Orthanc with its DICOMweb plugin: ``MEDRECON_TEST_ORTHANC`` + ``_USER`` / ``_PASSWORD``
(``eval "$(.ci/orthanc.sh env)"``), or one started here with ``.ci/orthanc.sh`` (Debian packages
``orthanc`` and ``orthanc-dicomweb``).  Then, per repeat, in this one process (imports done first):

1. ``pull_s``: ``medrecon.load_volume("dicomweb://...?study=..&series=..")`` (QIDO-RS + WADO-RS of
   each instance + the DICOM reader);
2. ``simulate_s``: ``medrecon.simulate`` of a ``ct.parallel`` measurement (``--views`` views, 0.5 %
   noise) -- the measurement a scanner would have given; not part of the pipeline's time;
3. ``reconstruct_s``: ``medrecon.reconstruct(m, sampler="classical")`` (filtered back-projection);
4. ``push_s``: ``medrecon.save_volume(rec, "dicomweb://...")`` (the derived series written by the
   DICOM writer into a temporary folder and stored with STOW-RS, then checked with QIDO-RS).  Each
   repeat's result is a new series (the UIDs follow the content; the simulated noise seed changes).

and, as the peer in the same run, the same volume read from and written to the local disk
(``file_read_s``: ``load_volume(folder)``; ``file_write_s``: ``save_volume(rec, folder)``).  Reported:
medians over ``--repeats``; ``transfer_s`` = pull + push, its share of transfer + reconstruction, and
the DICOMweb / local-file time ratios.  One thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dicomweb.py                 # 3 repeats
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dicomweb.py --repeats 1 --views 90

Writes ``benchmarks/results/dicomweb.json``.  Skips (exit 0, a message) without the data folder or
an Orthanc.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.quality import git_commit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_FOLDER = ROOT.parent / "shared" / "data" / "ct-pancreas-tcia"


def _server(tmp: Path):
    """(http DICOMweb root, user, password, stop callable or None)."""
    url = os.environ.get("MEDRECON_TEST_ORTHANC")
    if url:
        return url.rstrip("/"), os.environ["MEDRECON_TEST_ORTHANC_USER"], os.environ["MEDRECON_TEST_ORTHANC_PASSWORD"], None
    script = ROOT / ".ci" / "orthanc.sh"
    env = {**os.environ, "MEDRECON_ORTHANC_DIR": str(tmp / "orthanc")}
    p = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return None
    vals = dict(re.findall(r"export (\w+)=(\S+)", subprocess.run(["bash", str(script), "env"], env=env,
                                                                 capture_output=True, text=True).stdout))

    def stop():
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True)

    return (vals["MEDRECON_TEST_ORTHANC"], vals["MEDRECON_TEST_ORTHANC_USER"], vals["MEDRECON_TEST_ORTHANC_PASSWORD"],
            stop)


def _pick_slices(folder: Path, n: int, out: Path) -> list:
    """Copy ``n`` contiguous slices (the middle of the series, sorted along z) of ``folder`` to ``out``;
    returns their datasets."""
    import pydicom

    files = sorted(folder.glob("*.dcm"))
    heads = sorted((float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]), f) for f in files)
    mid = len(heads) // 2
    chosen = [f for _, f in heads[mid - n // 2: mid - n // 2 + n]]
    out.mkdir(parents=True)
    for f in chosen:
        shutil.copy(f, out / f.name)
    return [pydicom.dcmread(f) for f in sorted(out.glob("*.dcm"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    ap.add_argument("--slices", type=int, default=20)
    ap.add_argument("--views", type=int, default=180)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=RESULTS / "dicomweb.json")
    args = ap.parse_args()
    if not args.folder.is_dir():
        print(f"skipped: no data folder {args.folder}")
        return 0
    import numpy as np
    import requests
    import torch
    from dicomweb_client import DICOMwebClient

    import medrecon

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="medrecon-bench-dicomweb-") as tmpd:
        tmp = Path(tmpd)
        server = _server(tmp)
        if server is None:
            print("skipped: no Orthanc (set MEDRECON_TEST_ORTHANC or install orthanc + orthanc-dicomweb)")
            return 0
        url, user, password, stop = server
        try:
            series_dir = tmp / "series"
            datasets = _pick_slices(args.folder, args.slices, series_dir)
            session = requests.Session()
            session.auth, session.trust_env = (user, password), False
            DICOMwebClient(url, session=session).store_instances(datasets)
            study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
            os.environ["MEDRECON_DICOMWEB_USER"], os.environ["MEDRECON_DICOMWEB_PASSWORD"] = user, password
            web = "dicomweb://" + url.split("://", 1)[1]
            src = f"{web}?study={study}&series={series}"
            n_bytes = sum(f.stat().st_size for f in series_dir.iterdir())
            rows = []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                vol = medrecon.load_volume(src)
                t1 = time.perf_counter()
                m = medrecon.simulate(vol, "ct.parallel", {"n_views": args.views}, noise_std=0.005, relative=True,
                                      seed=r)
                t2 = time.perf_counter()
                rec = medrecon.reconstruct(m, sampler="classical", progress=False)
                t3 = time.perf_counter()
                out = medrecon.save_volume(rec, web)
                t4 = time.perf_counter()
                ref = medrecon.load_volume(series_dir)
                t5 = time.perf_counter()
                medrecon.save_volume(rec, tmp / f"local{r}")
                t6 = time.perf_counter()
                assert np.array_equal(ref.data, vol.data) and np.allclose(ref.affine, vol.affine, atol=1e-4)
                rows.append({"pull_s": t1 - t0, "simulate_s": t2 - t1, "reconstruct_s": t3 - t2, "push_s": t4 - t3,
                             "file_read_s": t5 - t4, "file_write_s": t6 - t5, "stored": out})
                print(f"repeat {r}: pull {t1 - t0:.2f} s, reconstruct {t3 - t2:.2f} s, push {t4 - t3:.2f} s "
                      f"(simulate {t2 - t1:.2f} s; local read {t5 - t4:.2f} s, write {t6 - t5:.2f} s)")
        finally:
            if stop is not None:
                stop()
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0] if k.endswith("_s")}
    transfer = med["pull_s"] + med["push_s"]
    result = {
        "benchmark": "benchmarks/dicomweb.py",
        "command": ("OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dicomweb.py " + " ".join(sys.argv[1:])).strip(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_commit(),
        "server": "Orthanc 1.10 + DICOMweb plugin 1.7 (Debian packages), loopback HTTP, basic auth",
        "series": {"source": str(args.folder.name), "slices": args.slices, "matrix": list(vol.shape[1:]),
                   "bytes_on_disk": n_bytes, "transfer_syntax": str(datasets[0].file_meta.TransferSyntaxUID)},
        "operator": {"name": "ct.parallel", "n_views": args.views, "noise": "0.5 % of the sinogram RMS"},
        "threads": 1,
        "repeats": args.repeats,
        "median": {k: round(v, 4) for k, v in med.items()},
        "transfer_s": round(transfer, 4),
        "transfer_share": round(transfer / (transfer + med["reconstruct_s"]), 4),
        "pull_over_file_read": round(med["pull_s"] / med["file_read_s"], 3),
        "push_over_file_write": round(med["push_s"] / med["file_write_s"], 3),
        "pull_mb_per_s": round(n_bytes / 1e6 / med["pull_s"], 2),
        "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows],
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "pulled_equals_file_read": True,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median", "transfer_s", "transfer_share", "pull_over_file_read",
                                              "push_over_file_write", "pull_mb_per_s")}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
