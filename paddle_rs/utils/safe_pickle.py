"""Reading pickled files without running code from them.

A pickle is a small program: besides building lists and dicts it can import any callable and call it
(``os.system``, ``eval``, ...). ``pickle.load``, ``paddle.load`` and ``torch.load(weights_only=False)`` run that
program as it is, so a weight file downloaded from anywhere can execute code on the machine that opens it.

:class:`RestrictedUnpickler` builds only data. A global the file asks for is resolved from three lists:

* **data** (:data:`DATA_GLOBALS`): Python's containers and numpy's array / scalar / dtype reconstruction -- what
  ``paddle.save`` writes for a state dict or an optimizer state;
* **extra globals** a caller names for its own file kind (torch's tensor rebuild functions for ``.pth`` files,
  Paddle's RNG ``GeneratorState`` for the trainer's ``rng_state.pkl``);
* **framework records** (:data:`STAND_INS`): classes that released checkpoints pickle beside their weights
  (mmengine's ``HistoryBuffer``, ``argparse.Namespace``, ...). They become inert stand-ins (:class:`Opaque`) that
  keep the pickled data and run nothing, so mmengine need not be installed.

Anything else is refused with :class:`UnsafePickleError`, which names the file and the class: nothing of the file's
program ran. A user who trusts a file and knows a class to be plain data can admit it as a stand-in
(``allow=("pkg.mod.Class",)``; the converters' ``--allow-class``).
"""
import _compat_pickle
import collections
import io
import os
import pickle

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "Opaque", "safe_load", "safe_loads", "DATA_GLOBALS",
           "STAND_INS"]

# classes some released checkpoints pickle beside their weights; loaded as inert records
STAND_INS = frozenset({
    "mmengine.logging.history_buffer.HistoryBuffer",     # mmengine message_hub log_scalars
    "mmengine.logging.message_hub.MessageHub",
    "mmengine.config.config.ConfigDict",
    "mmcv.utils.config.ConfigDict",                       # mmcv 1.x meta
    "argparse.Namespace",                                 # the `args` of scripts that save them (RMSIN's train.py)
    "pathlib.PosixPath", "pathlib.WindowsPath",
    "datetime.datetime", "datetime.date", "datetime.timedelta",
})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickled file asks for a class or function outside the allow-lists; nothing of it was run."""

    def __init__(self, source, qualname):
        self.source, self.qualname = source, qualname
        hint = ""
        if qualname.rsplit(".", 1)[-1][:1].isupper():          # a class (by convention), not a function
            hint = (f" If you trust this file and {qualname} holds only data, admit it as an inert record with "
                    f"--allow-class {qualname}.")
        super().__init__(f"{source}: refused to load: the file asks for {qualname!r}, which is neither data nor "
                         f"a known framework record; loading it would run code from the file.{hint}")


class Opaque:
    """Stand-in for a pickled object of an allow-listed framework class: keeps its data, runs nothing."""

    qualname = "?"
    args, kwargs, state = (), {}, None       # (objects built by NEWOBJ never run __init__)

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<Opaque {self.qualname}>"


_STAND_IN_CLASSES = {}


def _stand_in(qualname):
    cls = _STAND_IN_CLASSES.get(qualname)
    if cls is None:
        cls = _STAND_IN_CLASSES[qualname] = type(qualname.rsplit(".", 1)[-1], (Opaque,), {"qualname": qualname})
    return cls


class _NdarrayMarker:
    """What the name ``numpy.ndarray`` resolves to: it can only be handed to ``_reconstruct``. The real class would
    be callable as ``ndarray(shape, dtype('O'), buffer)``, which reads raw bytes of the file as object pointers."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("the file calls numpy.ndarray directly (only numpy's own array record, "
                                     "_reconstruct + state, is admitted)")


def _checked_dtype(dt):
    if dt.hasobject or dt.kind == "T":
        raise pickle.UnpicklingError(f"the file holds a numpy {dt} array (Python objects or strings by pointer); "
                                     "weights are numeric arrays")
    return dt


