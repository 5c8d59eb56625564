"""Seconds per volume: slice-wise DDS vs dds3d vs mbir3d on the same volume, in one run.

    PYTHONPATH=. python benchmarks/sampling.py --quick                      # CPU: 4 x 32^2 slices
    PYTHONPATH=. python benchmarks/sampling.py --device cuda --size 256 --slices 256 \\
        --data .gpu/ct/holdout.npy --output benchmarks/results/sampling_cuda.json  # GPU: a 256^3 volume

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

``--per-slice-2d`` measures instead the 2D samplers on one batch of slices (the sampling
issue's CPU numbers)::

    PYTHONPATH=. python benchmarks/sampling.py --per-slice-2d --threads 2 \
        --output benchmarks/results/sampling_cpu.json

seconds per slice of ``classical``, ``tv``, ``dds``, ``dps`` and ``reddiff`` at their default
steps on ``--size`` (256) x ``--size`` slices, ct.parallel with ``--views`` (16) views, the
``--prior`` (ct-default), a batch of ``--batch`` (4) slices.  Samplers whose default is
long (DPS: 1000 steps) are timed for ``--max-steps`` (20) steps and extrapolated linearly
(the JSON says so: ``steps_timed`` vs ``steps_default``).  The share of time spent outside
the network (operator, CG, bookkeeping) is ``1 - network / total``, the network time being
the prior's ``eps`` calls (an instance wrapper) plus, for DPS, the backward pass through the
network (autograd markers around each ``eps`` call: from the gradient reaching its output
to it leaving its input).
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
    ap.add_argument("--output", default=None, help="JSON file (default: benchmarks/results/sampling_{cpu,cuda}.json; "
                    "--quick: none)")
    ap.add_argument("--per-slice-2d", action="store_true",
                    help="time the 2D samplers per slice and their share outside the network (see above)")
    ap.add_argument("--views", type=int, default=16, help="--per-slice-2d: ct.parallel views")
    ap.add_argument("--batch", type=int, default=4, help="--per-slice-2d: slices per sample call")
    ap.add_argument("--max-steps", type=int, default=20,
                    help="--per-slice-2d: steps timed when a sampler's default is longer (then extrapolated)")
    ap.add_argument("--samplers", default="classical,tv,dds,dps,reddiff", help="--per-slice-2d: samplers")
    a = ap.parse_args(argv)
    if a.output is None and not a.quick:
        a.output = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"sampling_{'cuda' if a.device.startswith('cuda') else 'cpu'}.json")
    if a.per_slice_2d:
        return main_2d(a, argv)
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


class _NetTimer:
    """Wraps ``prior.eps`` on the instance: forward seconds, and backward seconds through
    autograd markers at the network's input and output (for samplers that differentiate it)."""

    def __init__(self, prior):
        import torch

        self.prior, self.orig = prior, prior.eps
        self.fwd = 0.0
        self.bwd = 0.0
        self.calls = 0
        timer = self

        class _Mark(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, tag):
                ctx.tag = tag
                return x.view_as(x)

            @staticmethod
            def backward(ctx, g):
                now = time.perf_counter()
                if ctx.tag == "out":
                    timer._bstart = now
                elif getattr(timer, "_bstart", None) is not None:
                    timer.bwd += now - timer._bstart
                    timer._bstart = None
                return g, None

        def eps(x_t, t):
            timer.calls += 1
            grad = torch.is_grad_enabled() and x_t.requires_grad
            if grad:
                x_t = _Mark.apply(x_t, "in")
            t0 = time.perf_counter()
            out = timer.orig(x_t, t)
            timer.fwd += time.perf_counter() - t0
            return _Mark.apply(out, "out") if grad else out

        self.eps = eps

    def __enter__(self):
        self.fwd = self.bwd = 0.0
        self.calls = 0
        self.prior.eps = self.eps
        return self

    def __exit__(self, *exc):
        del self.prior.eps  # back to the class's method


