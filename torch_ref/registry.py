"""Model registry: ``name -> builder`` plus the metadata the tools need.

Mirrored by ``paddle_rs/registry.py`` (same names, same metadata), so that every
CLI (align/, convert/, deploy/, tools/) can build either side of a model from one
name. A model file registers its variants with :func:`register_model`; the
modules below ``torch_ref.models`` are imported on first use, so adding a model
never means editing a central list.
"""
import dataclasses
import importlib
import pkgutil
from typing import Callable, Dict, List


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    task: str            # 'seg' | 'cls' | ...
    family: str          # parity/conversion recipe family, e.g. 'factseg'
    defaults: Dict       # default constructor kwargs (documentation + model.yml)


_REGISTRY: Dict[str, ModelEntry] = {}
_LOADED = False


def register_model(name: str, *, task: str, family: str, **defaults):
    """Decorator: register ``builder(**kwargs) -> nn.Module`` under ``name``."""

    def deco(fn):
        if name in _REGISTRY:
            raise KeyError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, task, family, dict(defaults))
        return fn

    return deco


def _load_all(package: str) -> None:
    global _LOADED
    if _LOADED:
        return
    pkg = importlib.import_module(package)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.ispkg and not mod.name.startswith("_"):
            importlib.import_module(f"{package}.{mod.name}")
    _LOADED = True


def list_models() -> List[str]:
    """Names of all registered models, sorted."""
    _load_all(__package__ + ".models")
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _load_all(__package__ + ".models")
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_model(name: str, **overrides):
    """Build model ``name``; ``overrides`` replace the registered default kwargs."""
    entry = get_entry(name)
    kwargs = dict(entry.defaults)
    kwargs.update(overrides)
    return entry.builder(**kwargs)
