"""Reading upstream PyTorch checkpoints safely and unwrapping their state_dict.

Released checkpoints come as a plain state_dict, or wrapped: SimpleCV writes
``{'model': sd, 'opt': ..., 'global_step': n}``, mmengine/mmcv write
``{'meta': ..., 'state_dict': sd, 'message_hub': <mmengine objects>, ...}``, and scripts like RMSIN's
``train.py`` save ``{'model': sd, 'args': argparse.Namespace, ...}``. Keys may carry DDP's ``module.`` prefix.
``.safetensors`` files are read as they are.

Loading never executes pickled code, in the zip format, the legacy format
(``_use_new_zipfile_serialization=False``) and plain pickles alike: ``torch.load(weights_only=True)`` is tried
first; if the file holds objects outside torch's allow-list (mmengine's ``HistoryBuffer``, numpy scalars, an
``argparse.Namespace``), every pickle of the file -- the legacy format's header pickles included -- is read by
paddle_rs's :class:`~paddle_rs.utils.safe_pickle.RestrictedUnpickler` with torch's tensor globals added. It loads
allow-listed framework records as inert stand-ins (mmengine need not be installed) and refuses any other class
or function, naming it; ``allow`` admits more classes as stand-ins (``--allow-class``).
"""
import pickle
import types
from collections import OrderedDict

import torch

from paddle_rs.utils.safe_pickle import Opaque, RestrictedUnpickler, UnsafePickleError

__all__ = ["CheckpointError", "Opaque", "UnsafePickleError", "load_torch_checkpoint", "unwrap_state_dict"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted; the message says why and what to do."""


def _torch_globals():
    from torch import _weights_only_unpickler as wou   # private, but the allow-list torch itself uses
    return dict(wou._get_allowed_globals())


def _restricted_pickle_module(source, allow=()):
    """A ``pickle``-like module for ``torch.load(pickle_module=...)``: its ``Unpickler`` *and* its ``load`` (which
    torch's legacy format uses for its header pickles) are restricted; errors name ``source``."""
    extra = _torch_globals()

    class Unpickler(RestrictedUnpickler):
        def __init__(self, file, **kwargs):
            super().__init__(file, source=source, extra=extra, allow=allow, **kwargs)

    mod = types.ModuleType("paddle_rs_restricted_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kwargs: Unpickler(f, **kwargs).load()
    mod.UnpicklingError = pickle.UnpicklingError
    return mod


def _is_safetensors(path):
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_torch_checkpoint(path, allow=()):
    """Load ``path`` (``.pth`` / ``.pt`` in any torch format, a plain pickle, or ``.safetensors``) on CPU without
    executing pickled code; returns the raw object. ``allow``: further class names loaded as inert stand-ins."""
    import os
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist" if not os.path.exists(path) else
                              f"checkpoint {path!r} is not a file")
    if _is_safetensors(path):
        try:
            from safetensors.torch import load_file
            return load_file(path)
        except Exception as e:
            raise CheckpointError(f"{path!r} is not a readable .safetensors file ({type(e).__name__}: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # holds non-allow-listed objects (mmengine meta): fall back to the restricted unpickler
    except RuntimeError as e:
        raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint ({e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=_restricted_pickle_module(path, allow))
    except UnsafePickleError as e:
        raise CheckpointError(str(e)) from e
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
