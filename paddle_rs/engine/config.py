"""YAML configs with ``_base_`` inheritance and command-line overrides.

File format (``configs/<model>/<dataset>.yaml``)::

    _base_: ../factseg/isaid.yaml          # str or list of str, relative to this file; later bases win
    train: {iters: 100}                    # dicts merge recursively into the base
    eval:
      _delete_: true                       # replace the base's dict instead of merging into it
      mode: whole

Rules:

- A child value replaces the base value, except that two dicts are merged key by key (recursively). Lists
  are replaced as a whole.
- ``_delete_: true`` inside a child dict drops the base's dict at that key first (mmcv semantics).
- Overrides (``a.b.c=value``) are applied after inheritance. The value is parsed as a YAML scalar / flow
  collection (``4``, ``0.5``, ``1e-4``, ``true``, ``null``, ``[1, 2]``, ``{a: 1}``); a number written
  without a dot (``1e-4``, which YAML 1.1 reads as a string) is still read as a float. Integer path parts
  index lists (``train_transforms.0.RandomCrop.crop_size=512``). A missing intermediate key creates a dict.

Command-line forms understood by :func:`parse_cli_overrides`: ``--key=value``, ``--a.b=value``,
``--opt a.b=value [c=value ...]`` and ``--opt=a.b=value`` (repeatable).
"""
import copy
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["load_config", "merge_dicts", "apply_overrides", "parse_value", "parse_cli_overrides",
           "set_by_path", "get_by_path", "dump_config", "save_config", "ConfigError"]

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"


class ConfigError(ValueError):
    """A config file or override that cannot be used (message names the file / key)."""


def _read_yaml_file(path: str) -> Dict:
    from ..deploy.model_yml import load_yaml

    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        data = load_yaml(text)
    except Exception as e:  # yaml.YAMLError or YamlSubsetError
        raise ConfigError(f"{path}: cannot parse YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config must be a mapping, got {type(data).__name__}")
    return data


def merge_dicts(base: Dict, child: Dict) -> Dict:
    """Recursive merge; ``child`` wins. Neither input is modified."""
    out = copy.deepcopy(base)
    for k, v in child.items():
        if isinstance(v, dict):
            v = dict(v)
            delete = bool(v.pop(DELETE_KEY, False))
            if not delete and isinstance(out.get(k), dict):
                out[k] = merge_dicts(out[k], v)
            else:
                out[k] = _strip_delete(v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _strip_delete(v):
    if isinstance(v, dict):
        return {k: _strip_delete(x) for k, x in v.items() if k != DELETE_KEY}
    if isinstance(v, list):
        return [_strip_delete(x) for x in v]
    return copy.deepcopy(v)


def _load_with_bases(path: str, stack: Tuple[str, ...]) -> Dict:
    path = os.path.abspath(path)
    if path in stack:
        chain = " -> ".join(stack + (path,))
        raise ConfigError(f"circular _base_ inheritance: {chain}")
    if not os.path.isfile(path):
        where = f" (base of {stack[-1]})" if stack else ""
        raise ConfigError(f"config file not found: {path}{where}")
    data = _read_yaml_file(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return _strip_delete(data)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    merged: Dict = {}
    for b in bases:
        bpath = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
        merged = merge_dicts(merged, _load_with_bases(bpath, stack + (path,)))
    return merge_dicts(merged, data)


def load_config(path: str, overrides: Optional[Iterable[str]] = None, check_keys: bool = True) -> Dict:
    """Load ``path`` with its ``_base_`` chain, then apply ``overrides`` (``'a.b=value'`` strings or a
    ``{dotted_key: value}`` dict). Records the absolute file path under ``_config_path``.

    ``check_keys``: a key that the trainer does not know (:mod:`paddle_rs.engine.schema`), in the file or in an
    override, is a :class:`ConfigError` naming it and the nearest valid key."""
    from .schema import check_config_keys

    cfg = _load_with_bases(os.fspath(path), ())
    if check_keys:
        check_config_keys(cfg, os.fspath(path), ConfigError)
    if overrides:
        items = list(overrides.items()) if isinstance(overrides, dict) else \
            [_split_assignment(o) for o in overrides]
        cfg = apply_overrides(cfg, dict(items) if isinstance(overrides, dict) else list(overrides))
        if check_keys:
            for k, v in items:
                check_config_keys(cfg, f"override {k}={v}", ConfigError, only=[k])
    cfg["_config_path"] = os.path.abspath(os.fspath(path))
    return cfg


# ----------------------------------------------------------------------------------------------------------
# overrides
# ----------------------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A YAML scalar / flow collection; ``1e-4``-style numbers become floats."""
    from ..deploy.model_yml import load_yaml

    s = text.strip()
    if s == "":
        return ""
    try:
        v = load_yaml(s)
    except Exception:
        return s
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in ".eE") and not v.lower().startswith(("inf", "nan")) \
                else v
        except ValueError:
            return v
    return v


def _split_path(key: str) -> List[str]:
    parts = key.strip().split(".")
    if not key.strip() or any(p == "" for p in parts):
        raise ConfigError(f"bad override key {key!r}")
    return parts


def get_by_path(cfg: Dict, key: str, default=None):
    cur: Any = cfg
    for p in _split_path(key):
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.lstrip("-").isdigit() and -len(cur) <= int(p) < len(cur):
            cur = cur[int(p)]
        else:
            return default
    return cur


def set_by_path(cfg: Dict, key: str, value: Any) -> None:
    """Set ``cfg[a][b][c] = value`` for ``key = 'a.b.c'`` (list indices allowed; dicts created)."""
    parts = _split_path(key)
    cur: Any = cfg
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            if not p.lstrip("-").isdigit() or not -len(cur) <= int(p) < len(cur):
                raise ConfigError(f"override {key!r}: {'.'.join(parts[:i])} is a list of {len(cur)} items; "
                                  f"{p!r} is not a valid index")
            cur = cur[int(p)]
            continue
        if not isinstance(cur, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:i]) or '<root>'} is a "
                              f"{type(cur).__name__}, not a mapping")
        if cur.get(p) is None:
            cur[p] = {}
        cur = cur[p]
    last = parts[-1]
    if isinstance(cur, list):
        if not last.lstrip("-").isdigit() or not -len(cur) <= int(last) < len(cur):
            raise ConfigError(f"override {key!r}: {last!r} is not a valid index of a {len(cur)}-item list")
        cur[int(last)] = value
    elif isinstance(cur, dict):
        cur[last] = value
    else:
        raise ConfigError(f"override {key!r}: parent is a {type(cur).__name__}, not a mapping")


