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
  ``[t, b, l, r]``, no AMP, extension available: the ``rs_conv2d_fwd`` / ``rs_conv2d_bwd`` custom ops of
  ``csrc/conv2d_onednn_cpu.cc`` (oneDNN direct convolution in its blocked layouts, reordered from/to NCHW
  around each call; the reorders add 6-8% to the convolution time of UperNet-R50), through :class:`Conv2dFn`
  when a gradient is needed (separate ``PyLayer`` s for the input and for the parameters, so that ``paddle.grad``
  w.r.t. the input alone works; see there). Compiled on first
  use by :func:`onednn_ext` and cached under ``~/.cache/paddle_rs/ops``; ``PADDLE_RS_ONEDNN_CONV=0`` disables
  it.
* 1x1 kernels: ``paddle.nn.functional.conv2d``. Paddle runs them as one GEMM on the NCHW data, on par with
  torch; oneDNN would add two layout reorders that cost as much as the convolution (256->64 at 128x128:
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

Headers: the Paddle wheel ships ``libdnnl.so.3`` (oneDNN 3.6) but only forwarding stubs of the oneDNN headers.
The op needs the real ``oneapi/dnnl/dnnl.hpp`` of oneDNN 3.x, looked up in ``PADDLE_RS_ONEDNN_INCLUDE``,
Paddle's include tree, the installed torch wheel's include tree (torch is not imported; it has 3.x headers),
then ``/usr/include`` and ``/usr/local/include``; only ``oneapi/dnnl`` is copied into the build directory. A
header release newer than the library is handled (see the C++ file); a newly loaded library must pass a small
forward/backward check against ``paddle.nn.functional.conv2d`` before it is used.
"""
import importlib.util
import os
import re

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from ._build import StaticBackend, cache_dir, load_once, load_quietly
from ._mode import dygraph_cpu_fp32
from ._mode import in_sot as _in_sot

__all__ = ["conv2d", "Conv2D", "Conv2dFn", "onednn_ext", "set_static_conv", "CONV_OP"]

_EXT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "conv2d_onednn_cpu.cc")
_EXT_CFLAGS = ["-O3", "-march=native"]
_EXT_STATE = {}   # "module": loaded extension or None (unavailable), "build_s": seconds spent in load()


def _paddle_dir():
    return os.path.dirname(os.path.abspath(paddle.__file__))


def _header_version(include_dir):
    """``(major, minor, patch)`` of the oneDNN headers under ``include_dir``, or ``None`` if incomplete."""
    if not os.path.isfile(os.path.join(include_dir, "oneapi", "dnnl", "dnnl.hpp")):
        return None
    try:
        with open(os.path.join(include_dir, "oneapi", "dnnl", "dnnl_version.h")) as f:
            text = f.read()
        return tuple(int(re.search(rf"#define DNNL_VERSION_{k}\s+(\d+)", text).group(1))
                     for k in ("MAJOR", "MINOR", "PATCH"))
    except (OSError, AttributeError):
        return None


def _onednn_include():
    """The first include directory with complete oneDNN 3.x headers (see the module docstring), and their
    version. Raises ``RuntimeError`` when there is none."""
    candidates = [os.environ.get("PADDLE_RS_ONEDNN_INCLUDE"),
                  os.path.join(_paddle_dir(), "include", "third_party", "install", "onednn", "include")]
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.origin:
        candidates.append(os.path.join(os.path.dirname(spec.origin), "include"))
    candidates += ["/usr/include", "/usr/local/include"]
    for d in candidates:
        if d and (v := _header_version(d)) is not None and v[0] == 3:
            return d, v
    raise RuntimeError("no oneDNN 3.x headers (oneapi/dnnl/dnnl.hpp) found; set PADDLE_RS_ONEDNN_INCLUDE")


def _copy_headers(include_dir, build_dir):
    """Copy ``oneapi/dnnl`` alone into ``build_dir/include`` and return that directory: adding a whole foreign
    include tree (torch's) to the search path could shadow headers of Paddle's own (it has torch-compatible
    ones)."""
    import shutil

    dst = os.path.join(build_dir, "include")
    if not os.path.isfile(os.path.join(dst, "oneapi", "dnnl", "dnnl.hpp")):
        tmp = dst + f".tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(os.path.join(include_dir, "oneapi", "dnnl"), os.path.join(tmp, "oneapi", "dnnl"))
        shutil.rmtree(dst, ignore_errors=True)
        os.rename(tmp, dst)
    return dst


def _self_check(module):
    """A small grouped, strided, padded convolution with bias, forward and all gradients, against
    ``paddle.nn.functional.conv2d`` (catches a header / library mismatch that still loads)."""
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((2, 4, 7, 6)).astype("float32"))
    w = paddle.to_tensor(rng.standard_normal((6, 2, 3, 3)).astype("float32"))
    b = paddle.to_tensor(rng.standard_normal(6).astype("float32"))
    gy = paddle.to_tensor(rng.standard_normal((2, 6, 4, 3)).astype("float32"))
    attrs = ([2, 2], [1, 1], [1, 1], 2, True)
    got = [module.rs_conv2d_fwd(x, w, b, *attrs)] + list(module.rs_conv2d_bwd(x, w, gy, *attrs, True, True))
    xs, ws, bs = (t.detach() for t in (x, w, b))
    for t in (xs, ws, bs):
        t.stop_gradient = False
    with paddle.set_grad_enabled(True):           # the first call may come from a no_grad block
        y = F.conv2d(xs, ws, bs, stride=2, padding=1, groups=2)
        want = [y] + list(paddle.grad([y], [xs, ws, bs], [gy]))
    for g, r in zip(got, want):
        if g.shape != r.shape or not np.allclose(g.numpy(), r.numpy(), rtol=1e-4, atol=1e-4):
            raise RuntimeError("self-check against paddle.nn.functional.conv2d failed")


@paddle.jit.not_to_static
def onednn_ext():
    """The compiled extension module (ops ``rs_conv2d_fwd`` / ``rs_conv2d_bwd``), or ``None``.

    Built with ``paddle.utils.cpp_extension.load`` on first use (~30 s with g++ 12; cached and reloaded in ~1 s
    afterwards; a file lock serialises concurrent builds; :mod:`paddle_rs.ops._build`), linked against Paddle's
    own ``libdnnl.so.3``. ``PADDLE_RS_ONEDNN_CONV=0`` disables it. Any failure (no headers, no compiler, build or
    self-check error) is reported once as a warning and ``paddle.nn.functional.conv2d`` is used.
    """
    def build():
        include_dir, version = _onednn_include()
        lib_dir = os.path.join(_paddle_dir(), "libs")
        if not os.path.exists(os.path.join(lib_dir, "libdnnl.so.3")):
            raise RuntimeError(f"{lib_dir}/libdnnl.so.3 not found")
        build_dir = cache_dir("conv2d_onednn_cpu", _EXT_SOURCE, _EXT_CFLAGS, (include_dir, version))
        # libdnnl.so.3 has no unversioned symlink: link it by file name; -z now turns a symbol the library lacks
        # into a load error instead of a crash at the first call
        module = load_quietly(
            "paddle_rs_conv2d_onednn_cpu", _EXT_SOURCE, build_dir, ("rs_conv2d_fwd", "rs_conv2d_bwd"),
            before_build=lambda: {"extra_include_paths": [_copy_headers(include_dir, build_dir)]},
            extra_cxx_cflags=_EXT_CFLAGS,
            extra_ldflags=[f"-L{lib_dir}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib_dir}", "-Wl,-z,now"])
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


class _ConvInputFn(PyLayer):
    """``y = conv(x, weight, bias)`` with the weight and bias as constants (``ctx``); gradient: ``dx``."""

    @staticmethod
    def forward(ctx, x, weight, bias, attrs):
        ctx.weight, ctx.attrs = weight, attrs
        ctx.save_for_backward(x)
        return onednn_ext().rs_conv2d_fwd(x, weight, _bias_arg(bias), *attrs)

    @staticmethod
    def backward(ctx, gy):
        (x,) = ctx.saved_tensor()
        dx = onednn_ext().rs_conv2d_bwd(x, ctx.weight, gy.contiguous(), *ctx.attrs, True, False)[0]
        return (dx, None) + ((None,) if ctx.attrs[4] else ())      # weight, bias: detached constants


class _ConvParamsFn(PyLayer):
    """Zeros shaped like the convolution's output, differentiable in the weight and the bias (those of them that
    require gradients; the others come detached): gradients ``dweight``, ``dbias`` from one oneDNN
    backward-weights call."""

    @staticmethod
    def forward(ctx, weight, bias, x, attrs, out_shape):
        ctx.x, ctx.attrs = x, attrs
        ctx.needs = (not weight.stop_gradient, bias is not None and not bias.stop_gradient)
        ctx.save_for_backward(weight)
        return paddle.zeros(out_shape, dtype=weight.dtype)

    @staticmethod
    def backward(ctx, gy):
        (weight,) = ctx.saved_tensor()
        _, dw, db = onednn_ext().rs_conv2d_bwd(ctx.x, weight, gy.contiguous(), *ctx.attrs, False, True)
        need_w, need_b = ctx.needs
        grads = (dw if need_w else None,)
        return grads + ((db if need_b else None,) if ctx.attrs[4] else ())


class Conv2dFn:
    """``apply(x [N,C,H,W], weight [O,C/g,kh,kw], bias [O] | None, stride, padding, dilation: [2] ints, groups)
    -> y`` on the oneDNN ops, with gradients.

    Two ``PyLayer`` s: ``y = conv(x; w, b) + Z(w, b)``, the first differentiable in ``x`` only, the second
    returning zeros (the sum is exact) and carrying the weight and bias gradients. A single ``PyLayer`` over
    ``(x, w, b)`` cannot serve ``paddle.grad`` w.r.t. the input alone (say for a saliency map) while the
    parameters still require gradients: its backward does not learn which gradients were asked for, and Paddle
    rejects one for a pruned input ("should return None at 1 position"). Supported: any request that takes the
    weight and the bias together or leaves both out (``[x]``, ``[w, b]``, ``[x, w, b]``, every parameter of a
    model) and any with frozen parameters; not supported: exactly one of a layer's weight / bias while the other
    also requires gradients (the same Paddle error). Weight and bias stay in one node because oneDNN's
    backward-weights call yields both, with the bias gradient summed in its own order (splitting them would cost a
    second call, or change that order -- enough to move ViTAEv2-S's 10-step loss parity, which sits at the
    reference's own fp32 noise). Each backward computes only its own gradients (``rs_conv2d_bwd`` with
    ``need_dx`` or ``need_dw``); the price is one output-sized zeros tensor and add per layer in training (for
    UPerHead's largest convolution: a 32 MB output against a ~4.7 s backward)."""

    @staticmethod
    def apply(x, weight, bias, stride, padding, dilation, groups):
        x, weight = x.contiguous(), weight.contiguous()
        attrs = (stride, padding, dilation, groups, bias is not None)
        y = _ConvInputFn.apply(x, weight.detach(), None if bias is None else bias.detach(), attrs)
        if not weight.stop_gradient or (bias is not None and not bias.stop_gradient):
            y = y + _ConvParamsFn.apply(weight, bias, x.detach(), attrs, y.shape)
        return y


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
            if paddle.is_grad_enabled() and any(t is not None and not t.stop_gradient for t in (x, weight, bias)):
                return Conv2dFn.apply(x, weight, bias, *args)
            return onednn_ext().rs_conv2d_fwd(x.contiguous(), weight.contiguous(), _bias_arg(bias), *args,
                                              bias is not None)
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
