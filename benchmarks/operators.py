"""Throughput of the operators: ct.parallel against ODL + ASTRA, us.planewave against NumPy delay-and-sum, mri.sense against bare FFTs.

CT (``--modality ct``): throughput of the ct.parallel projector against ODL + ASTRA (CPU)
and ODL's skimage backend.

For each geometry (256x256 with 180 views, 512x512 with 720 views; pixel-sized
detector bins, ``ceil(sqrt(2) N)`` of them) and batch size (1, 16) it times the
forward projection and the adjoint (backprojection) of

* ``ct.parallel`` (medrecon-ct: sparse Joseph matrix, one CSR product per batch),
* ODL ``RayTransform(impl="astra_cpu")`` (ASTRA's CPU ``linear`` = Joseph
  projector; one call per slice),
* ODL ``RayTransform(impl="skimage")`` where it works (one call per slice),
* with ``--device cuda`` also ``ct.parallel`` on the GPU and a plain
  ``grid_sample`` rotate-and-sum projector of the same geometry (its adjoint is
  taken through autograd, which is exact; a hand-written backprojection of a
  rotate-and-sum projector would not be).

It prints a table (slices/s and the ratio to ASTRA CPU of the same geometry and
batch) and writes JSON (``--json``, default ``out/bench_operators.json``).  The
system matrix build time (first use of a geometry; cached afterwards) is
reported separately, not included in the throughput.

Ultrasound (``--modality us``): ``us.planewave`` forward (RF simulation) and adjoint
(delay-and-sum with the matched pulse filter) for 128 elements x 75 plane waves (-16..16
degrees) x 1536 samples at 20 MHz and a 256 x 128 image (z 5..40 mm, x -19.05..19.05 mm),
frames per second for 1 and 4 frames per call, against a straightforward NumPy
delay-and-sum of the same geometry (linear interpolation, Hann receive apodisation at
f-number 1.5, vectorised over the pixels, a Python loop over transmits and elements; one
frame) in the same run, with the torch thread counts of ``--us-threads``.  The NumPy
baseline beamforms the pulse-filtered channels, so its image must equal the adjoint's: the
relative difference is reported as a cross-check.  With ``--device cuda`` GPU rows are
added (1 and 8 frames per call).

MRI (``--modality mri``, issue 6 item 7): ``mri.sense`` with 15 coils (synthetic birdcage
maps) at 320 x 320, random 1D 4x mask, complex64: forward + adjoint per slice against a
bare ``torch.fft.fft2`` + ``ifft2`` round trip of the same 15 coil images in the same run
(the floor: SENSE adds the coil-map products, the mask and the coil sum), and against the
textbook form with ``fftshift``/``ifftshift`` (:func:`medrecon_mri.fft.fft2c`), whose four
copies per call the operator avoids on even grids.  Batches of 1 and 8 slices; with
``--device cuda`` GPU rows in slices per second.

Usage::

    python benchmarks/operators.py                  # full run (a few minutes on 2 cores)
    python benchmarks/operators.py --modality us --us-threads 1,2 --json benchmarks/results/operators_us_cpu.json
    python benchmarks/operators.py --modality mri --threads 1 --json benchmarks/results/operators_mri_cpu.json
    python benchmarks/operators.py --quick          # small sizes, seconds
    python benchmarks/operators.py --device cuda    # adds GPU rows
    python benchmarks/operators.py --device cuda --peers astra   # skip the slow skimage rows
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn, device: str = "cpu", min_time: float = 1.0, max_reps: int = 20) -> float:
    """Median seconds per call (after one warm-up call; one call only when it is slow)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    if first > 3.0:
        return first
    times = []
    total = 0.0
    while total < min_time and len(times) < max_reps:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return statistics.median(times)


