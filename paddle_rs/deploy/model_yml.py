"""``model.yml`` / ``pipeline.yml``: a deterministic writer and a reader that needs no PyYAML.

tipc.md §6 serialisation constraints:

- keys are sorted (determinism; the file diff of two exports is the diff of their contents);
- floats always carry a decimal point (``1.0e-05``, never ``1e-05``, which YAML 1.1 reads as a string);
  ``.inf`` / ``-.inf`` / ``.nan`` for non-finite values;
- no Python-specific tags: tuples and numpy arrays are written as lists, numpy scalars as plain numbers.

Output shape of the writer (also what :func:`load_yaml`'s subset parser reads):

- mappings are block style (``key: value`` / ``key:`` + an indented block), empty ones ``{}``;
- lists of scalars are flow style (``[0.485, 0.456, 0.406]``), empty lists ``[]``;
- other lists are block sequences at the parent key's indentation (``- Normalize:`` ...), as PyYAML writes
  them;
- strings are plain when that is unambiguous, else double-quoted (JSON escaping, a subset of YAML's).

The reader uses ``yaml.safe_load`` when PyYAML is importable, otherwise the subset parser, which also accepts
flow mappings, quoted strings and comments (so a hand-edited file still reads) and resolves scalars like
PyYAML's YAML 1.1 resolver (``1e-05`` stays a string in both).
"""
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple

__all__ = [
    "dump_yaml", "load_yaml", "write_yaml", "read_yaml",
    "write_model_yml", "read_model_yml", "write_pipeline_yml", "read_pipeline_yml",
    "make_model_yml", "make_pipeline_yml", "YamlSubsetError",
]


class YamlSubsetError(ValueError):
    """Raised by the subset parser on text outside the supported subset."""


# --------------------------------------------------------------------------------------------------------
# scalar resolution (YAML 1.1 core, as PyYAML's SafeLoader resolves plain scalars)
# --------------------------------------------------------------------------------------------------------
_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "y", "Y"}
_FALSE = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "n", "N"}
_INT_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
_INT_OTHER_RE = re.compile(r"^[-+]?(?:0b[0-1_]+|0x[0-9a-fA-F_]+|0[0-7_]+)$")
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?$|^[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?$")
_INF_RE = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN_RE = re.compile(r"^\.(?:nan|NaN|NAN)$")
# A string that may be written without quotes: conservative on purpose.
_SAFE_PLAIN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./+\-]*(?: [A-Za-z0-9_./+\-]+)*$")


def _resolve_plain(s: str):
    if s in _NULL:
        return None
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    if _INT_RE.match(s):
        return int(s.replace("_", ""))
    if _INT_OTHER_RE.match(s):
        t = s.replace("_", "")
        sign = -1 if t.startswith("-") else 1
        t = t.lstrip("+-")
        if t.startswith("0b"):
            return sign * int(t[2:], 2)
        if t.startswith("0x"):
            return sign * int(t[2:], 16)
        return sign * int(t, 8)
    if _FLOAT_RE.match(s):
        return float(s.replace("_", ""))
    if _INF_RE.match(s):
        return -math.inf if s.startswith("-") else math.inf
    if _NAN_RE.match(s):
        return math.nan
    return s


