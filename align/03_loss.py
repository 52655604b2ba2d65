"""Loss parity: loss values and gradients w.r.t. the logits.

Usage: python align/03_loss.py [--model NAME|all] [--out DIR] [--full]
Writes reprod_log files loss_torch.npy / loss_paddle.npy, loss_diff.log and a strict
loss_strict.json per model under --out; exits non-zero when any key fails.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from align.cli import main  # noqa: E402

if __name__ == "__main__":
    main("loss", __doc__.splitlines()[0])
