"""Training parity: per-step loss, LR, gradient norm and parameters after N steps of the real recipe.

Usage: python align/04_backward.py [--model NAME|all] [--out DIR] [--full]
Writes reprod_log files backward_torch.npy / backward_paddle.npy, backward_diff.log and a strict
backward_strict.json per model under --out; exits non-zero when any key fails.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from align.cli import main  # noqa: E402

if __name__ == "__main__":
    main("backward", __doc__.splitlines()[0])
