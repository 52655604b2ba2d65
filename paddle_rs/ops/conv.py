"""2-D convolution on oneDNN for Paddle dygraph on CPU (forward and backward), with the ordinary op elsewhere.

Why: Paddle 3.3.1's dygraph ``conv2d`` on CPU is im2col + an MKLML GEMM; ``FLAGS_use_mkldnn`` /
``FLAGS_use_onednn`` do not reach dygraph kernels. Measured on a 2-thread Sapphire Rapids (AVX-512), fp32, batch
1: 2048->512 3x3 at 128x128 takes 1.8 s (torch 2.13: 1.0 s), 512->512 3x3 at 128x128 0.47 s (torch 0.27 s);
small-channel 3x3 convolutions are 4-6x slower than torch, 1x1 convolutions on par. oneDNN, which Paddle ships
(``<paddle>/libs/libdnnl.so.3``) and Paddle Inference uses, is as fast as torch here: 512->512 3x3 at 128x128
forward 0.26 s (Paddle 0.50 s, torch 0.25 s), forward + input gradient 0.74 s (Paddle 1.07 s, torch 0.52 s),
forward + weight gradient 0.60 s (Paddle 1.00 s, torch 0.59 s); 64->64 3x3 at 128x128 forward 8 ms (Paddle
29 ms). UperNet-R50, 512x512, batch 1, 2 threads (``tools/benchmark.py``): dygraph forward 2.92 -> 2.22 s,
training step 8.53 -> 7.64 s.

:func:`conv2d` has ``paddle.nn.functional.conv2d``'s signature (NCHW) and :class:`Conv2D` is ``nn.Conv2D`` with
the same constructor, parameters (``weight [O, C/g, kh, kw]``, ``bias [O]``) and state_dict keys. Paths:

* dygraph, fp32, CPU, NCHW, kernel larger than 1x1, zero padding given as an int / ``[ph, pw]`` / symmetric
  ``[t, b, l, r]``, no AMP, extension available: the custom ops of ``csrc/conv2d_onednn_cpu.cc`` (oneDNN direct
  convolution in its blocked layouts, reordered from/to NCHW around each call; the reorders add 6-8% to the
  convolution time of UperNet-R50): ``rs_conv2d`` when a gradient is needed (:class:`Conv2dFn`; its gradient op
  is registered in C++, so ``paddle.grad`` w.r.t. any subset of (x, w, b) works), ``rs_conv2d_fwd`` otherwise.
  Compiled on first use by :func:`onednn_ext` and cached under ``~/.cache/paddle_rs/ops``;
  ``PADDLE_RS_ONEDNN_CONV=0`` disables it.
* 1x1 kernels: ``paddle.nn.functional.conv2d``. Paddle runs them as one GEMM on the NCHW data, on par with
  torch (a bias is added afterwards by :func:`paddle_rs.ops.elementwise.broadcast_add`: Paddle's own bias add is
  its slow broadcast kernel, ``[2, 256, 64, 64]`` forward 26.4 -> 5.1 ms, torch 4.3; forward + backward 59.4 ->
  18.7 ms, torch 15.8); oneDNN would add two layout reorders that cost as much as the convolution (256->64 at 128x128:
  4 ms forward in Paddle, 6 ms with oneDNN; 256->512 stride 2: 13 ms / 18 ms; forward+backward 17 / 38 ms).
* static graph (``paddle.jit.to_static``, hence every export): the ordinary ``conv2d`` op by default, or, after
  ``set_static_conv("onednn")``, the ``rs_conv2d_fwd`` custom op for the same kernels as in dygraph (forward
  only; the graph then needs the op library registered before loading, which
  :class:`paddle_rs.deploy.predictor.Predictor` does from ``model.yml``). This is for Paddle Inference runs
  without oneDNN: Paddle 3.3.1 cannot run the Swin / ViTAE / FactSeg / RSMamba graphs with oneDNN enabled, so
  their predictor would fall back to the im2col convolution (see :mod:`paddle_rs.deploy.export`).
* anything else (GPU; other dtypes or layouts; string or asymmetric padding; no extension):
  ``paddle.nn.functional.conv2d``.

Numerics: a direct convolution sums in another order than im2col + GEMM; results agree with Paddle's and torch's
to fp32 rounding (~1e-6 relative), gradients included (torch's CPU convolution is oneDNN as well: the parity of
align/01_forward.py with torch_ref got slightly tighter).

Headers and linking: :mod:`paddle_rs.ops._onednn`. A newly loaded library must pass a small forward/backward
check against ``paddle.nn.functional.conv2d`` before it is used.
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ._build import StaticBackend, load_once
from ._onednn import build_onednn_extension
from ._dygraph_ext import static_custom
from ._mode import dygraph_cpu_fp32, needs_grad
from .elementwise import broadcast_add
from ._mode import in_sot as _in_sot

__all__ = ["conv2d", "Conv2D", "Conv2dFn", "onednn_ext", "set_static_conv", "CONV_OP"]

_EXT_STATE = {}   # "module": loaded extension or None (unavailable), "build_s": seconds spent in load()


def _self_check(module):
    """A small grouped, strided, padded convolution with bias, forward and all gradients, against
    ``paddle.nn.functional.conv2d`` (catches a header / library mismatch that still loads)."""
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((2, 4, 7, 6)).astype("float32"))
    w = paddle.to_tensor(rng.standard_normal((6, 2, 3, 3)).astype("float32"))
    b = paddle.to_tensor(rng.standard_normal(6).astype("float32"))
    gy = paddle.to_tensor(rng.standard_normal((2, 6, 4, 3)).astype("float32"))
    attrs = ([2, 2], [1, 1], [1, 1], 2, True)
    results = []
    for fn in (lambda *t: module.rs_conv2d(*t, *attrs, True, True),
               lambda *t: F.conv2d(*t, stride=2, padding=1, groups=2)):
        leaves = [t.detach() for t in (x, w, b)]
        for t in leaves:
            t.stop_gradient = False
        with paddle.set_grad_enabled(True):       # the first call may come from a no_grad block
            y = fn(*leaves)
            results.append([y] + list(paddle.grad([y], leaves, [gy])))
    got, want = [module.rs_conv2d_fwd(x, w, b, *attrs)] + results[0], results[1][:1] + results[1]
    for g, r in zip(got, want):
        if g.shape != r.shape or not np.allclose(g.numpy(), r.numpy(), rtol=1e-4, atol=1e-4):
            raise RuntimeError("self-check against paddle.nn.functional.conv2d failed")


@paddle.jit.not_to_static
def onednn_ext():
    """The compiled extension module (ops ``rs_conv2d_fwd`` / ``rs_conv2d``), or ``None``.

    Built with ``paddle.utils.cpp_extension.load`` on first use (~30 s with g++ 12; cached and reloaded in ~1 s
    afterwards; a file lock serialises concurrent builds; :mod:`paddle_rs.ops._build`), linked against Paddle's
    own ``libdnnl.so.3``. ``PADDLE_RS_ONEDNN_CONV=0`` disables it. Any failure (no headers, no compiler, build or
    self-check error) is reported once as a warning and ``paddle.nn.functional.conv2d`` is used.
    """
    def build():
        module = build_onednn_extension("conv2d_onednn_cpu", "conv2d_onednn_cpu.cc",
                                        ("rs_conv2d_fwd", "rs_conv2d"))
        _self_check(module)
        return module

    return load_once(_EXT_STATE, "PADDLE_RS_ONEDNN_CONV", "oneDNN CPU conv2d", "paddle.nn.functional.conv2d", build)


def _pair(v):
    """An int or a sequence of 2 ints as ``[a, b]``; ``None`` otherwise."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return [int(v), int(v)]
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(a, (int, np.integer)) for a in v):
        return [int(a) for a in v]
    return None


