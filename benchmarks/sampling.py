"""Seconds per volume: slice-wise DDS vs dds3d vs mbir3d on the same volume, in one run.

    PYTHONPATH=. python benchmarks/sampling.py --quick                      # CPU: 4 x 32^2 slices
    PYTHONPATH=. python benchmarks/sampling.py --device cuda --size 256 --slices 256 \\
        --data .gpu/ct/holdout.npy --output out/sampling.json              # GPU: a 256^3 volume

The volume: with ``--data X.npy`` the held-out (N, S, S) HU stack, centre-cropped to
``--size`` and repeated along z (tiled: slice k is stack slice k mod N) to ``--slices``
slices; without it a synthetic phantom (a Shepp-Logan slice in HU whose ellipses shift
and scale smoothly with z).  Measurements: ct.parallel, 8 views, 0.5 % noise, as in
quality3d.py.  Every method gets the same measurements and a warm-up run (2 steps on 2
slices) first, so that one-off costs (system matrix build, CUDA kernels) are not timed.

Slice-wise DDS runs as the engine would with ``batch_size = --net-batch`` (one
``sample`` call per batch of slices); the volume samplers get all slices in one call and
split their network calls into chunks of ``--net-batch``.  mbir3d is timed for
``--mbir-steps`` steps and extrapolated linearly to ``--mbir-full-steps`` (default 1000,
the step count of its default), because its cost per step is constant.  Prints seconds,
per-slice-step milliseconds and the ratios to DDS; writes JSON with the card's name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def phantom_volume(size: int, slices: int) -> np.ndarray:
    """Shepp-Logan-like ellipses in HU, shifting and scaling smoothly along z."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    yy, xx = (yy - size / 2) / (size / 2), (xx - size / 2) / (size / 2)
    vol = np.empty((slices, size, size), np.float32)
    for k in range(slices):
        s = 0.85 + 0.1 * np.sin(2 * np.pi * k / max(slices, 2))
        img = np.full((size, size), -1000.0, np.float32)
        img[(xx / (0.69 * s)) ** 2 + (yy / (0.92 * s)) ** 2 < 1] = 40.0
        img[((xx - 0.22) / 0.11) ** 2 + (yy / 0.31) ** 2 < 1] = -50.0
        img[((xx + 0.22) / 0.16) ** 2 + (yy / 0.41) ** 2 < 1] = -50.0
        img[(xx / 0.21) ** 2 + ((yy - 0.35 * s) / 0.25) ** 2 < 1] = 80.0
        img[(xx / 0.046) ** 2 + ((yy + 0.1 + 0.1 * k / slices) / 0.046) ** 2 < 1] = 300.0
        vol[k] = img
    return vol


def load_volume(data: str | None, size: int, slices: int) -> tuple[np.ndarray, str]:
    if data:
        arr = np.load(data, mmap_mode="r")
        s = arr.shape[1]
        if size > s:
            raise SystemExit(f"sampling: --size {size} is larger than the stack's {s}")
        o = (s - size) // 2
        idx = np.arange(slices) % arr.shape[0]
        vol = np.asarray(arr[:, o:o + size, o:o + size], dtype=np.float32)[idx]
        return np.ascontiguousarray(vol), f"{data} centre {size}x{size}, tiled along z to {slices} slices"
    return phantom_volume(size, slices), "synthetic Shepp-Logan-like phantom varying along z"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--data", default=None)
    ap.add_argument("--prior", default="ct-default")
    ap.add_argument("--steps", type=int, default=50, help="DDS and dds3d steps")
    ap.add_argument("--mbir-steps", type=int, default=20, help="mbir3d steps timed")
    ap.add_argument("--mbir-full-steps", type=int, default=1000, help="mbir3d steps extrapolated to")
    ap.add_argument("--net-batch", type=int, default=32)
    ap.add_argument("--methods", default="dds,dds3d,mbir3d")
    ap.add_argument("--no-amp", action="store_true", help="fp32 network on CUDA (default: bf16 autocast)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: 4 slices of 32^2, 3 steps")
    ap.add_argument("--output", default=None, help="JSON file")
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.slices, a.steps, a.mbir_steps = 32, 4, 3, 3

    import quality3d as q
    import torch

    from medrecon.priors import load_prior

    if a.threads:
        torch.set_num_threads(a.threads)
    vol, what = load_volume(a.data, a.size, a.slices)
    A, x, y, _ = q.make_problem(vol, a.device)
    prior = load_prior(a.prior, device=a.device)
    prior.autocast = not a.no_amp
    cuda = str(a.device).startswith("cuda")
    res = {"volume": what, "shape": list(vol.shape), "views": 8, "device": a.device,
           "card": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "amp_bf16": bool(cuda and not a.no_amp), "steps": a.steps, "net_batch": a.net_batch,
           "threads": torch.get_num_threads(), "methods": {}}
    print(f"{what}; {tuple(vol.shape)} on {res['card']}", flush=True)

    def run(m, yy, steps):
        if m == "dds":
            return q.run_dds(A, yy, prior, steps, 0, a.net_batch)
        return q.run_volume(m, A, yy, prior, steps, 0, a.net_batch)

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:  # warm-up: system matrix, kernels, norm estimate
        run(m, y[:2], 2)
    for m in methods:
        steps = a.mbir_steps if m == "mbir3d" else a.steps
        q._sync(a.device)
        t0 = time.perf_counter()
        xr = run(m, y, steps)
        q._sync(a.device)
        sec = time.perf_counter() - t0
        row = {"seconds": round(sec, 3), "steps": steps,
               "ms_per_slice_step": round(1000 * sec / (steps * vol.shape[0]), 4),
               "finite": bool(torch.isfinite(xr).all())}
        if m == "mbir3d":
            row["seconds_extrapolated"] = round(sec * a.mbir_full_steps / steps, 1)
            row["extrapolated_to_steps"] = a.mbir_full_steps
        res["methods"][m] = row
        _write(a.output, res)  # after every method: a timeout later keeps what was measured
        print(f"{m:7s} {sec:9.2f} s for {steps} steps ({row['ms_per_slice_step']:.3f} ms per slice-step)"
              + (f"; {row['seconds_extrapolated']:.0f} s at {a.mbir_full_steps} steps" if m == "mbir3d" else ""),
              flush=True)
    base = res["methods"].get("dds")
    if base:
        for m, r in res["methods"].items():
            if m != "dds":
                r["ratio_to_dds_per_step"] = round(r["ms_per_slice_step"] / base["ms_per_slice_step"], 3)
                if m == "dds3d":
                    r["ratio_to_dds"] = round(r["seconds"] / base["seconds"], 3)
                    print(f"dds3d / dds = {r['ratio_to_dds']:.2f} (target <= 1.3)")
                else:
                    r["ratio_to_dds_full"] = round(r["seconds_extrapolated"] / base["seconds"], 1)
                    print(f"mbir3d ({a.mbir_full_steps} steps) / dds ({a.steps} steps) = {r['ratio_to_dds_full']:.1f}; "
                          f"per step {r['ratio_to_dds_per_step']:.2f}")
    if a.output:
        _write(a.output, res)
        print(f"wrote {a.output}")
    return 0


def _write(path, res) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
