"""Torch-free file helpers shared by training, export and conversion.

* :func:`atomic_write_file` -- write through a temporary file in the destination folder, then rename,
  so an interrupted write never leaves a half-written checkpoint or model;
* :func:`load_weights_strict` -- Paddle's ``set_state_dict`` only warns and skips on a mismatch
  (porting.md §1.1); this fails and names every missing, unexpected or mis-shaped key.
"""
import os
import tempfile
from typing import Callable

import numpy as np
import paddle
import paddle.nn as nn

_UMASK = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:                          # read once (os.umask is process-wide)
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def atomic_write_file(path: str, writer: Callable[[str], None]) -> str:
    """``writer(tmp_path)`` then ``os.replace(tmp_path, path)``; the temporary file is removed on failure."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix="_" + os.path.basename(path), dir=d)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())            # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class StrictLoadError(KeyError):
    """Missing, unexpected or mis-shaped keys when loading a state dict strictly."""

    def __init__(self, source, missing, unexpected, mismatched):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = []
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.mismatched:
            parts.append("shape mismatches ({}): {}".format(
                len(self.mismatched), ", ".join(f"{k} file {fs} vs model {ms}" for k, fs, ms in self.mismatched)))
        self.message = f"strict load of {source} failed: " + "; ".join(parts)
        super().__init__(self.message)

    def __str__(self):
        return self.message


def load_weights_strict(model: nn.Layer, weights) -> nn.Layer:
    """Load a ``.pdparams`` path or a state dict into ``model``; any missing, unexpected or mis-shaped key is
    a :class:`StrictLoadError` naming them (nothing is loaded then)."""
    source = weights if isinstance(weights, (str, os.PathLike)) else "state dict"
    state = paddle.load(os.fspath(weights)) if isinstance(weights, (str, os.PathLike)) else weights
    if not isinstance(state, dict):
        raise TypeError(f"{source}: expected a state dict, got {type(state).__name__}")
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = []
    for k in sorted(set(own) & set(state)):
        fs = list(np.shape(state[k])) if not isinstance(state[k], paddle.Tensor) else list(state[k].shape)
        ms = list(own[k].shape)
        if fs != ms:
            mismatched.append((k, fs, ms))
    if missing or unexpected or mismatched:
        raise StrictLoadError(source, missing, unexpected, mismatched)
    model.set_state_dict(state)
    return model
