"""Argument helpers shared by convert/torch2paddle.py and convert/paddle2torch.py."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_opts(pairs):
    """``["num_classes=21", "perm_seed=0"]`` -> ``{'num_classes': 21, 'perm_seed': 0}`` (YAML scalars)."""
    import yaml
    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise SystemExit(f"--opt expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def add_common(ap):
    ap.add_argument("--model", required=True, help="registered model name (python -c 'import paddle_rs; "
                                                     "print(paddle_rs.list_models())')")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="model constructor override, e.g. num_classes=21 (repeatable)")
    ap.add_argument("--verify", action="store_true",
                    help="run torch_ref and paddle_rs on a random input with the converted weights and print the diff")
    ap.add_argument("--input_size", type=int, default=None, help="input size for --verify (default: model's)")


def deterministic_opts(name, opts):
    """``opts`` plus a fixed seed for every registered constructor option named ``*_seed`` that is None
    (e.g. RSMamba's ``perm_seed``: without it the shuffle permutations are drawn per forward, and torch and
    Paddle would draw different ones). Options the user set are kept."""
    from paddle_rs.registry import get_entry
    out = dict(opts)
    for k, v in get_entry(name).defaults.items():
        if k.endswith("_seed") and out.get(k, v) is None:
            out[k] = 0
    return out


def verify(name, torch_sd, paddle_sd, opts, input_size=None):
    """Forward both frameworks on one random input in eval mode; returns the max abs diff.

    Seed options are fixed (:func:`deterministic_opts`); the input size defaults to the model's
    ``default_input_size`` attribute, else 128.
    """
    import numpy as np
    import paddle
    import torch

    from convert.api import build_pair, load_paddle_strict
    det = deterministic_opts(name, opts)
    if det != dict(opts):
        print("verify: fixed " + ", ".join(f"{k}={v}" for k, v in det.items() if k not in opts or opts[k] != v)
              + " (deterministic forward in both frameworks)")
    tm, pm = build_pair(name, **det)
    tm.load_state_dict(torch_sd, strict=True)
    load_paddle_strict(pm, paddle_sd)
    tm.eval(), pm.eval()
    size = input_size or getattr(tm, "default_input_size", None) or 128
    x = np.random.RandomState(0).randn(1, getattr(tm, "in_channels", 3), size, size).astype("float32")
    with torch.no_grad():
        a = tm(torch.from_numpy(x))
    with paddle.no_grad():
        b = pm(paddle.to_tensor(x))
    a, b = a.numpy(), b.numpy()
    diff = float(np.abs(a - b).max())
    print(f"verify: {name} output {list(a.shape)}, max abs diff torch vs paddle = {diff:.3e}, "
          f"argmax agreement {float((a.argmax(1) == b.argmax(1)).mean()):.4%}")
    return diff
