"""Correctness on a CUDA device: the checks that cannot run on a CPU-only machine.

* the conformance kit (incl. the CPU <-> GPU round trip) on ct.parallel, ct.fan, ct.cone, mri.sense,
  us.planewave and us.haze (each plugin only when installed);
* a shipped or freshly trained prior gives the same epsilon on the GPU as on the CPU
  (fp32 within 1e-3 relative; bf16 autocast within 3e-2);
* DDS on the GPU reproduces DDS on the CPU for the same per-slice seeds; so does ``dehaze``
  with the shipped ultrasound priors (when the ultrasound plugin is installed).

Prints one line per check and a summary; exits 1 on a failure.  Usage::

    python benchmarks/gpu_correctness.py [--prior PATH]
"""

from __future__ import annotations

import argparse
import sys

import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prior", default=None, help="prior folder (default: tiny untrained network)")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only dry-runs this script")
    ap.add_argument("--only-dehaze", action="store_true", help="only the dehaze GPU vs CPU check")
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: nothing to check")
        return 0
    # exact fp32 comparisons: no TF32 in convolutions and matrix products
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu (dry run)"
    print(f"device: {name}  torch {torch.__version__}")
    failures = []

    def record(name: str, ok: bool, detail: str) -> None:
        print(f"{name:<40} {'pass' if ok else 'FAIL'}  {detail}")
        if not ok:
            failures.append(name)

    import medrecon
    from medrecon.errors import PluginError
    from medrecon.testing import check_operator

    checks = [] if args.only_dehaze else [("ct.parallel", dict(shape=[128, 128], n_views=60)),
                         ("ct.fan", dict(shape=[96, 96], n_views=90)),
                         ("ct.cone", dict(shape=[24, 32, 32], n_views=20)),
                         ("mri.sense", dict(shape=[64, 48], coil_maps={"synthetic": "birdcage", "n_coils": 4},
                                            mask={"kind": "random", "acceleration": 4, "center_fraction": 0.08,
                                                  "seed": 0})),
                         ("us.planewave", dict(shape=[48, 32], z_mm=[5, 12], x_mm=[-3, 3], n_elements=32,
                                               pitch_mm=0.3, angles_deg=[-5, 0, 5], fs_hz=20e6, n_samples=512)),
                         ("us.haze", dict(shape=[40, 24]))]
    for name, params in checks:
        try:
            op = medrecon.get_operator(name, **params).to(dev)
        except PluginError as e:
            print(f"{'conformance ' + name:<40} skip  {e}")
            continue
        rep = check_operator(op)
        record(f"conformance {name} on {dev}", rep.passed,
               "; ".join(f"{r.name}={r.status}" for r in rep.results))

    from medrecon.priors import DiffusionPrior, load_prior

    if args.prior:
        prior = load_prior(args.prior)
    else:
        from medrecon.priors.model import default_config

        prior = DiffusionPrior(default_config("ct", image_size=64, preset="tiny"))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # MONAI zero-initialises the output layer: give every weight a value
            for p in prior.parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 96, 80, generator=g)
    t = torch.tensor([10, 200, 500, 900])
    with torch.no_grad():
        prior.autocast = False
        e_cpu = prior.to("cpu").eps(x, t)
        prior_gpu = prior.to(dev)
        e_gpu = prior_gpu.eps(x.to(dev), t.to(dev))
        record("prior eps fp32 GPU vs CPU", rel(e_gpu, e_cpu) < 1e-3, f"rel {rel(e_gpu, e_cpu):.2e}")
        if hasattr(prior_gpu, "autocast"):
            prior_gpu.autocast = True
            e_bf = prior_gpu.eps(x.to(dev), t.to(dev))
            prior_gpu.autocast = False
            record("prior eps bf16 autocast vs fp32", rel(e_bf, e_cpu) < 3e-2, f"rel {rel(e_bf, e_cpu):.2e}")

    from medrecon.samplers import get_sampler, slice_generators

    op = medrecon.get_operator("ct.parallel", shape=[96, 80], n_views=16)
    xt = torch.zeros(2, 96, 80)
    xt[:, 30:60, 20:60] = 0.02
    y = op(xt)
    dds = get_sampler("dds")
    x_cpu = dds.sample(y, op, prior.to("cpu"), steps=10, generators=slice_generators(0, [0, 1]))
    x_gpu = dds.sample(y.to(dev), op.to(dev), prior.to(dev), steps=10,
                       generators=slice_generators(0, [0, 1]))
    record("DDS GPU vs CPU, same seeds", rel(x_gpu, x_cpu) < 1e-2, f"rel {rel(x_gpu, x_cpu):.2e}")

    try:  # ultrasound dehazing with the shipped tissue and haze priors
        hz = medrecon.get_operator("us.haze", shape=[64, 48])
        tissue = load_prior("us-tissue")
        tissue.autocast = False  # fp32 on both devices (the haze prior follows); bf16 differs by ~1e-2
    except PluginError as e:
        print(f"{'dehaze GPU vs CPU':<40} skip  {e}")
    else:
        gy = torch.Generator().manual_seed(3)
        yh = torch.randn(2, 64, 48, generator=gy)
        deh = get_sampler("dehaze")
        h_cpu = deh.sample(yh, hz, tissue.to("cpu"), steps=10, generators=slice_generators(0, [0, 1]))
        h_gpu = deh.sample(yh.to(dev), hz.to(dev), tissue.to(dev), steps=10, generators=slice_generators(0, [0, 1]))
        record("dehaze GPU vs CPU, same seeds", rel(h_gpu, h_cpu) < 1e-3, f"rel {rel(h_gpu, h_cpu):.2e}")
        tissue.autocast = True  # bf16 autocast of both networks on the GPU (the engine's --amp)
        h_bf = deh.sample(yh.to(dev), hz.to(dev), tissue, steps=10, generators=slice_generators(0, [0, 1]))
        tissue.autocast = False
        record("dehaze bf16 GPU vs fp32 CPU", rel(h_bf, h_cpu) < 5e-2, f"rel {rel(h_bf, h_cpu):.2e}")
    print("SUMMARY:", "all passed" if not failures else f"{len(failures)} failed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
