"""Prior network speed: forward + backward ms per slice (training step cost) and forward-only ms per slice.

    python benchmarks/priors.py                      # CPU: batch 1, 16 at 128 (256 at batch 1), fp32 + bf16
    python benchmarks/priors.py --device cuda        # full grid: batch 1, 16, 64 x 128, 256 x fp32, bf16
    python benchmarks/priors.py --train-step --sizes 64 128 --batches 4   # ms per AdamW training step

Runs from a source tree with ``PYTHONPATH=.``.  Writes JSON to --output (default: benchmarks/results/priors_{cpu,cuda}.json by --device).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench(net, dev, batch: int, size: int, dtype: str, reps: int, train_step: bool = False) -> dict:
    import torch
    import torch.nn.functional as F

    x = torch.randn(batch, 1, size, size, device=dev)
    t = torch.randint(0, 1000, (batch,), device=dev)
    ac = dtype == "bf16"
    dev_type = dev.type
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4) if train_step else None

    def fwd():
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=ac):
            return net(x, t)

    def fb():
        out = fwd()
        loss = F.mse_loss(out.float(), x)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if opt is not None:
            opt.step()

    def timeit(fn, n):
        fn()
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(dev)
        return (time.perf_counter() - t0) / n

    net.train()
    fb_s = timeit(fb, reps)
    with torch.no_grad():
        f_s = timeit(fwd, reps)
    row = {"batch": batch, "size": size, "dtype": dtype,
           "fwd_bwd_ms_per_step": round(fb_s * 1e3, 3), "fwd_bwd_ms_per_slice": round(fb_s * 1e3 / batch, 3),
           "fwd_ms_per_slice": round(f_s * 1e3 / batch, 3), "steps_per_s": round(1 / fb_s, 2),
           "train_step": train_step}
    if dev.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--batches", type=int, nargs="*", default=None)
    ap.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"])
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--train-step", action="store_true", help="time a full AdamW step (fwd + bwd + update)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", default=None, help="JSON (default: benchmarks/results/priors_{cpu,cuda}.json)")
    a = ap.parse_args(argv)
    if a.output is None:
        a.output = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"priors_{'cuda' if a.device.startswith('cuda') else 'cpu'}.json")

    import torch

    from medrecon.devices import resolve_device
    from medrecon.priors.model import PRESETS, build_unet, count_parameters

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    sizes = a.sizes or [128, 256]
    batches = a.batches or ([1, 16, 64] if cuda else [1, 16])
    reps = a.reps or (20 if cuda else 3)
    net = build_unet(PRESETS[a.preset]).to(dev)
    res = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if cuda else platform.processor(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "preset": a.preset,
           "parameters": count_parameters(net), "rows": []}
    print(f"# {a.preset}: {res['parameters'] / 1e6:.2f}M parameters on {res['device_name'] or dev}", flush=True)
    for size in sizes:
        for b in batches:
            if not cuda and size >= 256 and b > 1 and not a.sizes:
                continue  # CPU default grid: 256 only at batch 1 (slow)
            for dt in a.dtypes:
                try:
                    row = bench(net, dev, b, size, dt, reps, a.train_step)
                except torch.OutOfMemoryError:  # pragma: no cover - GPU only
                    row = {"batch": b, "size": size, "dtype": dt, "error": "out of memory"}
                    torch.cuda.empty_cache()
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
    if a.output:
        with open(a.output, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
