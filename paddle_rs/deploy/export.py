"""Static export for Paddle Inference (porting.md §5.1 recipe, tipc.md §5.4 / §6 / §7.1).

Layout written by :func:`export`::

    save_dir/model.json        PIR program (legacy programs: model.pdmodel + model.pdiparams.info)
    save_dir/model.pdiparams
    save_dir/model.yml         status: Infer, fixed_input_shape, Transforms for the predictor
    save_dir/pipeline.yml

Exported graph (:class:`InferNet`), outputs in ``get_output_names()`` order:

- segmenters: ``[label_map int32 [N,H,W], score_map float32 [N,H,W,C]]``;
- classifiers (task ``'cls'``): ``[label int64 [N], scores float32 [N,K]]`` (label first, like segmenters).

``score_map`` / ``scores`` are probabilities: softmax is applied iff the network emits logits, which is read
from the model class attribute ``outputs_probabilities`` (True for FactSeg, whose eval output is the CP
probability map; factseg.md §10 #3), never from the model name.
"""
import copy
import os
import shutil
import tempfile
import warnings
from typing import Dict, List, Optional, Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..utils.io import StrictLoadError, load_weights_strict  # noqa: F401  (re-exported)
from .model_yml import MODEL_TYPES, make_pipeline_yml, read_model_yml, write_model_yml, write_yaml

__all__ = [
    "InferNet", "export", "parse_input_shape", "build_export_transforms", "make_export_model_yml",
    "load_weights_strict", "StrictLoadError", "build_from_model_dir", "resolve_registry_name",
    "IMAGENET_MEAN", "IMAGENET_STD", "resolve_scan_backend", "resolve_conv_backend", "resolve_ops_backend", "SCAN_OP",
]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_PAD_OPS = ("PadToMultiple", "FixedPad", "Padding")
_GEOMETRIC_RESIZE_OPS = ("Resize", "ResizeEdge", "ResizeByShort", "ResizeByLong", "RandomResize")


# --------------------------------------------------------------------------------------------------------
# export graph
# --------------------------------------------------------------------------------------------------------
def _pir_enabled() -> bool:
    try:
        from paddle.base.framework import use_pir_api
        return bool(use_pir_api())
    except ImportError:  # pragma: no cover
        return True


class InferNet(nn.Layer):
    """Wraps a network (eval mode) into the deployment outputs of tipc.md §7.1.

    ``outputs_probabilities``: None reads the network class attribute of that name (default False, i.e. the
    network emits logits and one softmax over axis 1 is applied).
    """

    def __init__(self, net: nn.Layer, task: str = "seg", outputs_probabilities: Optional[bool] = None):
        super().__init__()
        if task not in ("seg", "cls"):
            raise ValueError(f"InferNet supports task 'seg' or 'cls', got {task!r}")
        self.net = net
        self.task = task
        if outputs_probabilities is None:
            outputs_probabilities = bool(getattr(type(net), "outputs_probabilities",
                                                 getattr(net, "outputs_probabilities", False)))
        self.outputs_probabilities = bool(outputs_probabilities)
        self._legacy = not _pir_enabled()      # legacy (FLAGS_enable_pir_api=0) static graph

    def _argmax(self, prob):
        if self._legacy:                       # paddle.argmax has no legacy-static path in 3.3.1
            return paddle.topk(prob, k=1, axis=1)[1].squeeze(1)
        return paddle.argmax(prob, axis=1)

    def forward(self, image):
        out = self.net(image)
        if isinstance(out, (list, tuple)):
            out = out[0]
        if not self.outputs_probabilities:
            out = F.softmax(out, axis=1)
        prob = out.astype("float32")
        if self.task == "seg":
            label_map = self._argmax(prob).astype("int32")
            score_map = paddle.transpose(prob, [0, 2, 3, 1])
            return label_map, score_map
        label = self._argmax(prob).astype("int64")
        return label, prob