# --------------------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------------------
def _to_builtin(v):
    """numpy / tuple / Path -> plain Python containers and scalars."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None:
        if isinstance(v, np.ndarray):
            return [_to_builtin(x) for x in v.tolist()]
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.floating):
            return float(v)
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, dict):
        return {str(k) if not isinstance(k, str) else k: _to_builtin(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_builtin(x) for x in v]
    return v


def _fmt_float(x: float) -> str:
    if math.isnan(x):
        return ".nan"
    if math.isinf(x):
        return ".inf" if x > 0 else "-.inf"
    r = repr(float(x))
    if "e" in r or "E" in r:
        mant, exp = r.lower().split("e")
        if "." not in mant:
            mant += ".0"
        if exp[0] not in "+-":
            exp = "+" + exp
        return f"{mant}e{exp}"
    if "." not in r:
        r += ".0"
    return r


def _fmt_str(s: str) -> str:
    if _SAFE_PLAIN_RE.match(s) and _resolve_plain(s) == s and not s.startswith("-"):
        return s
    return json.dumps(s, ensure_ascii=False)


def _fmt_scalar(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _fmt_float(v)
    if isinstance(v, str):
        return _fmt_str(v)
    raise TypeError(f"cannot serialise {type(v).__name__} ({v!r}) to model.yml")


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _emit(v, indent: int, out: List[str]):
    """Emit the block representation of a non-scalar ``v`` at ``indent``."""
    pad = " " * indent
    if isinstance(v, dict):
        for k in sorted(v):
            if not isinstance(k, str):
                raise TypeError(f"model.yml keys must be strings, got {k!r}")
            x = v[k]
            key = _fmt_str(k)
            if _is_scalar(x):
                out.append(f"{pad}{key}: {_fmt_scalar(x)}")
            elif isinstance(x, dict):
                if not x:
                    out.append(f"{pad}{key}: {{}}")
                else:
                    out.append(f"{pad}{key}:")
                    _emit(x, indent + 2, out)
            else:  # list
                if all(_is_scalar(e) for e in x):
                    out.append(f"{pad}{key}: [{', '.join(_fmt_scalar(e) for e in x)}]")
                else:
                    out.append(f"{pad}{key}:")
                    _emit(x, indent, out)          # block sequence at the key's indentation
        return
    # block sequence
    for e in v:
        if _is_scalar(e):
            out.append(f"{pad}- {_fmt_scalar(e)}")
        elif isinstance(e, dict) and e:
            sub: List[str] = []
            _emit(e, indent + 2, sub)
            out.append(f"{pad}- {sub[0][indent + 2:]}")
            out.extend(sub[1:])
        elif isinstance(e, dict):
            out.append(f"{pad}- {{}}")
        elif all(_is_scalar(z) for z in e):
            out.append(f"{pad}- [{', '.join(_fmt_scalar(z) for z in e)}]")
        else:
            out.append(f"{pad}-")
            _emit(e, indent + 2, out)


def dump_yaml(obj: Any) -> str:
    """Serialise ``obj`` (dict at the top level) deterministically; see the module docstring."""
    obj = _to_builtin(obj)
    if not isinstance(obj, dict):
        raise TypeError("the top level of model.yml / pipeline.yml must be a mapping")
    out: List[str] = []
    _emit(obj, 0, out)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------------
# subset reader
# --------------------------------------------------------------------------------------------------------
def _strip_comment(line: str) -> str:
    """Remove a ``#`` comment that is outside quotes (``#`` must start the line or follow a space)."""
    q = None
    i = 0
    while i < len(line):
        c = line[i]
        if q:
            if q == '"' and c == "\\":
                i += 2
                continue
            if c == q:
                if q == "'" and i + 1 < len(line) and line[i + 1] == "'":
                    i += 2
                    continue
                q = None
        elif c in "\"'" and (i == 0 or line[i - 1] in " \t[{,:-"):
            q = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
            "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0",
            "L": "\u2028", "P": "\u2029"}
_HEX_LEN = {"x": 2, "u": 4, "U": 8}


def _unescape_double(body: str) -> str:
    """Body of a YAML double-quoted scalar (JSON escapes are a subset of these)."""
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1:i + 2]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in _HEX_LEN:
            n = _HEX_LEN[e]
            h = body[i + 2:i + 2 + n]
            if len(h) != n or not re.fullmatch(r"[0-9a-fA-F]+", h):
                raise YamlSubsetError(f"bad escape \\{e}{h} in {body!r}")
            out.append(chr(int(h, 16)))
            i += 2 + n
        else:
            raise YamlSubsetError(f"bad escape \\{e} in {body!r}")
    s = "".join(out)
    # JSON writes astral characters as surrogate pairs (\ud83d\ude00); join them
    return s.encode("utf-16", "surrogatepass").decode("utf-16") if any(0xD800 <= ord(ch) <= 0xDFFF for ch in s) else s


