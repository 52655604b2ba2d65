"""Losses, built from the ``loss`` section of a config: ``build_loss(cfg)(model_outputs, labels)``.

Loss modules in this package register their classes with :func:`register_loss`; the
package is scanned on first use (like the model registry), so a new loss is one new file.
A registered class is called as ``loss(*outputs, labels)`` when the model returns a tuple
(FactSeg's ``(fg, bi)``) and ``loss(outputs, labels)`` otherwise.
"""
import importlib
import pkgutil

_LOSSES = {}


def register_loss(name):
    def deco(cls):
        if name in _LOSSES:
            raise KeyError(f"loss {name!r} registered twice")
        _LOSSES[name] = cls
        return cls
    return deco


def _load_all():
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


def build_loss(cfg):
    cfg = dict(cfg)
    kind = cfg.pop("type")
    _load_all()
    if kind not in _LOSSES:
        raise ValueError(f"unknown loss type {kind!r}; known: {', '.join(sorted(_LOSSES))}")
    return _Unpack(_LOSSES[kind](**cfg))


class _Unpack:
    """Adapts ``loss(*outputs, labels)`` to the uniform ``criterion(outputs, labels)``."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, outputs, labels):
        if isinstance(outputs, (tuple, list)):
            return self.loss(*outputs, labels)
        return self.loss(outputs, labels)