# --------------------------------------------------------------------------------------------------------
# shapes and transforms
# --------------------------------------------------------------------------------------------------------
def parse_input_shape(shape, in_channels: int = 3) -> Optional[List[int]]:
    """``None`` / ``'null'`` / ``[h, w]`` / ``[n, c, h, w]`` (list, tuple or text like ``[-1,3,128,128]``)
    -> ``None`` (dynamic) or ``[n, c, h, w]`` with ``n = -1`` for a dynamic batch.
    """
    if shape is None:
        return None
    if isinstance(shape, str):
        s = shape.strip().strip("[]()").strip()
        if s.lower() in ("", "none", "null"):
            return None
        try:
            shape = [int(t) for t in s.replace(" ", "").split(",") if t != ""]
        except ValueError:
            raise ValueError(f"input shape must be integers [h, w] or [n, c, h, w] (-1: dynamic), got {shape!r}") \
                from None
    shape = [int(v) if v is not None else -1 for v in shape]
    if any(v == 0 or v < -1 for v in shape):
        raise ValueError(f"input shape entries must be positive, or -1 for a dynamic size, got {shape}")
    if len(shape) == 2:
        shape = [-1, int(in_channels)] + shape
    if len(shape) != 4:
        raise ValueError(f"input shape must be [h, w] or [n, c, h, w], got {shape}")
    n, c, h, w = shape
    if h <= 0 and w <= 0:
        return None                          # dynamic spatial size (the batch is dynamic as well)
    if h <= 0 or w <= 0:
        raise ValueError(f"fix both H and W or neither, got {shape}")
    if c <= 0:
        c = int(in_channels)
    if c != int(in_channels):
        raise ValueError(f"input shape has {c} channels but the model has in_channels={in_channels}")
    return [n if n > 0 else -1, c, h, w]


def default_transforms(task: str, in_channels: int = 3, mean=None, std=None, min_val=None, max_val=None,
                       size_divisor: Optional[int] = None) -> List[Dict]:
    c = int(in_channels)
    if mean is None:
        mean = IMAGENET_MEAN if c == 3 else [0.5] * c
    if std is None:
        std = IMAGENET_STD if c == 3 else [0.5] * c
    ops = [{"Normalize": {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                          "min_val": [float(v) for v in (min_val if min_val is not None else [0.0] * c)],
                          "max_val": [float(v) for v in (max_val if max_val is not None else [255.0] * c)]}}]
    if task == "seg" and size_divisor:
        ops.append({"PadToMultiple": {"divisor": int(size_divisor), "pad_value": 0.0}})
    return ops


def build_export_transforms(transforms: Sequence[Dict], fixed_shape: Optional[List[int]]) -> List[Dict]:
    """tipc.md §5.4: with a fixed shape, ``Resize(target_size=[h, w])`` replaces the last resize op or is
    inserted before Normalize, and padding ops are dropped (the graph takes exactly h x w). Without one the
    transforms are kept as they are (``PadToMultiple`` included). A pipeline that already ends in
    ``CenterCrop(crop_size=[h, w])`` (classifier test transforms) is kept unchanged."""
    ops = [copy.deepcopy(dict(t)) for t in transforms]
    if fixed_shape is None:
        return ops
    h, w = int(fixed_shape[-2]), int(fixed_shape[-1])
    crops = [t["CenterCrop"] for t in ops if next(iter(t)) == "CenterCrop"]
    if crops:
        cs = (crops[-1] or {}).get("crop_size", 224)
        cs = [cs, cs] if isinstance(cs, (int, float)) else list(cs)
        if [int(cs[0]), int(cs[1])] == [h, w]:
            return ops
    ops = [t for t in ops if next(iter(t)) not in _PAD_OPS]
    resize = {"Resize": {"target_size": [h, w]}}
    idx = [i for i, t in enumerate(ops) if next(iter(t)) in _GEOMETRIC_RESIZE_OPS]
    if idx:
        ops[idx[-1]] = resize
    else:
        norm = [i for i, t in enumerate(ops) if next(iter(t)) == "Normalize"]
        ops.insert(norm[0] if norm else len(ops), resize)
    return ops


# --------------------------------------------------------------------------------------------------------
# registry helpers
# --------------------------------------------------------------------------------------------------------
def resolve_registry_name(info: Dict) -> str:
    """Registry name for a ``model.yml`` dict: ``_Attributes.model_name`` / ``model_name`` if present, else
    ``Model`` matched exactly, case-insensitively, ignoring ``_``/``-``, or against builder names."""
    from paddle_rs.registry import get_entry, list_models

    names = list_models()
    attrs = info.get("_Attributes") or {}
    for cand in (attrs.get("model_name"), info.get("model_name"), info.get("Model")):
        if cand and cand in names:
            return cand
    model = str(info.get("Model", ""))
    norm = lambda s: s.lower().replace("_", "").replace("-", "")  # noqa: E731
    hits = [n for n in names if norm(n) == norm(model)]
    if len(hits) == 1:
        return hits[0]
    hits = [n for n in names if norm(getattr(get_entry(n).builder, "__name__", "")) == norm(model)]
    if len(hits) == 1:
        return hits[0]
    raise KeyError(f"model.yml names Model={model!r}, which matches no registered model "
                   f"(known: {', '.join(names)}); add _Attributes.model_name")