def apply_overrides(cfg: Dict, overrides) -> Dict:
    """Return a copy of ``cfg`` with ``overrides`` applied (``['a.b=1', ...]`` or ``{'a.b': 1}``; string
    values in the dict form are parsed like command-line values)."""
    out = copy.deepcopy(cfg)
    items = overrides.items() if isinstance(overrides, dict) else [_split_assignment(o) for o in overrides]
    for k, v in items:
        set_by_path(out, k, parse_value(v) if isinstance(v, str) else v)
    return out


def _split_assignment(item: str) -> Tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override must be key=value, got {item!r}")
    k, v = item.split("=", 1)
    return k.strip(), v


def parse_cli_overrides(argv: Sequence[str]) -> List[str]:
    """Collect ``key=value`` overrides from leftover command-line words (see the module docstring).

    Raises :class:`ConfigError` on anything it does not understand, so typos are not silently ignored.
    """
    out: List[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        if a in ("--opt", "--opts", "-o"):
            i += 1
            if i >= len(argv) or argv[i].startswith("--"):
                raise ConfigError(f"{a} needs at least one key=value")
            while i < len(argv) and not argv[i].startswith("--"):
                _split_assignment(argv[i])
                out.append(argv[i])
                i += 1
            continue
        if a.startswith(("--opt=", "--opts=")):
            item = a.split("=", 1)[1]
            _split_assignment(item)
            out.append(item)
        elif a.startswith("--") and "=" in a:
            out.append(a[2:])
        elif a.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{a[2:]}={argv[i + 1]}")
            i += 1
        else:
            raise ConfigError(f"unrecognised argument {a!r} (use --key=value or --opt a.b=value)")
        i += 1
    return out


# ----------------------------------------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------------------------------------
def dump_config(cfg: Dict) -> str:
    """Deterministic YAML text of a resolved config (keys sorted; see ``deploy.model_yml.dump_yaml``)."""
    from ..deploy.model_yml import dump_yaml

    return dump_yaml({k: v for k, v in cfg.items() if not k.startswith("_config")})


def save_config(cfg: Dict, path: str) -> str:
    from ..deploy.model_yml import write_yaml

    write_yaml(path, {k: v for k, v in cfg.items() if not k.startswith("_config")})
    return path
