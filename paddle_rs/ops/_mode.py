"""Execution-mode predicates shared by the dygraph fast paths of :mod:`paddle_rs.ops` (conv, linear, act,
elementwise, resize).

A fast path replaces a Paddle op by a faster formulation *in dygraph on CPU in fp32 only*; everything else
(static graphs, GPU, other dtypes, AMP) keeps the ordinary op, so non-CPU runs are unaffected and exports are too,
unless an export asks for paddle_rs's custom ops explicitly (``set_static_conv`` / ``set_static_ops``, which
:func:`paddle_rs.deploy.export.export` sets for ``cpu_kernels="on"``). The layers reach these paths only after
:func:`paddle_rs.accelerate` swapped them in.
"""
import paddle

__all__ = ["in_sot", "amp_off", "dygraph_cpu_fp32", "needs_grad"]

try:   # True while paddle.jit.to_static's bytecode translator (SOT, full_graph=False) simulates the code
    from paddle.jit.sot.psdb import in_sot
except ImportError:   # pragma: no cover - Paddle without SOT
    def in_sot():
        return False


def amp_off():
    """No ``paddle.amp.auto_cast`` block is active (AMP decides dtypes per op; fast paths leave it alone)."""
    from paddle.base import core
    return core._get_amp_attrs()._amp_level == core.AmpLevel.O0


def dygraph_cpu_fp32(*tensors):
    """Dygraph, outside SOT and AMP, and every given tensor (``None`` skipped) is a float32 CPU tensor."""
    if not paddle.in_dynamic_mode() or in_sot() or not amp_off():
        return False
    return all(t is None or (t.dtype == paddle.float32 and t.place.is_cpu_place()) for t in tensors)


def needs_grad(*tensors):
    """Autograd is on and a given tensor (``None`` skipped) requires a gradient: an op on them is recorded."""
    return paddle.is_grad_enabled() and any(t is not None and not t.stop_gradient for t in tensors)
