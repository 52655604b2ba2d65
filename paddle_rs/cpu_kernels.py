"""Opt-in CPU accelerator: paddle_rs's CPU kernels applied to a built model, without the model file knowing.

The model files under :mod:`paddle_rs.models` are plain Paddle (``nn.Conv2D``, ``nn.Linear``, ``nn.LayerNorm``,
``F.softmax``, ...): what they build runs, trains and exports anywhere Paddle does. :func:`accelerate` then swaps,
by exact type, layers of a built model for the subclasses of :mod:`paddle_rs.ops` that run on oneDNN / fused C++
kernels in dygraph on CPU in float32:

==================  ========================================  ===============================================
plain layer         accelerated class                         kernel (dygraph, fp32, CPU)
==================  ========================================  ===============================================
``nn.Conv2D``       :class:`paddle_rs.ops.conv.Conv2D`        oneDNN direct convolution (k > 1), fwd + bwd
``nn.Linear``       :class:`paddle_rs.ops.linear.Linear`      bias inside the GEMM
``nn.LayerNorm``    :class:`paddle_rs.ops.act.LayerNorm`      oneDNN (input gradient right with frozen weight)
``nn.GELU``         :class:`paddle_rs.ops.act.GELU`           oneDNN
``nn.Silu``         :class:`paddle_rs.ops.act.Silu`           oneDNN
``nn.ReLU``         :class:`paddle_rs.ops.act.ReLU`           oneDNN
``nn.BatchNorm2D``  :class:`paddle_rs.ops.act.BatchNorm2D`    oneDNN, eval mode without gradients
``MambaMixer``      ``fused_scan = True``                     fused selective scan
==================  ========================================  ===============================================

Each accelerated class is a subclass of the plain one that overrides ``forward`` only: parameters, buffers,
``state_dict`` keys, ``isinstance`` checks and the optimizer's view of the model are unchanged, and so are the
results up to float32 rounding. Everywhere else -- GPU, other dtypes, AMP, and static graphs (exports) -- the
accelerated layers run Paddle's own ops, so an accelerated model still exports a portable graph unless the export
asks for the custom ops (``deploy/export_model.py --cpu-kernels on``).

The kernels are compiled on first use (g++ and oneDNN headers; cached under ``~/.cache/paddle_rs/ops``); a kernel
that cannot be built falls back to Paddle's op with one warning. The tools choose with ``--cpu-kernels
auto|on|off`` (:func:`resolve`): ``auto`` accelerates on a CPU device when the kernels build, unless
``$PADDLE_RS_CPU_KERNELS`` is ``on`` or ``off``.
"""
import contextlib
import os

import paddle
import paddle.nn as nn

__all__ = ["accelerate", "accelerated", "is_accelerated", "resolve", "available", "add_argument", "CHOICES"]

CHOICES = ("auto", "on", "off")
ENV = "PADDLE_RS_CPU_KERNELS"   # the default of ``auto`` (see :func:`resolve`)


def _pairs():
    """[(plain class, accelerated class)]; imported lazily, so importing paddle_rs compiles nothing."""
    from .ops.act import GELU, BatchNorm2D, LayerNorm, ReLU, Silu
    from .ops.conv import Conv2D
    from .ops.linear import Linear
    return [(nn.Conv2D, Conv2D), (nn.Linear, Linear), (nn.LayerNorm, LayerNorm), (nn.GELU, GELU),
            (nn.Silu, Silu), (nn.ReLU, ReLU), (nn.BatchNorm2D, BatchNorm2D)]


def _mixer_class():
    from .models.backbones.mamba import MambaMixer
    return MambaMixer


def accelerate(model: nn.Layer, enable: bool = True) -> nn.Layer:
    """Swap ``model``'s plain layers for their accelerated classes (``enable=False``: back to the plain ones), in
    place; returns ``model``. Layers of other types (subclasses included) are left alone."""
    table = dict(_pairs()) if enable else {fast: plain for plain, fast in _pairs()}
    mixer = _mixer_class()
    for layer in [model] + list(model.sublayers()):
        target = table.get(type(layer))
        if target is not None:
            layer.__class__ = target
        if isinstance(layer, mixer):
            layer.fused_scan = bool(enable)
    return model


def is_accelerated(model: nn.Layer) -> bool:
    """Whether any layer of ``model`` runs on an accelerated class (or a fused scan)."""
    fast = tuple(f for _, f in _pairs())
    mixer = _mixer_class()
    return any(type(m) in fast or (isinstance(m, mixer) and m.fused_scan) for m in [model] + list(model.sublayers()))


@contextlib.contextmanager
def accelerated(model: nn.Layer, enable: bool = True):
    """``with accelerated(model):`` -- the model accelerated inside the block, restored to its previous classes
    after it."""
    before = [(m, m.__class__, getattr(m, "fused_scan", None)) for m in [model] + list(model.sublayers())]
    accelerate(model, enable)
    try:
        yield model
    finally:
        for m, cls, fused in before:
            m.__class__ = cls
            if fused is not None:
                m.fused_scan = fused


def available() -> dict:
    """Which kernel libraries build and load here: ``{"conv": bool, "ops": bool, "scan": bool}`` (compiles them on
    the first call)."""
    from .ops._dygraph_ext import dygraph_ext
    from .ops.conv import onednn_ext
    from .ops.selective_scan import fused_ext
    return {"conv": onednn_ext() is not None, "ops": dygraph_ext() is not None, "scan": fused_ext() is not None}


def resolve(choice: str = "auto", device: str = None) -> bool:
    """``--cpu-kernels`` -> whether to accelerate. ``on``: yes (a kernel that cannot be built warns and falls back);
    ``off``: no; ``auto``: what ``$PADDLE_RS_CPU_KERNELS`` says (``on`` / ``off``) when it is set, otherwise yes on a
    CPU device (``device`` or ``paddle.get_device()``) when the kernels build. The variable sets the choice of
    tools run by other tools (TIPC's training, export and inference steps) without a flag on each command line."""
    if choice not in CHOICES:
        raise ValueError(f"--cpu-kernels must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "auto":
        env = os.environ.get(ENV, "").strip().lower()
        if env not in ("",) + CHOICES:
            raise ValueError(f"${ENV} must be one of {', '.join(CHOICES)}, got {env!r}")
        choice = env or "auto"
    if choice != "auto":
        return choice == "on"
    device = device or paddle.get_device()
    if not str(device).startswith("cpu"):
        return False
    return any(available().values())


def add_argument(parser, default: str = "auto", help_extra: str = ""):
    """The tools' ``--cpu-kernels auto|on|off`` option."""
    parser.add_argument("--cpu-kernels", "--cpu_kernels", dest="cpu_kernels", choices=CHOICES, default=default,
                        help="paddle_rs's CPU kernels (oneDNN convolution / activations / norms, fused selective "
                             "scan) for dygraph on CPU: auto = on when running on CPU and they build here "
                             f"(default: {default}){help_extra}")
