"""Reading upstream PyTorch checkpoints safely and unwrapping their state_dict.

Released checkpoints come as a plain state_dict, or wrapped: SimpleCV writes
``{'model': sd, 'opt': ..., 'global_step': n}``, mmengine/mmcv write
``{'meta': ..., 'state_dict': sd, 'message_hub': <mmengine objects>, ...}``.
Keys may carry DDP's ``module.`` prefix.

Loading never executes pickled code: ``torch.load(weights_only=True)`` is tried
first; if the file holds objects outside torch's allow-list (mmengine's
``HistoryBuffer``, numpy scalars, ...), a restricted unpickler resolves only
allow-listed globals and replaces every other class with an inert
:class:`Opaque` record, so mmengine need not be installed.
"""
import pickle
import types
from collections import OrderedDict

import torch

__all__ = ["CheckpointError", "Opaque", "load_torch_checkpoint", "unwrap_state_dict"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted; the message says why and what to do."""


class Opaque:
    """Stand-in for a pickled object of a class we refuse to import. Holds its data, runs nothing."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<Opaque {self.qualname}>"


def _opaque_class(module, name):
    return type(name, (Opaque,), {"qualname": f"{module}.{name}"})


def _allowed_globals():
    from torch import _weights_only_unpickler as wou   # private, but the allow-list torch itself uses
    allowed = dict(wou._get_allowed_globals())
    try:  # numpy arrays/scalars inside mmengine meta (reconstruction only, no code)
        import numpy as np
        try:
            from numpy._core import multiarray as ma
        except ImportError:  # numpy < 2
            from numpy.core import multiarray as ma
        allowed.update({
            "numpy.core.multiarray._reconstruct": ma._reconstruct,
            "numpy._core.multiarray._reconstruct": ma._reconstruct,
            "numpy.core.multiarray.scalar": ma.scalar,
            "numpy._core.multiarray.scalar": ma.scalar,
            "numpy.ndarray": np.ndarray,
            "numpy.dtype": np.dtype,
        })
    except Exception:  # pragma: no cover - numpy layout changes
        pass
    allowed["builtins.dict"] = dict
    allowed["builtins.list"] = list
    allowed["builtins.tuple"] = tuple
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    _allowed = None

    def find_class(self, module, name):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        key = f"{module}.{name}"
        if key in self._allowed:
            return self._allowed[key]
        if module.startswith("torch") and "Storage" in name:   # legacy storages
            return super().find_class(module, name)
        return _opaque_class(module, name)


_restricted_pickle = types.ModuleType("restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler
_restricted_pickle.load = pickle.load
_restricted_pickle.__name__ = "restricted_pickle"


def load_torch_checkpoint(path):
    """Load ``path`` on CPU without executing pickled code; returns the raw object."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    except pickle.UnpicklingError:
        pass  # holds non-allow-listed objects (mmengine meta): fall back to the restricted unpickler
    except RuntimeError as e:
        raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint ({e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except Exception as e:
        raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e


def unwrap_state_dict(obj, source="checkpoint"):
    """Return ``{key: tensor}`` from a plain or wrapped checkpoint, ``module.`` stripped."""
    sd = obj
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not sd or not any(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(
            f"{source}: no state_dict found (expected a dict of tensors, or one under 'state_dict' or 'model'; "
            f"top-level keys: {sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__})")
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {bad[:10]}")
    out = OrderedDict()
    for k, v in sd.items():
        nk = k[len("module."):] if k.startswith("module.") else k
        if nk in out:
            raise CheckpointError(f"{source}: key {nk!r} appears both with and without 'module.'")
        out[nk] = v
    return out