def _data_globals():
    import codecs

    import numpy as np
    try:
        from numpy._core import multiarray as ma
    except ImportError:      # numpy < 2
        from numpy.core import multiarray as ma

    def reconstruct(subtype, shape, dtype_code):
        if subtype is not _NdarrayMarker:
            raise pickle.UnpicklingError("numpy array record of another class than ndarray")
        return ma._reconstruct(np.ndarray, shape, dtype_code)

    def dtype(*args):
        return _checked_dtype(np.dtype(*args))

    def scalar(dt, *args):
        return ma.scalar(_checked_dtype(dt), *args)

    out = {
        "builtins.dict": dict, "builtins.list": list, "builtins.tuple": tuple, "builtins.set": set,
        "builtins.frozenset": frozenset, "builtins.bytearray": bytearray, "builtins.bytes": bytes,
        "builtins.complex": complex, "builtins.slice": slice, "builtins.range": range,
        "collections.OrderedDict": collections.OrderedDict,
        "_codecs.encode": codecs.encode,               # bytes in protocol-2 pickles (numpy array payloads)
        "numpy.ndarray": _NdarrayMarker, "numpy.dtype": dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}._reconstruct"] = reconstruct
        out[f"{mod}.scalar"] = scalar
    # Paddle's DenseTensor pickles as (eval, ('data', {'data': array})): only that exact form is admitted
    out["builtins.eval"] = _paddle_dense_tensor
    return out


def _paddle_dense_tensor(expr, env=None, *rest):
    import numpy as np
    if expr == "data" and isinstance(env, dict) and set(env) == {"data"} and isinstance(env["data"], np.ndarray) \
            and not rest:
        return env["data"]
    raise pickle.UnpicklingError("the file calls eval() on something other than Paddle's tensor record")


DATA_GLOBALS = None      # filled on first use (numpy is imported lazily)


def _buildable():
    """Types whose instances BUILD (``__setstate__`` / ``__dict__`` update) may fill: numpy arrays and dtypes (their
    own state records), ordered dicts and the stand-ins. BUILD on anything else -- an allow-listed function or
    class itself -- would change it for the whole process, so it is refused."""
    import numpy as np
    return (Opaque, np.ndarray, np.dtype, collections.OrderedDict)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only data globals, ``extra`` ones and stand-ins (see the module doc).

    It is Python's own unpickler (``pickle._Unpickler``, opcode for opcode) with three restrictions: ``find_class``
    (the allow-lists), ``BUILD`` (only on instances of the types of :func:`_buildable` plus ``buildable``), and no
    persistent ids unless a caller installs a ``persistent_load``. ``source`` names the file in errors; ``extra``:
    ``{"module.name": object}`` admitted for this file kind; ``allow``: further qualified class names loaded as
    stand-ins."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, source="<pickle>", extra=None, allow=(), buildable=(), **kwargs):
        super().__init__(file, **kwargs)
        global DATA_GLOBALS
        if DATA_GLOBALS is None:
            DATA_GLOBALS = _data_globals()
        self.source = source
        self.extra = dict(extra or {})
        self.stand_ins = STAND_INS | frozenset(allow)
        self.buildable = _buildable() + tuple(buildable)

    def load_build(self):
        inst = self.stack[-2]          # [..., inst, state]
        if isinstance(inst, type) or not isinstance(inst, self.buildable):
            raise pickle.UnpicklingError(f"{self.source}: refused to load: the file sets the state of "
                                         f"{getattr(inst, '__qualname__', type(inst).__qualname__)!r}, which is "
                                         "not a data record")
        super().load_build()
    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        # Python 2 names in protocol 0-2 pickles (__builtin__.tuple, copy_reg, ...), as pickle itself maps them
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname in self.extra:
            return self.extra[qualname]
        if qualname in DATA_GLOBALS:
            return DATA_GLOBALS[qualname]
        if qualname in self.stand_ins:
            return _stand_in(qualname)
        raise UnsafePickleError(self.source, qualname)


def safe_load(path, *, extra=None, allow=(), buildable=(), encoding="latin1"):
    """Unpickle the file at ``path`` with :class:`RestrictedUnpickler`; errors name ``path``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, source=path, extra=extra, allow=allow, buildable=buildable,
                                   encoding=encoding).load()


def safe_loads(data: bytes, *, source="<bytes>", extra=None, allow=(), buildable=(), encoding="latin1"):
    return RestrictedUnpickler(io.BytesIO(data), source=source, extra=extra, allow=allow, buildable=buildable,
                               encoding=encoding).load()