def build_from_model_dir(model_dir, weights: Optional[str] = None):
    """TIPC entry: ``model_dir/model.yml`` (+ ``model.pdparams``) -> (model in eval mode, model.yml dict)."""
    from paddle_rs.registry import build_model

    info = read_model_yml(model_dir)
    name = resolve_registry_name(info)
    model = build_model(name, **dict(info.get("_init_params") or {}))
    weights = weights or os.path.join(os.fspath(model_dir), "model.pdparams")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no weights at {weights}")
    load_weights_strict(model, weights)
    info.setdefault("_Attributes", {}).setdefault("model_name", name)
    model.eval()
    return model, info


# --------------------------------------------------------------------------------------------------------
# model.yml for an export
# --------------------------------------------------------------------------------------------------------
def _entry_for(name):
    if not name:
        return None
    try:
        from paddle_rs.registry import get_entry
        return get_entry(name)
    except KeyError:
        return None


def make_export_model_yml(model: nn.Layer, model_info: Optional[Dict], fixed_shape: Optional[List[int]],
                          task: Optional[str] = None) -> Dict:
    """The exported ``model.yml``. ``model_info`` is either a training ``model.yml`` dict (has ``Model`` /
    ``Transforms`` / ``_Attributes``) or a flat dict with any of: ``model_name`` (registry name), ``task``,
    ``labels``, ``mean``, ``std``, ``min_val``, ``max_val``, ``in_channels``, ``num_classes``,
    ``transforms``, ``init_params``, ``size_divisor`` and extra attributes (``best_accuracy``...)."""
    from paddle_rs import __version__

    mi = copy.deepcopy(dict(model_info or {}))
    if "Model" in mi or "_Attributes" in mi or "Transforms" in mi:     # a model.yml dict
        info = mi
        attrs = info.setdefault("_Attributes", {})
        entry = _entry_for(attrs.get("model_name") or info.get("model_name"))
        if entry is None:
            try:
                entry = _entry_for(resolve_registry_name(info))
            except KeyError:
                entry = None
        if entry is not None:
            attrs.setdefault("model_name", entry.name)
        task = task or attrs.get("task") or (entry.task if entry else None) or \
            {v: k for k, v in MODEL_TYPES.items()}.get(attrs.get("model_type"), "seg")
        info.setdefault("Model", type(model).__name__)
        info.setdefault("_init_params", {})
        in_ch = int(attrs.get("in_channels") or info["_init_params"].get("in_channels") or 3)
        transforms = info.get("Transforms") or default_transforms(
            task, in_ch, size_divisor=getattr(model, "size_divisor", 32 if task == "seg" else None))
    else:
        entry = _entry_for(mi.pop("model_name", None) or mi.pop("name", None))
        task = task or mi.pop("task", None) or (entry.task if entry else None) or getattr(model, "task", "seg")
        init_params = dict(entry.defaults) if entry else {}
        init_params.update(mi.pop("init_params", None) or mi.pop("_init_params", None) or {})
        in_ch = int(mi.pop("in_channels", None) or init_params.get("in_channels") or 3)
        num_classes = mi.pop("num_classes", None) or init_params.get("num_classes") or \
            getattr(model, "num_classes", None)
        size_divisor = mi.pop("size_divisor", getattr(model, "size_divisor", 32 if task == "seg" else None))
        transforms = mi.pop("transforms", None) or default_transforms(
            task, in_ch, mi.pop("mean", None), mi.pop("std", None), mi.pop("min_val", None),
            mi.pop("max_val", None), size_divisor)
        for k in ("mean", "std", "min_val", "max_val"):
            mi.pop(k, None)
        labels = mi.pop("labels", None)
        attrs = {"in_channels": in_ch}
        if num_classes is not None:
            attrs["num_classes"] = int(num_classes)
        if labels is not None:
            attrs["labels"] = list(labels)
        if entry is not None:
            attrs["model_name"] = entry.name
        top = {k: mi.pop(k) for k in ("completed_epochs",) if k in mi}
        attrs.update(mi)                    # anything else: best_accuracy, eval_metrics, ...
        info = {"Model": type(model).__name__, "_Attributes": attrs, "_init_params": init_params}
        info.update(top)
    attrs = info["_Attributes"]
    attrs["model_type"] = MODEL_TYPES.get(task, task)
    attrs.setdefault("in_channels", in_ch)
    if attrs.get("num_classes") is None and getattr(model, "num_classes", None) is not None:
        attrs["num_classes"] = int(model.num_classes)
    if attrs.get("labels") is None and attrs.get("num_classes") is not None:
        attrs["labels"] = [f"class_{i}" for i in range(int(attrs["num_classes"]))]
    probs = bool(getattr(type(model), "outputs_probabilities", False))
    attrs["score_kind"] = "probabilities"
    attrs["net_outputs"] = "probabilities" if probs else "logits"
    attrs["fixed_input_shape"] = list(fixed_shape) if fixed_shape is not None else None
    _record_perm_seed(model, info)
    info["Transforms"] = build_export_transforms(transforms, fixed_shape)
    info["status"] = "Infer"
    info["version"] = __version__
    return info


