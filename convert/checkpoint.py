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
    torch's legacy format uses for its header pickles) are restricted; BUILD may fill tensors besides the data
    types; a persistent id must name a ``storage`` (torch's legacy format also knows ``module`` records, whose
    loading writes a source patch file); errors name ``source``."""
    extra = _torch_globals()

    class Unpickler(RestrictedUnpickler):
        def __init__(self, file, **kwargs):
            self._persistent = None
            super().__init__(file, source=source, extra=extra, allow=allow,
                             buildable=(torch.Tensor, torch.nn.Parameter), **kwargs)

        @property
        def persistent_load(self):
            def checked(pid):
                if self._persistent is None or not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                    raise pickle.UnpicklingError(f"{source}: refused to load: a persistent record other than a "
                                                 f"tensor storage ({str(pid)[:60]!r})")
                return self._persistent(pid)
            return checked

        @persistent_load.setter
        def persistent_load(self, fn):            # torch installs its storage loader here
            self._persistent = fn

    mod = types.ModuleType("paddle_rs_restricted_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kwargs: Unpickler(f, **kwargs).load()
    mod.UnpicklingError = pickle.UnpicklingError
    return mod


def _is_safetensors(head):
    return len(head) >= 9 and head[8:9] == b"{"


def load_torch_checkpoint(path, allow=()):
    """Load ``path`` (``.pth`` / ``.pt`` in any torch format, a plain pickle, or ``.safetensors``) on CPU without
    executing pickled code; returns the raw object. ``allow``: further class names loaded as inert stand-ins.

    The file is read once into memory, so both attempts see the same bytes; a TorchScript archive (which torch
    would hand to ``torch.jit.load``) is refused."""
    import io
    import os
    import zipfile
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist" if not os.path.exists(path) else
                              f"checkpoint {path!r} is not a file")
    with open(path, "rb") as f:
        data = f.read()
    if _is_safetensors(data[:9]):
        try:
            from safetensors.torch import load as load_bytes
            return load_bytes(data)
        except Exception as e:
            raise CheckpointError(f"{path!r} is not a readable .safetensors file ({type(e).__name__}: {e})") from e
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path!r} is a damaged zip archive ({e})") from e
        if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names):
            raise CheckpointError(f"{path!r} is a TorchScript archive, not a checkpoint: save the model's "
                                  "state_dict() with torch.save and convert that")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # holds non-allow-listed objects (mmengine meta): fall back to the restricted unpickler
    except Exception as e:
        raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False,
                          pickle_module=_restricted_pickle_module(path, allow))
    except UnsafePickleError as e:
        raise CheckpointError(str(e)) from e
    except Exception as e:
        msg = str(e)
        raise CheckpointError(msg if msg.startswith(path) else
                              f"{path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e


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
