"""How far the torch reference's own fp32 training run moves under equally valid execution settings.

Runs the ``train_*`` free run of align/04_backward.py (the real recipe, compressed to ``--steps`` steps, from the
settled weights and optimizer state, on the training batch) for the torch reference only: at the default threads, then with another
thread count (reductions split differently), with oneDNN convolutions off (another convolution algorithm) and in
float64, and prints the largest relative loss difference of each against the default run. This is the
reference's reproducibility floor: a Paddle-vs-torch gap inside it cannot be told apart from the reference
disagreeing with itself.

Usage: python align/reference_spread.py [--model upernet_vitaev2_s] [--threads 2]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from align.cases import get_case  # noqa: E402
from align.training import train_pair  # noqa: E402


def losses(case, recipe, x, y, threads, onednn=True, dtype="float32"):
    import torch
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn
    try:
        tm, _ = case.build_pair(settled=True, dtype=dtype)
        tm.train()
        return train_pair(tm, None, recipe, x, y, case.steps, torch_only=True,
                          optimizer_state=case.settled_state()[2])["t"]["loss"].astype(np.float64)
    finally:
        torch.backends.mkldnn.enabled = True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="upernet_vitaev2_s", help="an UperNet model (upernet_r50, upernet_swin_t, "
                    "upernet_vitaev2_s)")
    ap.add_argument("--threads", type=int, default=2, help="the default run's thread count (align uses 2)")
    args = ap.parse_args(argv)
    if not args.model.startswith("upernet_"):
        ap.error(f"--model must be an UperNet model, got {args.model!r}")
    case = get_case(args.model)
    recipe, (x, y) = case.train_recipe(case.steps), case.train_batch()
    ref = losses(case, recipe, x, y, args.threads)
    print(f"{args.model}: torch fp32 loss over {case.steps} steps at {args.threads} threads: "
          f"{' '.join(f'{v:.6f}' for v in ref)}")
    other = 1 if args.threads != 1 else 2
    variants = [(f"{other} thread(s)", dict(threads=other)), (f"{args.threads + 1} threads",
                dict(threads=args.threads + 1)), ("oneDNN convolutions off", dict(threads=args.threads, onednn=False)),
                ("float64", dict(threads=args.threads, dtype="float64"))]
    for label, kw in variants:
        rel = np.abs(losses(case, recipe, x, y, **kw) - ref) / np.abs(ref)
        print(f"  vs {label:24s} max relative loss difference {rel.max():.2e}  (per step: "
              f"{' '.join(f'{v:.1e}' for v in rel)})", flush=True)


if __name__ == "__main__":
    main()