def _record_perm_seed(model: nn.Layer, info: Dict) -> None:
    """Networks with shuffle permutations (RSMamba's ``perm_seed``): record the seed the built network holds in
    ``_init_params`` (and ``_Attributes``), so ``model.yml`` rebuilds exactly the exported permutation set; a
    network without a fixed set exports in-graph ``randperm`` (non-deterministic), which is warned about."""
    holder = next((m for m in [model] + list(model.sublayers()) if hasattr(m, "perm_seed")), None)
    if holder is None:
        return
    seed = holder.perm_seed
    info.setdefault("_init_params", {})["perm_seed"] = None if seed is None else int(seed)
    info["_Attributes"]["perm_seed"] = None if seed is None else int(seed)
    if seed is None:
        warnings.warn(f"{type(model).__name__} has no fixed permutation set (perm_seed=None): the export draws "
                      f"random shuffle permutations on every run; build it with perm_seed=<int> for a "
                      f"deterministic model")


# --------------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------------
_EXPORT_FILES = ("model.json", "model.pdmodel", "model.pdiparams", "model.pdiparams.info", "model.yml",
                 "pipeline.yml")


SCAN_OP = "rs_selective_scan_fwd"


def _uses_selective_scan(model: nn.Layer) -> bool:
    from paddle_rs.models.backbones.mamba import MambaMixer
    return any(isinstance(m, MambaMixer) for m in [model] + list(model.sublayers()))


def resolve_scan_backend(model: nn.Layer, scan: str = "auto") -> Optional[str]:
    """The selective-scan implementation an export puts into the graph (None: the model has no scan).

    ``auto``: the fused C++ op (:data:`SCAN_OP`; ~4x faster than the loop) when the extension builds here, else
    the pure-Paddle ``while_loop`` with a warning. ``fused`` fails when the extension is unavailable; ``loop``
    gives a graph that any Paddle Inference build runs without the custom op library.
    """
    if scan not in ("auto", "fused", "loop"):
        raise ValueError(f"scan must be 'auto', 'fused' or 'loop', got {scan!r}")
    if not _uses_selective_scan(model):
        return None
    if scan == "loop":
        return "loop"
    from paddle_rs.ops.selective_scan import fused_ext
    if fused_ext() is not None:
        return "fused"
    if scan == "fused":
        raise RuntimeError("scan='fused' requested but the fused selective-scan extension cannot be built here "
                           "(see the warning above: a C++ compiler with OpenMP is needed); export with "
                           "scan='loop' instead")
    warnings.warn("the fused selective-scan extension is unavailable: exporting the pure-Paddle scan loop "
                  "(correct, but Paddle Inference is then ~4x slower than with the fused op)")
    return "loop"


def _has_onednn_convs(model: nn.Layer) -> bool:
    """Whether the model has convolutions that :func:`paddle_rs.ops.conv.conv2d` would run on oneDNN (k > 1)."""
    return any(isinstance(m, nn.Conv2D) and max(m.weight.shape[2:]) > 1 for m in [model] + list(model.sublayers()))