def _padding(v):
    """Zero padding as symmetric ``[ph, pw]``: an int, ``[ph, pw]`` or ``[t, b, l, r]`` with ``t == b`` and
    ``l == r``; ``None`` for anything else (strings, asymmetric or per-axis pair lists)."""
    p = _pair(v)
    if isinstance(v, (list, tuple)) and len(v) == 4 and all(isinstance(a, (int, np.integer)) for a in v):
        p = [int(v[0]), int(v[2])] if v[0] == v[1] and v[2] == v[3] else None
    return p if p is not None and min(p) >= 0 else None


def _bias_arg(bias):
    """The op's bias input: the bias, or a 1-element placeholder (``has_bias=False``)."""
    return bias.contiguous() if bias is not None else paddle.empty([1], dtype="float32")


def _onednn_ok(x, weight, bias, data_format):
    return (data_format == "NCHW" and dygraph_cpu_fp32(x, weight, bias) and x.ndim == 4 and weight.ndim == 4
            and x.size > 0 and onednn_ext() is not None)


CONV_OP = "rs_conv2d_fwd"
_STATIC = StaticBackend("plain", "onednn", lambda: onednn_ext(), "oneDNN conv2d")


def set_static_conv(backend):
    """What ``paddle.jit.to_static`` puts into a graph for the convolutions of :func:`conv2d`:

    * ``"plain"`` (default): the ordinary ``conv2d`` op; the program runs in any Paddle Inference build.
    * ``"onednn"``: the :data:`CONV_OP` custom op (forward) for every convolution the dygraph path would run on
      oneDNN (kernels larger than 1x1, symmetric zero padding, fp32 NCHW); 1x1 kernels stay ``conv2d``. The
      process that runs the program must register the op first (:func:`onednn_ext`).

    Returns the previous backend. Raises ``RuntimeError`` for ``"onednn"`` when the extension is unavailable.
    """
    return _STATIC.set(backend)


