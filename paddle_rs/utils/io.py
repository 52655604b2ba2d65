"""Torch-free file helpers shared by training, export and conversion.

* :func:`atomic_write_file` -- write through a temporary file in the destination folder, then rename,
  so an interrupted write never leaves a half-written checkpoint or model;
* :func:`load_weights_strict` -- Paddle's ``set_state_dict`` only warns and skips on a mismatch
  (porting.md §1.1); this fails and names every missing, unexpected or mis-shaped key;
* :func:`load_state_file` / :func:`load_pickle_file` -- read ``.pdparams`` / ``.pdopt`` / ``.safetensors`` files
  without running code from them (:mod:`paddle_rs.utils.safe_pickle`); every weight file the project opens goes
  through them, never through ``paddle.load``.
"""
import os

import numpy as np
import paddle
import paddle.nn as nn

from .fs import _umask, atomic_write_file  # noqa: F401  (paddle-free helpers, re-exported)


class WeightsFileError(ValueError):
    """A weights file that cannot be read safely; the message names the file and what to do."""


_PICKLE_MAGIC = b"\x80"
_ZIP_MAGIC = b"PK\x03\x04"


def _sniff(path: str) -> str:
    """``pickle`` | ``zip`` | ``safetensors`` | ``unknown`` from the first bytes of ``path``."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_PICKLE_MAGIC):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":              # u64 header length, then the JSON header
        return "safetensors"
    return "unknown"


def _check_file(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise WeightsFileError(f"{path} is a directory; pass the weights file inside it (e.g. "
                               f"{os.path.join(path, 'model.pdparams')})")
    return path


def load_pickle_file(path, *, extra=None, allow=(), buildable=()):
    """A pickled Paddle file (``.pdparams``, ``.pdopt``, ``rng_state.pkl``) read without running code from it:
    containers, numeric numpy arrays and scalars (plus ``extra`` globals, whose instances of ``buildable`` types may
    take their pickled state) only; tensors come back as numpy arrays."""
    from .safe_pickle import UnsafePickleError, safe_load
    path = _check_file(path)
    kind = _sniff(path)
    if kind == "zip":
        raise WeightsFileError(f"{path} is a PyTorch checkpoint (zip), not a Paddle file: convert it with "
                               f"python convert/torch2paddle.py --model NAME --src {path} --dst OUT.pdparams")
    if kind != "pickle":
        raise WeightsFileError(f"{path} is not a Paddle weights file (.pdparams / .pdopt pickle, or .safetensors); "
                               f"it starts with {_head_repr(path)}")
    try:
        obj = _unpack_paddle_pickle(safe_load(path, extra=extra, allow=allow, buildable=buildable))
        _check_numeric(obj, path)
    except UnsafePickleError as e:            # names the file and the class
        raise WeightsFileError(str(e)) from e
    except Exception as e:                    # truncated / corrupt / refused records
        msg = str(e)
        raise WeightsFileError(msg if msg.startswith(path) else
                               f"{path} is damaged or not a Paddle pickle ({type(e).__name__}: {e})") from e
    return obj


def _check_numeric(obj, path, depth=0):
    """Arrays in a weights file hold numbers: object or string dtypes (pointers) are refused."""
    if depth > 64:
        raise ValueError(f"{path}: containers nested more than 64 deep")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.kind == "T":
            raise ValueError(f"{path}: refused to load: an array of dtype {obj.dtype} (objects by pointer)")
    elif isinstance(obj, dict):
        for v in obj.values():
            _check_numeric(v, path, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _check_numeric(v, path, depth + 1)


def _unpack_paddle_pickle(obj):
    """What Paddle's own loader (``return_numpy=True``) does after unpickling: re-join the parts of a tensor that
    was split (saved with protocol 2, > 4 GB), drop the name table, unwrap Paddle 2.1's ``(name, array)`` records."""
    if isinstance(obj, dict):
        if "UnpackBigParamInfor@@" in obj:
            from paddle.framework.io_utils import _pack_loaded_dict
            obj = _pack_loaded_dict(obj)
        obj.pop("StructuredToParameterName@@", None)
        return type(obj)((k, _unpack_paddle_pickle(v)) for k, v in obj.items())
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return obj[1]
    if isinstance(obj, list):
        return [_unpack_paddle_pickle(v) for v in obj]
    return obj


def _head_repr(path: str) -> str:
    with open(path, "rb") as f:
        return repr(f.read(24))


def load_state_file(path, *, allow=()) -> dict:
    """``{name: numpy array}`` from a ``.pdparams`` (restricted unpickling, see :func:`load_pickle_file`) or a
    ``.safetensors`` file. A file that is not a flat dict of arrays is a :class:`WeightsFileError`."""
    path = _check_file(path)
    if _sniff(path) == "safetensors":
        try:
            from safetensors.numpy import load_file
            state = load_file(path)
        except Exception as e:
            raise WeightsFileError(f"{path} is not a readable .safetensors file ({type(e).__name__}: {e})") from e
    else:
        state = load_pickle_file(path, allow=allow)
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path}: expected a state dict (name -> array), found a {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise WeightsFileError(f"{path}: entries that are not arrays: {', '.join(map(str, bad[:10]))} -- is this "
                               "an optimizer state (.pdopt) or a training checkpoint rather than model weights?")
    return state


def save_state_file(state: dict, path) -> str:
    """Write ``{name: array}`` atomically as ``.safetensors`` (by the suffix) or as a ``.pdparams`` pickle."""
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in state.items()}
    if os.fspath(path).endswith(".safetensors"):
        from safetensors.numpy import save_file
        return atomic_write_file(path, lambda tmp: save_file(arrays, tmp))
    return atomic_write_file(path, lambda tmp: paddle.save(arrays, tmp))


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
    state = load_state_file(weights) if isinstance(weights, (str, os.PathLike)) else weights
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