# ----------------------------------------------------------------------------- peers
def odl_ray_transform(n: int, angles_deg: np.ndarray, n_det: int, impl: str):
    """ODL RayTransform in ct.parallel's geometry (pixel size 1 mm, centred detector).

    ODL arrays are indexed [x, y]; ct.parallel images [row (down), column]:
    ``odl_array = flipud(image).T`` (see plugins/ct/README.md).
    """
    from medrecon.errors import require

    odl = require("odl", "odl")  # optional: MissingDependencyError names the extra, the caller reports it
    from odl.applications import tomo

    space = odl.uniform_discr([-n / 2, -n / 2], [n / 2, n / 2], (n, n), dtype="float32")
    apart = odl.nonuniform_partition(np.deg2rad(angles_deg))
    dpart = odl.uniform_partition(-n_det / 2, n_det / 2, n_det)
    return tomo.RayTransform(space, tomo.Parallel2dGeometry(apart, dpart), impl=impl)


class GridSampleProjector(torch.nn.Module):
    """Rotate-and-sum parallel-beam projector with ``grid_sample`` (the usual GPU peer).

    The image is zero-padded to about ``n_det x n_det``; for each angle it is rotated
    by bilinear ``grid_sample`` and summed along the ray direction (rows).  The
    adjoint is taken through autograd (``torch.autograd.grad``), which is exact.
    """

    def __init__(self, n: int, angles_deg: np.ndarray, n_det: int, chunk: int = 32):
        super().__init__()
        # pad symmetrically so the rotation centre is the image centre; when n_det - n is
        # odd this gives n_det + 1 bins, offset by half a bin from ct.parallel's
        self.pad = (n_det - n + 1) // 2
        self.n, self.chunk = n, chunk
        self.n_det = n + 2 * self.pad
        th = torch.as_tensor(np.deg2rad(angles_deg), dtype=torch.float32)
        c, s = torch.cos(th), torch.sin(th)
        # sampling grid for angle theta: output (row, col) samples the input at R(theta)^T
        mats = torch.stack([torch.stack([c, s, torch.zeros_like(c)], -1),
                            torch.stack([-s, c, torch.zeros_like(c)], -1)], 1)  # (A, 2, 3)
        self.register_buffer("mats", mats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.pad
        P = self.n_det
        # the batch rides in the channel axis, so one grid per angle serves every slice
        xp = torch.nn.functional.pad(x, (h, h, h, h))[None]  # (1, b, P, P)
        na_max = max(1, min(self.chunk, (1 << 28) // max(1, b * P * P)))
        outs = []
        for a0 in range(0, self.mats.shape[0], na_max):
            m = self.mats[a0 : a0 + na_max]
            na = m.shape[0]
            grid = torch.nn.functional.affine_grid(m, (na, 1, P, P), align_corners=False)
            rot = torch.nn.functional.grid_sample(xp.expand(na, b, P, P), grid, mode="bilinear",
                                                  padding_mode="zeros", align_corners=False)
            outs.append(rot.sum(2))  # (na, b, P): sum along the ray (rows)
        return torch.cat(outs, 0).permute(1, 0, 2)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if y.shape[-1] < self.n_det:  # ct.parallel-sized sinogram: the extra bin gets zero
            y = torch.nn.functional.pad(y, (0, self.n_det - y.shape[-1]))
        x = torch.zeros(y.shape[0], self.n, self.n, device=y.device, requires_grad=True)
        with torch.enable_grad():
            out = self.forward(x)
            (g,) = torch.autograd.grad(out, x, grad_outputs=y)
        return g


# ----------------------------------------------------------------------------- main
def run(args) -> dict:
    import medrecon

    configs = [(128, 90), (256, 180)] if args.quick else [(256, 180), (512, 720)]
    batches = [1, 4] if args.quick else [1, 16]
    min_time = 0.3 if args.quick else 1.0
    records, builds = [], []
    devices = ["cpu"] + (["cuda"] if args.device.startswith("cuda") else [])
    rng = np.random.default_rng(0)

    for n, n_views in configs:
        angles = np.linspace(0, 180, n_views, endpoint=False)
        n_det = int(math.ceil(math.sqrt(2) * n))
        geo = f"{n}x{n}, {n_views} views, {n_det} bins"
        print(f"\n== {geo}", flush=True)
        op = medrecon.get_operator("ct.parallel", shape=n, n_views=n_views)
        t0 = time.perf_counter()
        sm = op.system_matrix()
        _ = sm.AT
        build = time.perf_counter() - t0
        nnz = int(sm.A.values().numel())
        mem_mb = 2 * nnz * 8 / 2**20
        builds.append({"geometry": geo, "n": n, "n_views": n_views, "n_det": n_det, "build_s": build,
                       "nnz": nnz, "memory_mb_A_and_AT_float32": mem_mb})
        print(f"   ct.parallel system matrix: build {build:.2f} s (A and A^T), {nnz / 1e6:.1f} M non-zeros, "
              f"{mem_mb:.0f} MB", flush=True)

        peers = {}
        for impl in args.peers:
            try:
                peers[f"odl-{impl}"] = odl_ray_transform(n, angles, n_det, impl)
            except Exception as exc:  # noqa: BLE001 - a backend that is missing or broken is reported
                print(f"   odl-{impl}: unavailable ({type(exc).__name__}: {str(exc)[:80]})")
        # sanity: agreement with ASTRA on one random-ish image
        img = rng.random((n, n), dtype=np.float32)
        if "odl-astra_cpu" in peers:
            ya = np.asarray(peers["odl-astra_cpu"](np.ascontiguousarray(np.flipud(img).T)).data)
            yo = op(torch.from_numpy(img)[None])[0].numpy()
            agree = float(np.linalg.norm(yo - ya) / np.linalg.norm(ya))
            print(f"   ct.parallel vs ASTRA CPU forward: relative L2 difference {agree:.1e}")
            builds[-1]["rel_diff_vs_astra"] = agree

        for B in batches:
            x = torch.from_numpy(rng.random((B, n, n), dtype=np.float32))
            y = torch.from_numpy(rng.random((B, n_views, n_det), dtype=np.float32))
            rows = []
            for dev in devices:
                A = op.to(dev)
                xd, yd = x.to(dev), y.to(dev)
                with torch.no_grad():
                    if dev == "cuda":
                        A.system_matrix()
                        _ = A.system_matrix().AT
                    tf = timeit(lambda A=A, xd=xd: A(xd), dev, min_time)
                    ta = timeit(lambda A=A, yd=yd: A.adjoint(yd), dev, min_time)
                rows.append(("ct.parallel", dev, tf, ta))
                if dev == "cuda":
                    G = GridSampleProjector(n, angles, n_det).to(dev)
                    with torch.no_grad():
                        tf = timeit(lambda G=G, xd=xd: G(xd), dev, min_time)
                    ta = timeit(lambda G=G, yd=yd: G.adjoint(yd), dev, min_time)
                    rows.append(("grid_sample rotate-sum", dev, tf, ta))
            op.to("cpu")
            xs = [np.ascontiguousarray(np.flipud(x[i].numpy()).T) for i in range(B)]
            ys = [y[i].numpy() for i in range(B)]
            for name, R in peers.items():
                space_y = R.range
                yel = [space_y.element(v) for v in ys]
                try:
                    tf = timeit(lambda R=R, xs=xs: [R(v) for v in xs], "cpu", min_time, max_reps=5)
                    ta = timeit(lambda R=R, yel=yel: [R.adjoint(v) for v in yel], "cpu", min_time, max_reps=5)
                except Exception as exc:  # noqa: BLE001
                    print(f"   {name}: failed ({type(exc).__name__}: {str(exc)[:80]})")
                    continue
                rows.append((name, "cpu", tf, ta))
            ref = next((r for r in rows if r[0] == "odl-astra_cpu"), None)
            for impl, dev, tf, ta in rows:
                rec = {
                    "geometry": geo, "n": n, "n_views": n_views, "n_det": n_det, "batch": B,
                    "impl": impl, "device": dev, "forward_s": tf, "adjoint_s": ta,
                    "forward_slices_per_s": B / tf, "adjoint_slices_per_s": B / ta,
                    "fwd_adj_slices_per_s": B / (tf + ta),
                }
                if ref is not None:
                    rec["ratio_vs_astra_cpu"] = (ref[2] + ref[3]) / (tf + ta)
                    rec["forward_ratio_vs_astra_cpu"] = ref[2] / tf
                    rec["adjoint_ratio_vs_astra_cpu"] = ref[3] / ta
                records.append(rec)
                print(f"   batch {B:>2}  {impl:<24} {dev:<5} fwd {B / tf:9.1f}/s  adj {B / ta:9.1f}/s  "
                      f"fwd+adj {B / (tf + ta):9.1f}/s  x ASTRA {rec.get('ratio_vs_astra_cpu', float('nan')):7.2f}",
                      flush=True)
    return {"records": records, "builds": builds}


def table(result: dict) -> str:
    hdr = (f"{'geometry':<32} {'B':>3} {'implementation':<24} {'dev':<5} {'fwd/s':>9} {'adj/s':>9} "
           f"{'fwd+adj/s':>10} {'vs ASTRA':>9}")
    lines = [hdr, "-" * len(hdr)]
    for r in result["records"]:
        ratio = r.get("ratio_vs_astra_cpu")
        lines.append(
            f"{r['geometry']:<32} {r['batch']:>3} {r['impl']:<24} {r['device']:<5} "
            f"{r['forward_slices_per_s']:9.1f} {r['adjoint_slices_per_s']:9.1f} {r['fwd_adj_slices_per_s']:10.1f} "
            f"{(f'{ratio:8.2f}x' if ratio is not None else '      n/a'):>9}"
        )
    lines.append("")
    lines.append("system matrix build (once per geometry, cached in memory; not in the numbers above):")
    for b in result["builds"]:
        lines.append(f"  {b['geometry']:<32} {b['build_s']:7.2f} s  {b['nnz'] / 1e6:7.1f} M nnz  "
                     f"{b['memory_mb_A_and_AT_float32']:7.0f} MB")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- ultrasound
US_GEOMETRY = dict(shape=[256, 128], z_mm=[5.0, 40.0], x_mm=[-19.05, 19.05], n_elements=128, pitch_mm=0.3,
                   fs_hz=20e6, n_samples=1536, c=1540.0, f_number=1.5, apodization="hann",
                   tx_reference="first_element")


def numpy_das(rf: np.ndarray, g: dict) -> np.ndarray:
    """Straightforward NumPy delay-and-sum of ``rf`` ``(n_angles, n_elements, n_samples)`` on the grid of ``g``.

    The same geometry as ``us.planewave`` (plane-wave transmit delay with the first-element
    time reference, receive delay, linear interpolation of each channel, Hann receive
    apodisation at ``f_number``; delays off the record read zero), vectorised over the pixels
    with a Python loop over transmits and elements.
    """
    na, ne, nt = rf.shape
    dt = rf.dtype
    z = np.linspace(*g["z_mm"], g["shape"][0], dtype=dt)[:, None] * 1e-3
    x = np.linspace(*g["x_mm"], g["shape"][1], dtype=dt)[None, :] * 1e-3
    pitch, c, fs, fnum = g["pitch_mm"] * 1e-3, g["c"], g["fs_hz"], g["f_number"]
    xe = (np.arange(ne) - (ne - 1) / 2) * pitch
    half = z / (2 * fnum)
    out = np.zeros(np.broadcast_shapes(z.shape, x.shape), dt)
    for a, th in enumerate(np.radians(g["angles_deg"])):
        t_tx = (z * np.cos(th) + x * np.sin(th)) / c + (ne - 1) * pitch * abs(np.sin(th)) / (2 * c)
        for e in range(ne):
            dx = x - xe[e]
            w = np.where(np.abs(dx) <= half, np.cos(0.5 * np.pi * np.abs(dx) / half) ** 2, 0).astype(dt)
            ch = np.concatenate([[0], rf[a, e], [0, 0, 0]]).astype(dt)  # sample t at t + 1, zeros around
            s = np.clip((t_tx + np.sqrt(dx * dx + z * z) / c) * fs + 1, 0, nt + 1)
            i = np.floor(s).astype(np.int64)
            f = s - i
            out += w * ((1 - f) * ch[i] + f * ch[i + 1])
    return out


def run_us(args) -> dict:
    from medrecon_us.pulse import correlate_time

    import medrecon

    n_angles = 10 if args.quick else 75
    g = dict(US_GEOMETRY, angles_deg=np.linspace(-16, 16, n_angles).tolist())
    geo = f"us {n_angles} angles x 128 el x 1536 samples -> 256x128"
    print(f"\n== {geo}", flush=True)
    min_time = 0.3 if args.quick else 1.0
    rng = np.random.default_rng(0)
    records = []
    threads_before = torch.get_num_threads()
    A = medrecon.get_operator("us.planewave", **g)
    t0 = time.perf_counter()
    A._plan(torch.device("cpu"), torch.float32)
    plan_s = time.perf_counter() - t0
    n_pairs = int(A._plan(torch.device("cpu"), torch.float32)["p"].numel())
    print(f"   delay plan: {plan_s:.2f} s, {n_pairs / 1e6:.2f} M (element, pixel) pairs in the aperture "
          f"({n_pairs / (128 * 256 * 128):.0%})", flush=True)
    y1 = torch.from_numpy(rng.standard_normal((1, n_angles, 128, 1536), dtype=np.float32))
    for threads in args.us_threads:
        torch.set_num_threads(threads)
        rows = []
        for B in (1, 4):
            x = torch.from_numpy(rng.standard_normal((B, 256, 128), dtype=np.float32))
            y = y1.expand(B, -1, -1, -1).contiguous()
            with torch.no_grad():
                tf = timeit(lambda x=x: A(x), "cpu", min_time)
                ta = timeit(lambda y=y: A.adjoint(y), "cpu", min_time)
            rows.append(("us.planewave", "cpu", B, tf, ta))
        # the NumPy baseline beamforms the pulse-filtered channels: its image is A^T y
        v = correlate_time(y1, A.pulse)[0].numpy()
        t0 = time.perf_counter()
        ref = numpy_das(v, g)
        tn = time.perf_counter() - t0
        with torch.no_grad():
            adj = A.adjoint(y1)[0].numpy()
        agree = float(np.linalg.norm(adj - ref) / np.linalg.norm(ref))
        rows.append(("numpy delay-and-sum", "cpu", 1, None, tn))
        print(f"   threads {threads}: NumPy delay-and-sum vs us.planewave adjoint: relative difference {agree:.1e}")
        for impl, dev, B, tf, ta in rows:
            rec = {"geometry": geo, "n_angles": n_angles, "n_elements": 128, "n_samples": 1536, "image": [256, 128],
                   "impl": impl, "device": dev, "threads": threads, "batch": B, "forward_s": tf, "adjoint_s": ta,
                   "forward_frames_per_s": B / tf if tf else None, "adjoint_frames_per_s": B / ta,
                   "adjoint_ratio_vs_numpy_das": tn / (ta / B)}
            if tf:
                rec["forward_ratio_vs_numpy_das"] = tn / (tf / B)
            if impl == "numpy delay-and-sum":
                rec["rel_diff_vs_adjoint"] = agree
            records.append(rec)
            fwd = f"{B / tf:8.3f}/s" if tf else "       --"
            print(f"   threads {threads} batch {B}  {impl:<22} {dev:<5} fwd {fwd}  adj {B / ta:8.3f}/s  "
                  f"adj x NumPy {rec['adjoint_ratio_vs_numpy_das']:6.1f}", flush=True)
    torch.set_num_threads(threads_before)
    if args.device.startswith("cuda"):
        Ag = medrecon.get_operator("us.planewave", **g).to("cuda")
        for B in (1, 8):
            x = torch.randn(B, 256, 128, device="cuda")
            y = y1.to("cuda").expand(B, -1, -1, -1).contiguous()
            with torch.no_grad():
                err = float((Ag.adjoint(y[:1])[0].cpu() - torch.from_numpy(adj)).norm() / np.linalg.norm(adj))
                tf = timeit(lambda x=x: Ag(x), "cuda", min_time)
                ta = timeit(lambda y=y: Ag.adjoint(y), "cuda", min_time)
            rec = {"geometry": geo, "n_angles": n_angles, "impl": "us.planewave", "device": "cuda",
                   "card": torch.cuda.get_device_name(0), "batch": B, "forward_s": tf, "adjoint_s": ta,
                   "forward_frames_per_s": B / tf, "adjoint_frames_per_s": B / ta,
                   "adjoint_ratio_vs_numpy_das": tn / (ta / B), "forward_ratio_vs_numpy_das": tn / (tf / B),
                   "rel_diff_vs_cpu_adjoint": err}
            records.append(rec)
            print(f"   batch {B}  us.planewave cuda  fwd {B / tf:8.1f}/s  adj {B / ta:8.1f}/s  "
                  f"(GPU vs CPU adjoint {err:.1e})", flush=True)
    return {"us_records": records, "us_plan": {"geometry": geo, "plan_s": plan_s, "pairs": n_pairs}}


def run_mri(args) -> dict:
    from medrecon_mri.fft import fft2c, ifft2c

    import medrecon

    n, n_coils = (64, 4) if args.quick else (320, 15)
    geo = f"mri.sense {n_coils} coils {n}x{n}, random 1D 4x, complex64"
    print(f"\n== {geo}", flush=True)
    min_time = 0.3 if args.quick else 1.0
    A = medrecon.get_operator("mri.sense", shape=[n, n], coil_maps={"synthetic": "birdcage", "n_coils": n_coils},
                              mask={"kind": "random", "acceleration": 4, "center_fraction": 0.08, "seed": 0})
    devices = ["cpu"] + (["cuda"] if args.device.startswith("cuda") else [])
    records = []
    for dev in devices:
        Ad = A.to(dev) if dev != "cpu" else A
        maps, mask = Ad.coil_maps[None], Ad.mask
        for B in (1, 8):
            g = torch.Generator(device=dev).manual_seed(B)
            x = torch.randn(B, n, n, dtype=torch.complex64, device=dev, generator=g)
            k = torch.randn(B, n_coils, n, n, dtype=torch.complex64, device=dev, generator=g)

            def sense(Ad=Ad, x=x):
                return Ad.adjoint(Ad(x))

            def fft_round_trip(k=k):
                return torch.fft.ifft2(torch.fft.fft2(k, norm="ortho"), norm="ortho")

            def sense_with_shifts(x=x, maps=maps, mask=mask):
                return (maps.conj() * ifft2c(mask * (mask * fft2c(x[:, None] * maps)))).sum(dim=1)

            with torch.no_grad():
                err = float((sense() - sense_with_shifts()).norm() / sense_with_shifts().norm())
                times = {"mri.sense fwd+adj": timeit(sense, dev, min_time),
                         "textbook (fftshift) fwd+adj": timeit(sense_with_shifts, dev, min_time),
                         "bare fft2+ifft2": timeit(fft_round_trip, dev, min_time)}
            floor = times["bare fft2+ifft2"]
            for impl, t in times.items():
                rec = {"geometry": geo, "n": n, "n_coils": n_coils, "impl": impl, "device": dev, "batch": B,
                       "threads": torch.get_num_threads() if dev == "cpu" else None,
                       "card": torch.cuda.get_device_name(0) if dev == "cuda" else None,
                       "fwd_adj_s": t, "slices_per_s": B / t, "ratio_vs_fft_round_trip": t / floor}
                if impl == "mri.sense fwd+adj":
                    rec["rel_diff_vs_textbook"] = err
                records.append(rec)
                print(f"   {dev:<4} batch {B}  {impl:<28} {1e3 * t / B:8.2f} ms/slice  {B / t:8.1f} slices/s  "
                      f"x fft round trip {t / floor:5.2f}", flush=True)
    return {"mri_records": records}


def mri_table(result: dict) -> str:
    hdr = f"{'implementation':<28} {'dev':<5} {'B':>2} {'ms/slice':>9} {'slices/s':>9} {'x fft2 round trip':>18}"
    lines = [result["mri_records"][0]["geometry"], hdr, "-" * len(hdr)]
    for r in result["mri_records"]:
        lines.append(f"{r['impl']:<28} {r['device']:<5} {r['batch']:>2} {1e3 * r['fwd_adj_s'] / r['batch']:9.2f} "
                     f"{r['slices_per_s']:9.1f} {r['ratio_vs_fft_round_trip']:17.2f}x")
    return "\n".join(lines)


def us_table(result: dict) -> str:
    hdr = f"{'implementation':<22} {'dev':<5} {'thr':>3} {'B':>2} {'fwd fr/s':>9} {'adj fr/s':>9} {'adj vs NumPy':>13}"
    lines = [result["us_plan"]["geometry"], hdr, "-" * len(hdr)]
    for r in result["us_records"]:
        fwd = f"{r['forward_frames_per_s']:9.3f}" if r.get("forward_frames_per_s") else f"{'--':>9}"
        lines.append(f"{r['impl']:<22} {r['device']:<5} {r.get('threads', '-')!s:>3} {r['batch']:>2} {fwd} "
                     f"{r['adjoint_frames_per_s']:9.3f} {r['adjoint_ratio_vs_numpy_das']:12.1f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: adds GPU rows")
    p.add_argument("--quick", action="store_true", help="small sizes and batches, short timings")
    p.add_argument("--json", default=None, help="where to write the JSON results (default: benchmarks/results/"
                   "operators_{ct,us,mri}_{cpu,cuda}.json by --modality and --device; --quick: out/bench_operators.json)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--peers", default="astra,skimage",
                   help="comma-separated ODL backends to compare with: astra, skimage, or none")
    p.add_argument("--modality", default="all", choices=["ct", "us", "mri", "all"],
                   help="which operators: ct (ct.parallel), us (us.planewave), mri (mri.sense) or all (default)")
    p.add_argument("--us-threads", default="1",
                   help="comma-separated torch thread counts for the us.planewave CPU rows (default 1)")
    args = p.parse_args(argv)
    try:
        args.us_threads = [int(v) for v in args.us_threads.split(",") if v.strip()]
    except ValueError:
        p.error(f"--us-threads must be comma-separated integers, got {args.us_threads!r}")
    if args.json is None:  # the kept results file of this modality and device kind
        kind = "cuda" if args.device.startswith("cuda") else "cpu"
        args.json = ("out/bench_operators.json" if args.quick else
                     str(Path(__file__).resolve().parent / "results" / f"operators_{args.modality}_{kind}.json"))
    names = {"astra": "astra_cpu", "astra_cpu": "astra_cpu", "skimage": "skimage"}
    peers = [v.strip() for v in args.peers.split(",") if v.strip() and v.strip() != "none"]
    bad = [v for v in peers if v not in names]
    if bad:
        p.error(f"unknown peer {bad[0]!r}; choose from astra, skimage, none")
    args.peers = [names[v] for v in peers]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda given but CUDA is not available", file=sys.stderr)
        return 2
    t0 = time.time()
    load_before = os.getloadavg()
    result = run(args) if args.modality in ("ct", "all") else {"records": [], "builds": []}
    if args.modality in ("us", "all"):
        result.update(run_us(args))
    if args.modality in ("mri", "all"):
        result.update(run_mri(args))
    result["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_s": time.time() - t0,
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "quick": args.quick,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    try:
        import astra

        result["meta"]["astra"] = astra.__version__
    except ImportError:
        pass
    print()
    if result["records"]:
        print(table(result))
    if result.get("us_records"):
        print(us_table(result))
    if result.get("mri_records"):
        print(mri_table(result))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