def resolve_conv_backend(model: nn.Layer, conv: str = "auto") -> Optional[str]:
    """The convolution an export puts into the graph for the model's k > 1 convolutions (None: it has none).

    ``auto`` (what ``cpu_kernels="on"`` uses): the oneDNN custom op (:data:`paddle_rs.ops.conv.CONV_OP`) when the
    extension builds here, else the ordinary ``conv2d`` (``plain``). ``onednn`` fails when the extension is
    unavailable; ``plain`` (the portable default) gives a graph without custom convolutions.
    """
    from paddle_rs.ops.conv import onednn_ext
    return _custom_or_plain(model, "conv", conv, "onednn", _has_onednn_convs, onednn_ext, "the oneDNN conv2d")


def _custom_or_plain(model, arg, choice, custom, has_layers, loader, what):
    """The rule :func:`resolve_conv_backend` and :func:`resolve_ops_backend` share: ``None`` without the layers;
    ``plain`` when asked for; ``custom`` when the extension (``loader()``) builds here; an error when ``custom`` was
    asked for and it does not."""
    if choice not in ("auto", custom, "plain"):
        raise ValueError(f"{arg} must be 'auto', '{custom}' or 'plain', got {choice!r}")
    if not has_layers(model):
        return None
    if choice == "plain":
        return "plain"
    if loader() is not None:
        return custom
    if choice == custom:
        raise RuntimeError(f"{arg}='{custom}' requested but {what} extension cannot be built here (see the warning "
                           f"above: it needs g++ and oneDNN 3.x headers); export with {arg}='plain' instead")
    return "plain"


def _has_dygraph_ops(model: nn.Layer) -> bool:
    return any(isinstance(m, (nn.GELU, nn.LayerNorm, nn.ReLU, nn.Silu, nn.Linear))
               for m in [model] + list(model.sublayers()))


def resolve_ops_backend(model: nn.Layer, ops: str = "auto") -> Optional[str]:
    """What an export puts into the graph for the softmax / GELU / SiLU / ReLU / LayerNorm / Linear / transposes of
    :mod:`paddle_rs.ops.act`, :mod:`~paddle_rs.ops.linear` and :mod:`~paddle_rs.ops.layout` (None: the model has
    no GELU / SiLU / ReLU / LayerNorm / Linear layer). With the custom ops, broadcast adds / multiplies / divides
    (:mod:`paddle_rs.ops.elementwise`, 1x1-convolution biases included) are expanded to equal shapes first.

    ``auto`` (what ``cpu_kernels="on"`` uses): their custom ops (``csrc/dygraph_ops_cpu.cc``: oneDNN GELU, SiLU,
    ReLU, LayerNorm; linear as one ``addmm``) when the extension builds here, else Paddle's ops (``plain``).
    ``custom`` fails when the extension is unavailable; ``plain`` (the portable default) gives a graph without
    them.
    """
    from paddle_rs.ops._dygraph_ext import dygraph_ext
    return _custom_or_plain(model, "ops", ops, "custom", _has_dygraph_ops, dygraph_ext, "the dygraph-ops")


def _choose_predictor_settings(net: nn.Layer, program_dir, info: Dict, verbose: bool = False,
                               repeat: int = 1) -> Dict:
    """The CPU predictor settings recorded in ``model.yml`` (``_Attributes.predictor``), measured on a sample
    input: the first oneDNN entry of :data:`~paddle_rs.deploy.predictor.CPU_SETTINGS` (fewest passes deleted
    first) whose predictor builds, runs and matches the dygraph network within ``1e-4``, and oneDNN off; of those
    two, the faster (median of ``repeat`` runs after the first, which checks the result). Paddle 3.3.1 needs ``onednn_placement_pass`` deleted for any graph
    with a ``*_interp`` op (Paddle#79749) and its fc fusions deleted for the Swin / ViTAE graphs (they mis-shape a
    3-D matmul). oneDNN is not always the faster: on graphs of many small elementwise ops (RSMamba's scan loop)
    the two are about equal on an idle machine, and oneDNN falls several times behind when other work shares the
    cores. The record lists what was tried, with the error or the time."""
    import numpy as np
    from ..utils.runtime import captured_native_output
    from .predictor import CPU_SETTINGS, run_program, sample_input
    x = sample_input(info["_Attributes"])
    with paddle.no_grad():
        want = [o.numpy() for o in net(paddle.to_tensor(x))]
    tried, accurate = [], []
    onednn_found = False
    for settings in CPU_SETTINGS:
        if settings["onednn"] and onednn_found:
            continue                          # one working oneDNN variant is enough
        try:
            with captured_native_output(show=verbose):      # Paddle's IR-pass notes (one line per pattern)
                got, seconds = run_program(program_dir, x, repeat=repeat, **settings)
            err = max(float(np.abs(g.astype("float64") - w.astype("float64")).max()) for g, w in zip(got[1:], want[1:]))
        except Exception as e:                # a Paddle defect: the predictor does not build or run
            tried.append({**settings, "result": f"fails: {str(e).strip().splitlines()[-1][:160]}"})
            continue
        if err <= 1e-4:
            accurate.append((seconds, settings, err))
            onednn_found = onednn_found or settings["onednn"]
            tried.append({**settings, "result": f"max |diff| {err:.2e}, {1e3 * seconds:.1f} ms"})
        else:
            tried.append({**settings, "result": f"max |diff| {err:.2e} > 1e-4"})
    if not accurate:
        raise RuntimeError(f"no CPU predictor setting reproduces the network within 1e-4: {tried}")
    seconds, settings, err = min(accurate, key=lambda r: r[0])
    return {**settings, "checked_max_abs": err, "sample_ms": round(1e3 * seconds, 3), "tried": tried}