def _parse_quoted(s: str, i: int) -> Tuple[str, int]:
    """Parse a quoted string starting at ``s[i]``; return (value, index after the closing quote)."""
    q = s[i]
    if q == '"':
        j = i + 1
        while j < len(s):
            if s[j] == "\\":
                j += 2
                continue
            if s[j] == '"':
                return _unescape_double(s[i + 1:j]), j + 1
            j += 1
        raise YamlSubsetError(f"unterminated string in {s!r}")
    j = i + 1
    buf = []
    while j < len(s):
        if s[j] == "'":
            if j + 1 < len(s) and s[j + 1] == "'":
                buf.append("'")
                j += 2
                continue
            return "".join(buf), j + 1
        buf.append(s[j])
        j += 1
    raise YamlSubsetError(f"unterminated string in {s!r}")


class _Flow:
    """Recursive-descent parser for flow collections and scalars on one line."""

    def __init__(self, s: str):
        self.s = s
        self.i = 0

    def ws(self):
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def value(self, stops: str):
        self.ws()
        if self.i >= len(self.s):
            return None
        c = self.s[self.i]
        if c == "[":
            self.i += 1
            items = []
            self.ws()
            if self.s[self.i:self.i + 1] == "]":
                self.i += 1
                return items
            while True:
                items.append(self.value(",]"))
                self.ws()
                c = self.s[self.i:self.i + 1]
                self.i += 1
                if c == "]":
                    return items
                if c != ",":
                    raise YamlSubsetError(f"expected ',' or ']' in {self.s!r}")
                self.ws()
                if self.s[self.i:self.i + 1] == "]":   # trailing comma
                    self.i += 1
                    return items
        if c == "{":
            self.i += 1
            d = {}
            self.ws()
            if self.s[self.i:self.i + 1] == "}":
                self.i += 1
                return d
            while True:
                k = self.value(":,}")
                self.ws()
                if self.s[self.i:self.i + 1] == ":":
                    self.i += 1
                    v = self.value(",}")
                else:
                    v = None
                d[k] = v
                self.ws()
                c = self.s[self.i:self.i + 1]
                self.i += 1
                if c == "}":
                    return d
                if c != ",":
                    raise YamlSubsetError(f"expected ',' or '}}' in {self.s!r}")
                self.ws()
                if self.s[self.i:self.i + 1] == "}":
                    self.i += 1
                    return d
        if c in "\"'":
            v, self.i = _parse_quoted(self.s, self.i)
            return v
        # plain scalar: up to a stop character (':' only when followed by a space / end)
        j = self.i
        while j < len(self.s):
            ch = self.s[j]
            if ch in stops and ch != ":":
                break
            if ch == ":" and ":" in stops and (j + 1 == len(self.s) or self.s[j + 1] in " \t,]}"):
                break
            j += 1
        tok = self.s[self.i:j].strip()
        self.i = j
        return _resolve_plain(tok)


def _parse_inline(s: str):
    """A complete inline value (scalar or flow collection); everything must be consumed."""
    p = _Flow(s)
    v = p.value("")
    p.ws()
    if p.i != len(s):
        raise YamlSubsetError(f"trailing characters in {s!r}")
    return v


def _split_key(content: str) -> Optional[Tuple[Any, str]]:
    """If ``content`` is ``key: rest`` / ``key:`` return (key, rest), else None."""
    if content[:1] in "\"'":
        k, j = _parse_quoted(content, 0)
        rest = content[j:]
        if rest == ":" or rest.startswith(": ") or rest.startswith(":\t"):
            return k, rest[1:].strip()
        return None
    if content[:1] in "[{":
        return None
    m = re.search(r":(?:[ \t]|$)", content)
    if not m:
        return None
    return _resolve_plain(content[:m.start()].strip()), content[m.end():].strip()


def _flow_depth(s: str) -> int:
    """Bracket depth at the end of ``s`` (outside quotes); > 0 means an unfinished flow collection."""
    depth, q, i = 0, None, 0
    while i < len(s):
        c = s[i]
        if q:
            if q == '"' and c == "\\":
                i += 2
                continue
            if c == q:
                q = None
        elif c in "\"'" and (i == 0 or s[i - 1] in " \t[{,:-"):
            q = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return depth


