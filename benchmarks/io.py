"""Read speed and peak memory of the DICOM reader against MONAI's PydicomReader.

Reads the 134-slice 512x512 pancreas CT series (``../shared/data/ct-pancreas-tcia``,
or ``--folder``) with

* ``medrecon.load_volume(folder)`` (float32 ``(Z, Y, X)`` in HU, affine, meta), and
* ``monai.transforms.LoadImage(reader="PydicomReader", image_only=True)(folder)``
  (MONAI's own pydicom-based series reader; a MetaTensor),

each in a **fresh subprocess** per repeat (so one reader's caches and freed-but-kept
memory cannot help or hurt the other), alternating the readers, ``--repeats`` times
(default 5), and reports the median.  Per run it measures

* ``time_s``: wall time of the read call alone (``time.perf_counter``; imports of
  numpy / pydicom / torch / monai are done before the clock starts and are not counted);
* ``tracemalloc_peak_mb``: peak of Python-tracked allocations during the call
  (``tracemalloc``; numpy buffers are tracked, so the output array is included);
* ``rss_peak_delta_mb``: peak resident set size of the process
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus the RSS just before the call
  (``/proc/self/statm``), i.e. what the read added to the high-water mark, counting
  C allocations and page-cache-backed reads that tracemalloc does not see.
  Note: tracemalloc slows allocation-heavy code down, so the timed run and the
  memory run are separate calls in the same subprocess (the timed one first).

The volume itself is ``134 * 512 * 512 * 4`` bytes = 140.5 MB (float32).  Targets: medrecon
no slower than MONAI, peak memory at most 2x the volume.

Usage::

    python benchmarks/io.py                      # 5 repeats, JSON to benchmarks/results/io.json
    python benchmarks/io.py --repeats 3 --folder /path/to/series --json out/io.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = Path(os.environ.get("MEDRECON_DATA", ROOT.parent / "shared" / "data")) / "ct-pancreas-tcia"

_CHILD = r"""
import gc, json, os, resource, sys, time, tracemalloc, warnings
warnings.simplefilter("ignore")
import numpy as np
reader, folder, mode = sys.argv[1], sys.argv[2], sys.argv[3]
if reader == "medrecon":
    import medrecon, medrecon.io.dicom  # noqa: F401
    def read():
        v = medrecon.load_volume(folder)
        return v.data
else:
    import torch  # noqa: F401
    from monai.transforms import LoadImage
    loader = LoadImage(reader="PydicomReader", image_only=True)
    def read():
        return loader(folder)

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

gc.collect()
out = {}
if mode == "time":
    before = rss_mb()
    t0 = time.perf_counter()
    arr = read()
    out["time_s"] = time.perf_counter() - t0
    out["rss_peak_delta_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3 - before
else:
    tracemalloc.start()
    arr = read()
    out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
a = np.asarray(arr)
out["shape"] = list(a.shape)
out["dtype"] = str(a.dtype)
out["nbytes_mb"] = a.nbytes / 1e6
out["checksum"] = float(np.asarray(a, dtype=np.float64).sum())
print(json.dumps(out))
"""


def run_child(reader: str, folder: Path, mode: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-c", _CHILD, reader, str(folder), mode], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{reader} {mode} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "io.json")
    args = ap.parse_args(argv)
    if not args.folder.is_dir():
        print(f"no DICOM folder at {args.folder} (set --folder or MEDRECON_DATA)", file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {"medrecon": [], "monai": []}
    for rep in range(args.repeats):
        for reader in ("medrecon", "monai") if rep % 2 == 0 else ("monai", "medrecon"):
            t = run_child(reader, args.folder, "time")
            m = run_child(reader, args.folder, "memory")
            t.update(tracemalloc_peak_mb=m["tracemalloc_peak_mb"])
            runs[reader].append(t)
            print(f"[{rep + 1}/{args.repeats}] {reader:8s} {t['time_s']:.3f} s  tracemalloc peak "
                  f"{t['tracemalloc_peak_mb']:.0f} MB  RSS peak +{t['rss_peak_delta_mb']:.0f} MB  "
                  f"{tuple(t['shape'])} {t['dtype']}", flush=True)
    summary = {}
    for reader, rs in runs.items():
        summary[reader] = {
            "time_s_median": statistics.median(r["time_s"] for r in rs),
            "time_s_all": [round(r["time_s"], 4) for r in rs],
            "tracemalloc_peak_mb_median": statistics.median(r["tracemalloc_peak_mb"] for r in rs),
            "rss_peak_delta_mb_median": statistics.median(r["rss_peak_delta_mb"] for r in rs),
            "shape": rs[0]["shape"], "dtype": rs[0]["dtype"], "nbytes_mb": rs[0]["nbytes_mb"],
            "checksum": rs[0]["checksum"],
        }
    vol_mb = 134 * 512 * 512 * 4 / 1e6 if summary["medrecon"]["shape"] == [134, 512, 512] else \
        summary["medrecon"]["nbytes_mb"]
    med, mon = summary["medrecon"], summary["monai"]
    result = {
        "benchmark": "benchmarks/io.py",
        "folder": str(args.folder),
        "repeats": args.repeats,
        "volume_float32_mb": vol_mb,
        "readers": summary,
        "same_values": med["checksum"] == mon["checksum"],  # sum over all voxels, float64
        "speed_ratio_monai_over_medrecon": mon["time_s_median"] / med["time_s_median"],
        "targets": {
            "no_slower_than_monai": med["time_s_median"] <= mon["time_s_median"],
            "tracemalloc_peak_le_2x_volume": med["tracemalloc_peak_mb_median"] <= 2 * vol_mb,
            "rss_peak_le_2x_volume": med["rss_peak_delta_mb_median"] <= 2 * vol_mb,
        },
        "memory_method": "tracemalloc peak during the call (separate call) and ru_maxrss - RSS before the call",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"\nvolume {vol_mb:.1f} MB float32")
    for reader in ("medrecon", "monai"):
        s = summary[reader]
        print(f"{reader:8s} median {s['time_s_median']:.3f} s  tracemalloc peak {s['tracemalloc_peak_mb_median']:.0f} MB"
              f" ({s['tracemalloc_peak_mb_median'] / vol_mb:.2f}x)  RSS peak +{s['rss_peak_delta_mb_median']:.0f} MB"
              f" ({s['rss_peak_delta_mb_median'] / vol_mb:.2f}x)")
    print(f"MONAI / medrecon time: {result['speed_ratio_monai_over_medrecon']:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
