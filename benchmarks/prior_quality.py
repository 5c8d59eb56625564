"""Prior quality on held-out slices: denoising MSE at t = 100, 300, 500 and the prior-vs-Gaussian evidence.

    PYTHONPATH=. python benchmarks/prior_quality.py PRIOR --holdout .gpu/ct/holdout.npy \
        --train .gpu/ct/train.npy --output out/prior_quality/ct [--device cuda]

Writes prior_quality.json + prior_quality.png (see medrecon.priors.evaluate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prior", help="prior name or folder")
    ap.add_argument("--holdout", required=True)
    ap.add_argument("--train", default=None, help="training stack (chooses the Gaussian width)")
    ap.add_argument("--output", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-slices", type=int, default=None)
    a = ap.parse_args(argv)
    from medrecon.priors.evaluate import evaluate_prior

    res = evaluate_prior(a.prior, a.holdout, a.train, a.output, device=a.device, max_slices=a.max_slices)
    print(json.dumps({"denoising": res["denoising"], "evidence": {k: v for k, v in res["evidence"].items()
                                                                  if k != "gaussian_sigma_scores_train"}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