def export(model: nn.Layer, save_dir, input_shape=None, model_info: Optional[Dict] = None,
           task: Optional[str] = None, cpu_kernels: str = "off", scan: Optional[str] = None,
           conv: Optional[str] = None, ops: Optional[str] = None, verbose: bool = False) -> str:
    """Export ``model`` for Paddle Inference into ``save_dir`` (porting.md §5.1 recipe).

    ``cpu_kernels``: ``"off"`` (default) writes a portable graph of Paddle's built-in ops only, which any Paddle
    Inference build runs (CPU, GPU, C++, another machine) without paddle_rs or a compiler. ``"on"`` exports the
    model accelerated (:mod:`paddle_rs.cpu_kernels`) with paddle_rs's CPU custom ops where they apply (the
    ``"auto"`` rules of ``scan`` / ``conv`` / ``ops`` below); the serving process then needs paddle_rs, g++ and
    an x86 CPU like this one, and ``model.yml`` records ``cpu_kernels: on`` and the ``custom_ops``. ``scan`` /
    ``conv`` / ``ops`` (default: from ``cpu_kernels``) choose per op family.

    ``input_shape``: None (``[None, C, -1, -1]``), ``[h, w]`` or ``[n, c, h, w]`` (``n = -1`` dynamic batch).
    ``model_info``: see :func:`make_export_model_yml`. ``scan``: selective-scan backend of Mamba models (see
    :func:`resolve_scan_backend`); a fused export records ``custom_ops: [rs_selective_scan_fwd]`` in
    ``model.yml``, and :class:`~paddle_rs.deploy.predictor.Predictor` registers the op before loading.
    ``conv``: convolution backend in the graph (see :func:`resolve_conv_backend`), recorded as
    ``_Attributes.conv_backend``; ``onednn`` adds ``rs_conv2d_fwd`` to ``custom_ops``. ``ops``: softmax / GELU /
    SiLU / ReLU / LayerNorm / Linear / transpose backend (see :func:`resolve_ops_backend`), recorded as
    ``_Attributes.ops_backend``; ``custom`` adds those of ``rs_softmax`` / ``rs_eltwise`` / ``rs_layer_norm`` /
    ``rs_linear`` / ``rs_permute`` the graph holds.
    Files are written into a temporary sibling directory and moved into place at the end, so a failed export
    leaves no half-written model behind. Returns the absolute ``save_dir``.
    """
    save_dir = os.path.abspath(os.fspath(save_dir))
    if cpu_kernels not in ("off", "on"):
        raise ValueError(f"cpu_kernels must be 'off' (portable graph) or 'on' (paddle_rs custom ops), "
                         f"got {cpu_kernels!r}")
    default = "auto" if cpu_kernels == "on" else None
    scan = scan or default or "loop"
    conv = conv or default or "plain"
    ops = ops or default or "plain"
    from paddle_rs.cpu_kernels import accelerated
    with accelerated(model, enable=cpu_kernels == "on" or scan == "fused" or conv == "onednn" or ops == "custom"):
        return _export(model, save_dir, input_shape, model_info, task, scan, conv, ops, verbose)


