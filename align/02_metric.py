"""Metric parity: confusion-matrix metrics under each NaN policy, on shared and model predictions.

Usage: python align/02_metric.py [--model NAME|all] [--out DIR] [--full]
Writes reprod_log files metric_torch.npy / metric_paddle.npy, metric_diff.log and a strict
metric_strict.json per model under --out; exits non-zero when any key fails.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from align.cli import main  # noqa: E402

if __name__ == "__main__":
    main("metric", __doc__.splitlines()[0])