def _static_ok(x, weight, bias, data_format):
    """The static-graph counterpart of :func:`_onednn_ok` (no place / AMP in a program; dtypes of the Values)."""
    return (_STATIC.custom_on and not paddle.in_dynamic_mode() and data_format == "NCHW"
            and len(x.shape) == 4 and len(weight.shape) == 4 and x.dtype == paddle.float32
            and weight.dtype == paddle.float32 and (bias is None or bias.dtype == paddle.float32))


class Conv2dFn:
    """``apply(x [N,C,H,W], weight [O,C/g,kh,kw], bias [O] | None, stride, padding, dilation: [2] ints, groups)
    -> y`` on the oneDNN ops, with gradients: the ``rs_conv2d`` custom op, whose gradient op is registered in C++.

    Paddle's autograd engine runs that gradient op for whatever the backward or ``paddle.grad`` asks, dropping
    what it does not need. Which oneDNN backward calls run is fixed at the forward from the inputs'
    ``stop_gradient``: backward-data when ``x`` requires a gradient, one backward-weights call (weight and bias
    gradients together) when the weight or the bias does. (A ``paddle.grad`` w.r.t. ``x`` alone while the
    parameters also require gradients, e.g. a saliency map of a trainable model, therefore also computes the
    parameters' gradients, then drops them.)"""

    @staticmethod
    def apply(x, weight, bias, stride, padding, dilation, groups):
        need_dx = not x.stop_gradient
        need_dw = not weight.stop_gradient or (bias is not None and not bias.stop_gradient)
        return onednn_ext().rs_conv2d(x.contiguous(), weight.contiguous(), _bias_arg(bias), stride, padding,
                                      dilation, groups, bias is not None, need_dx, need_dw)


@paddle.jit.not_to_static
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, data_format="NCHW"):
    """``paddle.nn.functional.conv2d`` (same arguments and result), on oneDNN where the module docstring says."""
    if _in_sot():   # checked first and apart: the translator intercepts this call (-> True) and then emits conv2d
        return F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
                        data_format=data_format)
    static = _static_ok(x, weight, bias, data_format)
    if (static or _onednn_ok(x, weight, bias, data_format)) and (weight.shape[2] > 1 or weight.shape[3] > 1):
        st, pad, dil = _pair(stride), _padding(padding), _pair(dilation)
        if st is not None and pad is not None and dil is not None and min(st + dil) >= 1:
            args = (st, pad, dil, int(groups))
            if static:   # an export: forward only
                b = bias if bias is not None else paddle.zeros([1], dtype="float32")
                return onednn_ext().rs_conv2d_fwd(x, weight, b, *args, bias is not None)
            if needs_grad(x, weight, bias):
                return Conv2dFn.apply(x, weight, bias, *args)
            return onednn_ext().rs_conv2d_fwd(x.contiguous(), weight.contiguous(), _bias_arg(bias), *args,
                                              bias is not None)
    if bias is not None and data_format == "NCHW" and (static_custom() or (dygraph_cpu_fp32(x, weight, bias)
                                                                         and x.ndim == 4)):
        # Paddle adds a conv2d bias with its slow broadcast kernel; the same additions on expanded equal shapes
        # (bit-identical forward; the bias gradient is the expand's reduction, summed in another order than
        # Paddle's add gradient); also in exports with paddle_rs's custom ops, whose predictor runs without oneDNN
        y = F.conv2d(x, weight, None, stride=stride, padding=padding, dilation=dilation, groups=groups)
        return broadcast_add(y, bias.reshape([1, -1, 1, 1]))
    return F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
                    data_format=data_format)


class Conv2D(nn.Conv2D):
    """``paddle.nn.Conv2D`` (same constructor, parameters and state_dict) whose forward goes through
    :func:`conv2d`: oneDNN in dygraph on CPU, the ordinary ``conv2d`` op otherwise (and in exports)."""

    def forward(self, x):
        if self._padding_mode != "zeros" or self._padding_algorithm != "EXPLICIT":
            return nn.Conv2D.forward(self, x)
        return conv2d(x, self.weight, self.bias, self._stride, self._updated_padding, self._dilation,
                      self._groups, self._data_format)