def _export(model, save_dir, input_shape, model_info, task, scan, conv, ops, verbose=False):
    # in_channels may come from model_info; peek before shape parsing
    mi = model_info or {}
    in_ch = (mi.get("_Attributes") or {}).get("in_channels") or mi.get("in_channels") or \
        (mi.get("_init_params") or mi.get("init_params") or {}).get("in_channels") or 3
    fixed = parse_input_shape(input_shape, int(in_ch))
    info = make_export_model_yml(model, model_info, fixed, task)
    backend = resolve_scan_backend(model, scan)
    if backend is not None:
        info["_Attributes"]["scan_backend"] = backend
        info["_Attributes"]["custom_ops"] = [SCAN_OP] if backend == "fused" else []
    conv_backend = resolve_conv_backend(model, conv)
    if conv_backend is not None:
        from paddle_rs.ops.conv import CONV_OP
        info["_Attributes"]["conv_backend"] = conv_backend
        custom_ops = info["_Attributes"].setdefault("custom_ops", [])
        if conv_backend == "onednn":
            custom_ops.append(CONV_OP)
    ops_backend = resolve_ops_backend(model, ops)
    if ops_backend is not None:
        info["_Attributes"]["ops_backend"] = ops_backend
    custom = backend == "fused" or conv_backend == "onednn" or ops_backend == "custom"
    info["_Attributes"]["cpu_kernels"] = "on" if custom else "off"
    task = {v: k for k, v in MODEL_TYPES.items()}.get(info["_Attributes"]["model_type"], "seg")
    c = int(info["_Attributes"]["in_channels"])
    if fixed is None:
        shape = [None, c, -1, -1]
    else:
        shape = [None if fixed[0] <= 0 else fixed[0], c, fixed[2], fixed[3]]

    was_training = model.training
    model.eval()
    parent = os.path.dirname(save_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_export_", dir=parent)
    prev_scan = prev_conv = prev_ops = None
    try:
        if backend is not None:
            from paddle_rs.ops.selective_scan import set_static_scan
            prev_scan = set_static_scan(backend)
        if conv_backend is not None:
            from paddle_rs.ops.conv import set_static_conv
            prev_conv = set_static_conv(conv_backend)
        if ops_backend is not None:
            from paddle_rs.ops._dygraph_ext import set_static_ops
            prev_ops = set_static_ops(ops_backend)
        net = InferNet(model, task=task)
        spec = [paddle.static.InputSpec(shape, "float32", name="image")]
        static = paddle.jit.to_static(net, input_spec=spec, full_graph=True)
        paddle.jit.save(static, os.path.join(tmp, "model"))
        if ops_backend == "custom":
            from paddle_rs.ops._dygraph_ext import OPS
            with open(os.path.join(tmp, "model.json")) as f:
                program = f.read()
            info["_Attributes"].setdefault("custom_ops", []).extend(op for op in OPS if op in program)
        info["_Attributes"]["predictor"] = _choose_predictor_settings(net, tmp, info, verbose=verbose)
        info["_Attributes"]["onednn"] = bool(info["_Attributes"]["predictor"]["onednn"])
        write_model_yml(os.path.join(tmp, "model.yml"), info)
        write_yaml(os.path.join(tmp, "pipeline.yml"),
                   make_pipeline_yml(save_dir, info["_Attributes"]["model_type"]))
        if not os.path.exists(save_dir):
            os.rename(tmp, save_dir)
        else:
            if not os.path.isdir(save_dir):
                raise NotADirectoryError(f"{save_dir} exists and is not a directory")
            written = set(os.listdir(tmp))
            for f in sorted(written):
                os.replace(os.path.join(tmp, f), os.path.join(save_dir, f))
            for f in _EXPORT_FILES:            # stale files of an earlier export in the other format
                if f not in written and os.path.exists(os.path.join(save_dir, f)):
                    os.remove(os.path.join(save_dir, f))
    finally:
        if prev_scan is not None:
            from paddle_rs.ops.selective_scan import set_static_scan
            set_static_scan(prev_scan)
        if prev_conv is not None:
            from paddle_rs.ops.conv import set_static_conv
            set_static_conv(prev_conv)
        if prev_ops is not None:
            from paddle_rs.ops._dygraph_ext import set_static_ops
            set_static_ops(prev_ops)
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if was_training:
            model.train()
    if not (os.path.exists(os.path.join(save_dir, "model.json")) or
            os.path.exists(os.path.join(save_dir, "model.pdmodel"))):
        warnings.warn(f"export wrote neither model.json nor model.pdmodel into {save_dir}")
    return save_dir