def _yaml_subset_load(text: str):
    lines: List[List] = []   # [indent, content]
    open_depth = 0           # > 0 while a flow collection continues on the next line
    for raw in text.splitlines():
        if raw.strip() in ("---", "...") and not raw.startswith(" "):
            continue
        if "\t" in raw[:len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError("tabs are not allowed for indentation")
        s = _strip_comment(raw)
        if not s.strip():
            continue
        if open_depth > 0:
            lines[-1][1] += " " + s.strip()
        else:
            lines.append([len(s) - len(s.lstrip(" ")), s.strip()])
        open_depth = _flow_depth(lines[-1][1])
    if not lines:
        return None
    pos = [0]

    def is_seq(content):
        return content == "-" or content.startswith("- ")

    def block(indent):
        if is_seq(lines[pos[0]][1]):
            return seq(indent)
        if _split_key(lines[pos[0]][1]) is not None:
            return mapping(indent)
        v = _parse_inline(lines[pos[0]][1])
        pos[0] += 1
        return v

    def nested(parent_indent, allow_same_indent_seq):
        """Value of ``key:`` with nothing after the colon."""
        if pos[0] >= len(lines):
            return None
        ind, content = lines[pos[0]]
        if ind > parent_indent:
            return block(ind)
        if allow_same_indent_seq and ind == parent_indent and is_seq(content):
            return seq(ind)
        return None

    def mapping(indent):
        d = {}
        while pos[0] < len(lines):
            ind, content = lines[pos[0]]
            if ind < indent:
                break
            if ind > indent:
                raise YamlSubsetError(f"unexpected indentation at {content!r}")
            if is_seq(content):
                break
            kv = _split_key(content)
            if kv is None:
                raise YamlSubsetError(f"expected 'key: value', got {content!r}")
            k, rest = kv
            pos[0] += 1
            if rest in ("|", ">", "|-", ">-") or rest.startswith(("&", "*", "!")):
                raise YamlSubsetError(f"unsupported YAML construct {rest!r}")
            d[k] = _parse_inline(rest) if rest else nested(indent, True)
        return d

    def seq(indent):
        items = []
        while pos[0] < len(lines):
            ind, content = lines[pos[0]]
            if ind != indent or not is_seq(content):
                if ind > indent:
                    raise YamlSubsetError(f"unexpected indentation at {content!r}")
                break
            rest = content[1:].lstrip(" ")
            if not rest:
                pos[0] += 1
                items.append(nested(indent, False))
                continue
            col = indent + (len(content) - len(rest))
            if is_seq(rest) or _split_key(rest) is not None:
                lines[pos[0]] = [col, rest]          # "- key: v" opens a mapping at column col
                items.append(block(col))
            else:
                pos[0] += 1
                items.append(_parse_inline(rest))
        return items

    result = block(lines[0][0])
    if pos[0] != len(lines):
        raise YamlSubsetError(f"could not parse from {lines[pos[0]][1]!r}")
    return result


def load_yaml(text: str, use_pyyaml: Optional[bool] = None):
    """Parse YAML text. ``use_pyyaml``: None = PyYAML if importable, True = require it, False = subset parser."""
    if use_pyyaml is not False:
        try:
            import yaml  # noqa: WPS433 (imported per call so tests can hide it)
        except ImportError:
            if use_pyyaml:
                raise
        else:
            return yaml.safe_load(text)
    return _yaml_subset_load(text)


def write_yaml(path, obj) -> None:
    """Write ``dump_yaml(obj)`` to ``path`` (via a temporary file and an atomic rename)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dump_yaml(obj))
    os.replace(tmp, path)


def read_yaml(path, use_pyyaml: Optional[bool] = None):
    with open(path, "r", encoding="utf-8") as f:
        return load_yaml(f.read(), use_pyyaml=use_pyyaml)


# --------------------------------------------------------------------------------------------------------
# model.yml / pipeline.yml
# --------------------------------------------------------------------------------------------------------
MODEL_TYPES = {"seg": "segmenter", "cls": "classifier", "det": "detector", "cd": "change_detector",
               "res": "restorer"}


def make_model_yml(model_name: str, transforms: List[Dict], *, task: str = "seg", in_channels: int = 3,
                   num_classes: int, labels: Optional[List[str]] = None, init_params: Optional[Dict] = None,
                   fixed_input_shape=None, score_kind: str = "probabilities", status: str = "Normal",
                   version: Optional[str] = None, extra_attributes: Optional[Dict] = None,
                   **top_level) -> Dict:
    """Build the ``model.yml`` dict of tipc.md §6 (PaddleRS ``get_model_info`` layout).

    ``model_name`` is the network class name (``FactSeg``); put the registry name under
    ``extra_attributes={'model_name': 'factseg'}`` so tools can rebuild the net. Extra top-level fields
    (``completed_epochs=1``) go through ``top_level``.
    """
    if version is None:
        from paddle_rs import __version__ as version
    attrs = {
        "model_type": MODEL_TYPES.get(task, task),
        "in_channels": int(in_channels),
        "num_classes": int(num_classes),
        "labels": list(labels) if labels is not None else [f"class_{i}" for i in range(int(num_classes))],
        "fixed_input_shape": list(fixed_input_shape) if fixed_input_shape is not None else None,
        "score_kind": score_kind,
    }
    attrs.update(extra_attributes or {})
    info = {
        "Model": model_name,
        "Transforms": [dict(t) for t in transforms],
        "_Attributes": attrs,
        "_init_params": dict(init_params or {}),
        "status": status,
        "version": version,
    }
    info.update(top_level)
    return info


def write_model_yml(path_or_dir, info: Dict) -> str:
    """Write ``info`` as ``model.yml`` (``path_or_dir`` may be the directory). Returns the file path."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        path = os.path.join(path, "model.yml")
    for key in ("Model", "Transforms", "_Attributes", "status"):
        if key not in info:
            raise KeyError(f"model.yml needs the field {key!r}")
    write_yaml(path, info)
    return path


def read_model_yml(path_or_dir, use_pyyaml: Optional[bool] = None) -> Dict:
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        path = os.path.join(path, "model.yml")
    info = read_yaml(path, use_pyyaml=use_pyyaml)
    if not isinstance(info, dict) or "Model" not in info:
        raise ValueError(f"{path} is not a model.yml (no 'Model' field)")
    info.setdefault("Transforms", [])
    info.setdefault("_Attributes", {})
    info.setdefault("_init_params", {})
    if info["Transforms"] is None:
        info["Transforms"] = []
    return info


def make_pipeline_yml(model_dir: str, model_type: str = "segmenter", use_gpu: bool = False, gpu_id: int = 0,
                      use_trt: bool = False) -> Dict:
    """tipc.md §6 ``pipeline.yml`` (PaddleRS layout)."""
    return {
        "pipeline_name": model_type,
        "pipeline_nodes": [
            {"src0": {"type": "Source", "next": "decode0"}},
            {"decode0": {"type": "Decode", "next": "predict0"}},
            {"predict0": {"type": "Predict", "init_params": {"use_gpu": bool(use_gpu), "gpu_id": int(gpu_id),
                                                             "use_trt": bool(use_trt),
                                                             "model_dir": os.fspath(model_dir)},
                          "next": "sink0"}},
            {"sink0": {"type": "Sink"}},
        ],
        "version": "1.0.0",
    }


def write_pipeline_yml(save_dir, model_type: str = "segmenter", model_dir: Optional[str] = None, **kw) -> str:
    path = os.path.join(os.fspath(save_dir), "pipeline.yml")
    write_yaml(path, make_pipeline_yml(model_dir if model_dir is not None else os.fspath(save_dir),
                                       model_type, **kw))
    return path


def read_pipeline_yml(path_or_dir, use_pyyaml: Optional[bool] = None) -> Dict:
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        path = os.path.join(path, "pipeline.yml")
    return read_yaml(path, use_pyyaml=use_pyyaml)
