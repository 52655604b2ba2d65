"""Programmatic conversion API shared by convert/*.py, align/ and the tests.

The align scripts move torch weights to Paddle through exactly these functions,
so every parity run also exercises the converter.
"""
import os
import tempfile

import numpy as np

from .checkpoint import CheckpointError, load_torch_checkpoint, unwrap_state_dict
from .rules import paddle_to_torch, torch_to_paddle


def build_pair(name, **overrides):
    """The torch reference and the Paddle port of ``name``, built with the same options."""
    import paddle_rs
    import torch_ref
    return torch_ref.build_model(name, **overrides), paddle_rs.build_model(name, **overrides)


def copy_torch_to_paddle(torch_model, paddle_model):
    """Load ``torch_model``'s weights into ``paddle_model`` (strict); returns the conversion report."""
    import paddle
    sd, report = torch_to_paddle(torch_model.state_dict(), torch_model, paddle_model)
    load_paddle_strict(paddle_model, sd)
    return report


def load_paddle_strict(paddle_model, state_dict, source="state_dict"):
    """``set_state_dict`` that fails on any missing, unexpected or mis-shaped key (Paddle only warns)."""
    import paddle
    own = paddle_model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shaped = [f"{k}: file {list(np.shape(v))} vs model {list(own[k].shape)}" for k, v in state_dict.items()
              if k in own and list(np.shape(v)) != list(own[k].shape)]
    problems = [("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)]
    if any(v for _, v in problems):
        msg = "; ".join(f"{n} keys ({len(v)}): {', '.join(v[:20])}{' ...' if len(v) > 20 else ''}"
                        for n, v in problems if v)
        raise CheckpointError(f"{source} does not match the model: {msg}")
    tensors = {k: (v if isinstance(v, paddle.Tensor) else paddle.to_tensor(np.asarray(v))) for k, v in
               state_dict.items()}
    missing2, unexpected2 = paddle_model.set_state_dict(tensors)
    if missing2 or unexpected2:
        raise CheckpointError(f"{source}: Paddle reported missing {missing2} / unexpected {unexpected2}")


def convert_checkpoint(name, src, **overrides):
    """Read an upstream torch checkpoint and return ``(paddle_state_dict, report)`` for model ``name``."""
    sd = unwrap_state_dict(load_torch_checkpoint(src), source=src)
    tm, pm = build_pair(name, **overrides)
    return torch_to_paddle(sd, tm, pm)


def atomic_save(obj, dst, saver):
    """Write via a temporary file in the destination folder, then rename: no half-written files."""
    d = os.path.dirname(os.path.abspath(dst))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.basename(dst), dir=d)
    os.close(fd)
    try:
        saver(obj, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_paddle(sd, dst):
    import paddle
    atomic_save({k: np.asarray(v) for k, v in sd.items()}, dst, paddle.save)


def save_torch(sd, dst):
    import torch
    atomic_save(sd, dst, torch.save)


__all__ = ["build_pair", "copy_torch_to_paddle", "load_paddle_strict", "convert_checkpoint", "save_paddle",
           "save_torch", "torch_to_paddle", "paddle_to_torch", "CheckpointError"]
