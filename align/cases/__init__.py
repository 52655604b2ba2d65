"""Per-family parity recipes used by align/0*_*.py.

A family module ``align/cases/<family>.py`` defines ``CASE``, a subclass of
:class:`align.cases.base.ParityCase`. The registry entry of each model names its
family, so adding a model family means adding one file here.
"""
import importlib


def get_case(model_name, **kwargs):
    import paddle_rs
    entry = paddle_rs.get_entry(model_name)
    try:
        mod = importlib.import_module(f"{__name__}.{entry.family}")
    except ModuleNotFoundError as e:
        raise NotImplementedError(f"no parity recipe for family {entry.family!r} (model {model_name!r}): "
                                  f"add align/cases/{entry.family}.py") from e
    return mod.CASE(model_name, **kwargs)


def default_models():
    """Models checked when no --model is given: each family decides which of its variants."""
    import paddle_rs
    names = []
    for name in paddle_rs.list_models():
        family = paddle_rs.get_entry(name).family
        try:
            mod = importlib.import_module(f"{__name__}.{family}")
        except ModuleNotFoundError:
            continue
        if name in getattr(mod.CASE, "default_models", (name,)):
            names.append(name)
    return names
