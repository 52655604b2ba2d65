"""The ``dygraph_ops_cpu`` extension: paddle_rs's dygraph CPU operators with C++-registered gradients.

``csrc/dygraph_ops_cpu.cc`` holds ``rs_softmax``, ``rs_eltwise`` (GELU, SiLU, ReLU) and ``rs_layer_norm`` on oneDNN,
used by :mod:`paddle_rs.ops.act`, ``rs_linear`` (Paddle's GEMM, a fast bias gradient), used by
:mod:`paddle_rs.ops.linear`, ``rs_permute`` (a oneDNN reorder), used by :mod:`paddle_rs.ops.layout`, and
``rs_batch_norm_infer`` (eval-mode BatchNorm, forward only), used by :mod:`paddle_rs.ops.act`. Built on first use
against the oneDNN library Paddle ships (:mod:`paddle_rs.ops._onednn`; ~15 s, then cached) and checked against
``paddle.nn.functional`` before use. ``PADDLE_RS_DYGRAPH_OPS=0`` disables it; any failure is reported once as a
warning and the Paddle ops are used.

Exports: a static graph gets Paddle's own ops by default; after ``set_static_ops("custom")`` (what
:func:`paddle_rs.deploy.export.export` does for a predictor that runs without oneDNN) it gets these custom ops'
forwards instead, and the process that runs the program must register the library first
(:class:`paddle_rs.deploy.predictor.Predictor` does, from ``model.yml`` ``custom_ops``).
"""
import numpy as np
import paddle
import paddle.nn.functional as F

from ._build import StaticBackend, load_once
from ._mode import dygraph_cpu_fp32
from ._onednn import build_onednn_extension

__all__ = ["dygraph_ext", "use_ext", "set_static_ops", "static_custom", "GELU_ALG", "SILU_ALG", "RELU_ALG", "OPS"]

_EXT_STATE = {}   # "module": loaded extension or None (unavailable), "build_s": seconds spent in load()
GELU_ALG, SILU_ALG, RELU_ALG = 0, 1, 2   # rs_eltwise's alg
OPS = ("rs_softmax", "rs_eltwise", "rs_layer_norm", "rs_linear", "rs_permute", "rs_batch_norm_infer")


def _self_check(module):
    """Each op, forward and every gradient, against ``paddle.nn.functional`` on a small input (catches a header /
    library mismatch that still loads)."""
    rng = np.random.default_rng(0)
    x, w, b, g = (paddle.to_tensor(rng.standard_normal(s).astype("float32")) for s in ((3, 5, 7), (7,), (7,),
                                                                                          (3, 5, 7)))
    w2 = paddle.to_tensor(rng.standard_normal((7, 7)).astype("float32"))
    pairs = [((x,), lambda t: module.rs_softmax(t), lambda t: F.softmax(t, -1)),
             ((x,), lambda t: module.rs_eltwise(t, GELU_ALG), F.gelu),
             ((x,), lambda t: module.rs_eltwise(t, SILU_ALG), F.silu),
             ((x,), lambda t: module.rs_eltwise(t, RELU_ALG), F.relu),
             ((x, w, b), lambda t, ww, bb: module.rs_layer_norm(t, ww, bb, 1e-5)[0],
              lambda t, ww, bb: F.layer_norm(t, [7], ww, bb, 1e-5)),
             ((x, w2, b), module.rs_linear, F.linear),
             ((x,), lambda t: module.rs_permute(t, [2, 0, 1]), lambda t: paddle.transpose(t, [2, 0, 1]))]
    with paddle.set_grad_enabled(True):           # the first call may come from a no_grad block
        for inputs, ours, ref in pairs:
            results = []
            for fn in (ours, ref):
                leaves = [t.detach() for t in inputs]
                for t in leaves:
                    t.stop_gradient = False
                y = fn(*leaves)
                results.append([y] + list(paddle.grad([y], leaves, [g.reshape(y.shape)])))
            for a, r in zip(*results):
                if a.shape != r.shape or not np.allclose(a.numpy(), r.numpy(), rtol=1e-4, atol=1e-4):
                    raise RuntimeError("self-check against paddle.nn.functional failed")
    x4 = x.reshape([3, 5, 7, 1])
    stats = [paddle.to_tensor(rng.standard_normal(5).astype("float32")) for _ in range(4)]
    stats[1] = stats[1].abs() + 0.5                                  # a variance
    got = module.rs_batch_norm_infer(x4, *stats, 1e-5)
    want = F.batch_norm(x4, stats[0], stats[1], stats[2], stats[3], training=False, epsilon=1e-5)
    if not np.allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4):
        raise RuntimeError("self-check against paddle.nn.functional failed")


@paddle.jit.not_to_static
def dygraph_ext():
    """The compiled extension module (ops :data:`OPS`), or ``None`` (``PADDLE_RS_DYGRAPH_OPS=0``, or any failure,
    reported once as a warning)."""
    def build():
        module = build_onednn_extension("dygraph_ops_cpu", "dygraph_ops_cpu.cc", OPS)
        _self_check(module)
        return module

    return load_once(_EXT_STATE, "PADDLE_RS_DYGRAPH_OPS",
                     "dygraph CPU ops (softmax, GELU, SiLU, ReLU, LayerNorm, BatchNorm, linear, permute)",
                     "the paddle.nn.functional ops", build)


_STATIC = StaticBackend("plain", "custom", lambda: dygraph_ext(), "dygraph CPU ops")


def set_static_ops(backend):
    """What ``paddle.jit.to_static`` puts into a graph for :mod:`paddle_rs.ops.act` / :mod:`~paddle_rs.ops.linear` /
    :mod:`~paddle_rs.ops.layout`:
    ``"plain"`` (default, Paddle's ops; any Paddle Inference build runs the program) or ``"custom"`` (the forwards
    of :data:`OPS`, fp32 only). Returns the previous backend; ``RuntimeError`` for ``"custom"`` when the extension
    is unavailable."""
    return _STATIC.set(backend)


def static_custom():
    """A static graph is being built with :func:`set_static_ops` ``"custom"``."""
    return _STATIC.custom_on and not paddle.in_dynamic_mode()


def use_ext(x, *params):
    """Whether an op of this extension replaces Paddle's for ``x`` (and ``params``, ``None`` skipped): in dygraph on
    CPU in fp32 (:func:`~paddle_rs.ops._mode.dygraph_cpu_fp32`) for a non-empty ``x``; in a static graph when
    :func:`set_static_ops` chose ``"custom"`` and the tensors are fp32."""
    if not paddle.in_dynamic_mode():
        return static_custom() and all(t is None or t.dtype == paddle.float32 for t in (x,) + params)
    return dygraph_cpu_fp32(x, *params) and x.size > 0 and dygraph_ext() is not None
