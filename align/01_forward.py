"""Forward parity: eval outputs, features and train-mode logits.

Usage: python align/01_forward.py [--model NAME|all] [--out DIR] [--full]
Writes reprod_log files forward_torch.npy / forward_paddle.npy, forward_diff.log and a strict
forward_strict.json per model under --out; exits non-zero when any key fails.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from align.cli import main  # noqa: E402

if __name__ == "__main__":
    main("forward", __doc__.splitlines()[0])