def main_2d(a, argv) -> int:
    import platform

    import torch

    import medrecon
    from medrecon.priors import load_prior
    from medrecon.samplers import get_sampler, sampler_class, slice_generators

    if a.threads:
        torch.set_num_threads(a.threads)
    size = a.size if "--size" in (argv if argv is not None else sys.argv) else 256
    vol, what = load_volume(a.data, size, a.batch)
    A = medrecon.get_operator("ct.parallel", shape=size, n_views=a.views, pixel_size=0.8)
    A = A.to(a.device)
    x = torch.from_numpy(vol).to(a.device)
    with torch.no_grad():
        y0 = A(x)
    sd = 0.005 * float(y0.pow(2).mean().sqrt())
    y = y0 + sd * torch.randn(y0.shape, generator=torch.Generator().manual_seed(0)).to(a.device)
    prior = load_prior(a.prior, device=a.device)
    prior.autocast = False
    res = {"what": "seconds per slice of the 2D samplers and the share of time outside the network",
           "volume": what, "slice": [size, size], "operator": f"ct.parallel, {a.views} views, 0.8 mm pixels",
           "noise": "0.5% of the clean sinogram RMS", "prior": a.prior, "batch": a.batch,
           "device": a.device, "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "network_time": "prior.eps forward (+ backward through it for DPS, by autograd markers)",
           "targets_outside_network": {"dds": 0.15, "dps": 0.10}, "samplers": {}}
    print(f"{what}; batch {a.batch} of {size}x{size}, {a.views} views, {res['threads']} threads", flush=True)
    names = [n.strip() for n in a.samplers.split(",") if n.strip()]
    for name in names:  # warm-up: system matrix, norm estimate, first calls
        kw = {"noise_std": sd} if "noise_std" in getattr(sampler_class(name), "params", {}) else {}
        smp = get_sampler(name, **kw)
        smp.sample(y[:1], A, prior if smp.needs_prior else None, steps=2, generators=slice_generators(0, [0]))
    for name in names:
        kw = {"noise_std": sd} if "noise_std" in getattr(sampler_class(name), "params", {}) else {}
        smp = get_sampler(name, **kw)
        default = getattr(smp, "default_steps", None)
        steps = min(default, a.max_steps) if (default and smp.needs_prior) else default
        with _NetTimer(prior) as nt:
            t0 = time.perf_counter()
            xr = smp.sample(y, A, prior if smp.needs_prior else None, steps=steps,
                            generators=slice_generators(0, range(a.batch)))
            sec = time.perf_counter() - t0
        factor = (default / steps) if (default and steps) else 1.0
        row = {"steps_default": default, "steps_timed": steps, "seconds_timed": round(sec, 3),
               "seconds_per_slice": round(sec * factor / a.batch, 3),
               "extrapolated": bool(factor != 1.0),
               "finite": bool(torch.isfinite(xr).all())}
        if smp.needs_prior:
            net = nt.fwd + nt.bwd
            row.update({"eps_calls": nt.calls, "network_forward_s": round(nt.fwd, 3),
                        "network_backward_s": round(nt.bwd, 3),
                        "share_outside_network": round(1 - net / sec, 4)})
            tgt = res["targets_outside_network"].get(name)
            if tgt is not None:
                row["target_share_outside_network"] = tgt
                row["meets_target"] = bool(row["share_outside_network"] <= tgt)
        res["samplers"][name] = row
        _write(a.output, res)
        extra = (f", {100 * row['share_outside_network']:.1f}% outside the network" if smp.needs_prior else "")
        print(f"{name:9s} {row['seconds_per_slice']:9.2f} s/slice at {default} steps"
              + (f" (timed {steps} steps: {sec:.1f} s, extrapolated)" if row["extrapolated"] else f" ({sec:.1f} s)")
              + extra, flush=True)
    if a.output:
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
