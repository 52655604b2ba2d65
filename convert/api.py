"""Programmatic conversion API shared by convert/*.py, align/ and the tests.

The align scripts move torch weights to Paddle through exactly these functions,
so every parity run also exercises the converter.
"""
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

    from paddle_rs.utils.io import StrictLoadError, load_weights_strict
    tensors = {k: (v if isinstance(v, paddle.Tensor) else paddle.to_tensor(np.asarray(v))) for k, v in
               state_dict.items()}
    try:
        load_weights_strict(paddle_model, tensors)
    except StrictLoadError as e:
        raise CheckpointError(f"{source} does not match the model: {e}") from e


def convert_checkpoint(name, src, allow=(), **overrides):
    """Read an upstream torch checkpoint and return ``(paddle_state_dict, report)`` for model ``name``.
    ``allow``: further pickled class names read as inert records (see :func:`load_torch_checkpoint`)."""
    sd = unwrap_state_dict(load_torch_checkpoint(src, allow=allow), source=src)
    tm, pm = build_pair(name, **overrides)
    return torch_to_paddle(sd, tm, pm)


def atomic_save(obj, dst, saver):
    """``saver(obj, path)`` through a temporary file and a rename: no half-written files."""
    from paddle_rs.utils.io import atomic_write_file
    atomic_write_file(dst, lambda tmp: saver(obj, tmp))


def save_paddle(sd, dst):
    """``.pdparams`` (a pickle of numpy arrays), or ``.safetensors`` by the suffix; written atomically."""
    from paddle_rs.utils.io import save_state_file
    save_state_file(sd, dst)


def save_torch(sd, dst):
    """``.pth`` (``torch.save``), or ``.safetensors`` by the suffix; written atomically."""
    import torch
    if str(dst).endswith(".safetensors"):
        from safetensors.torch import save_file
        atomic_save({k: v.detach().contiguous().clone() for k, v in sd.items()}, dst, save_file)
    else:
        atomic_save(sd, dst, torch.save)


__all__ = ["build_pair", "copy_torch_to_paddle", "load_paddle_strict", "convert_checkpoint", "save_paddle",
           "save_torch", "torch_to_paddle", "paddle_to_torch", "CheckpointError"]
