"""Selective scan of Mamba v1 (the SSM recurrence of ``MambaMixer``), PaddlePaddle.

Mirror of ``torch_ref/ops/selective_scan.py`` (same functions, same algorithm,
same floating-point operation order in the recurrence; the derivation is in
that file's docstring).

Math (rsmamba.md §3), mamba-ssm layout ``u, delta, z: [b, d, l]``, ``A: [d, n]``,
``B, C: [b, n, l]``, ``D, delta_bias: [d]``::

    delta = softplus(delta + delta_bias)              (bias / softplus optional)
    s_0 = 0;  s_t = exp(delta_t * A) * s_{t-1} + (delta_t * u_t) * B_t        [b, d, n]
    y_t = sum_n s_t[..., n] * C_t[n]
    out = (y + D * u) * silu(z)                       (D / z optional)

Entry points: ``selective_scan`` (mamba-ssm layout), ``selective_scan_blc``
(channels-last ``[b, l, d]`` / ``[b, l, n]``, used by the mixer),
``selective_scan_ref`` (plain sequential recurrence with autograd; test oracle).

Execution paths of the production entry points (one recurrence):

* dygraph, fp32 on CPU, ``fused=True`` (the accelerator): :class:`FusedSelectiveScanFn` — the C++ kernels of
  ``csrc/selective_scan_cpu.cc`` (same chunked algorithm, everything from ``delta_bias`` to the gate fused,
  OpenMP over batch x channel blocks), compiled on first use by :func:`fused_ext` and cached under
  ``~/.cache/paddle_rs/ops``. 4-5x faster than the op-by-op scan below, 3x faster than torch's. Falls back
  (one warning) to the pure-Paddle scan when the build fails; ``PADDLE_RS_FUSED_SCAN=0`` disables it.
* dygraph otherwise (the default; fp64; no extension): :class:`SelectiveScanFn` (``PyLayer``) — chunked
  sequential scan,
  coefficients built per chunk of ``T`` steps, only chunk-start states kept,
  hand-written backward that recomputes each chunk and runs the adjoint
  recurrence; ``delta_bias``, softplus, ``D`` and the ``z`` gate fused in (as in
  mamba-ssm). Linear in ``l`` forward and backward. Without gradients the same
  forward runs without saving anything.
* static graph (``paddle.jit.to_static``; ``paddle.in_dynamic_mode()`` is
  False): :func:`_scan_static` — a ``while_loop`` over ``ceil(l / T)`` chunks
  (trip count is a tensor), the ``T`` steps of the body unrolled. The sequence
  is zero-padded to a multiple of ``T``; padded steps have ``delta = 0`` (decay
  1, input 0) and leave the state unchanged, and their outputs are cut off. The
  exported graph accepts any ``l`` and batch and its size does not depend on
  ``l`` (porting.md §5.4). Same per-step operations as dygraph, so Paddle
  Inference reproduces dygraph (to ~1e-6 with the fused kernel's exp polynomial).
  ``set_static_scan("fused")`` exports the fused forward op instead (exact, faster than dygraph; the
  inference process must call :func:`fused_ext` first to register the op).

Paddle CPU specifics (same math as torch, measured on Paddle 3.3.1):

* Broadcasting a trailing size-1 axis (``[T,b,d,1] * [d,n]``) is ~5x slower than
  a ``matmul`` with a size-1 inner dimension, which is exact (one product per
  entry, plus exact zeros); outer products are written that way.
* Gradient reductions over ``(l, b)`` of broadcast operands are ~10x slower than
  a ``matmul`` with a ones row; they are done inside the PyLayer with matmuls.
* Dygraph results are written with ``out=`` into preallocated chunk buffers
  (``unbind`` views for the per-step states): Paddle's allocation per op costs
  more than the arithmetic of these small tensors (2-3x on the step loop).
* softplus: see :func:`softplus`.
"""
import os

import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from ._build import StaticBackend, cache_dir, load_once, load_quietly

__all__ = ["CHUNK_SIZE", "softplus", "selective_scan", "selective_scan_blc", "selective_scan_ref",
           "SelectiveScanFn", "FusedSelectiveScanFn", "fused_ext", "set_static_scan"]

CHUNK_SIZE = 16


def softplus(x):
    """Threshold-20 softplus ``x if x > 20 else log1p(exp(x))``, as torch / mamba-ssm compute it.

    Paddle's ``F.softplus`` computes ``log(1 + exp(x))``, which loses the relative precision of small results
    (``exp(x) < 1e-7``: 6e-8 absolute in fp32, 1e-8 relative in float64), and stops the paddle2onnx conversion.
    The ``clip`` inside ``exp`` keeps the unused branch finite, so the gradient of ``where`` has no NaN above 88.
    """
    return paddle.where(x > 20.0, x, paddle.log1p(paddle.exp(paddle.clip(x, max=20.0))))


# ----------------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------------
def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Plain sequential scan (transformers 4.39 ``MambaMixer.slow_forward`` order), autograd backward.
    Dygraph only; the test oracle (materialises ``[b, d, l, n]``)."""
    if delta_bias is not None:
        delta = delta + delta_bias.unsqueeze(-1)
    if delta_softplus:
        delta = softplus(delta)
    dA = paddle.exp(delta.unsqueeze(-1) * A.unsqueeze(1))                                   # [b, d, l, n]
    dBu = delta.unsqueeze(-1) * B.transpose([0, 2, 1]).unsqueeze(1) * u.unsqueeze(-1)       # [b, d, l, n]
    Cs = paddle.unbind(C.transpose([0, 2, 1]), axis=1)                                      # l x [b, n]
    s = paddle.zeros_like(dA[:, :, 0])
    ys = []
    for t, (a_t, b_t) in enumerate(zip(paddle.unbind(dA, axis=2), paddle.unbind(dBu, axis=2))):
        s = a_t * s + b_t
        ys.append(paddle.matmul(s, Cs[t].unsqueeze(-1)).squeeze(-1))                        # [b, d]
    y = paddle.stack(ys, axis=-1)                                                           # [b, d, l]
    if D is not None:
        y = y + u * D.unsqueeze(-1)
    if z is not None:
        y = y * F.silu(z)
    return y


# ----------------------------------------------------------------------------------------------------------
# chunked scan, time-major core
# ----------------------------------------------------------------------------------------------------------
def _outer(x, y):
    """``x[..., :, None] * y[..., None, :]`` as a matmul (exact; fast on Paddle CPU)."""
    return paddle.matmul(x.unsqueeze(-1), y.unsqueeze(-2))


class _Buffers:
    """Scratch ``[T, b, d, n]`` tensors for one chunk length, reused by every chunk of that length.

    The per-step results are written with ``out=`` into ``unbind`` views of ``H`` instead of allocating a new
    ``[b, d, n]`` tensor per step and stacking: allocation is a large share of these small ops (~2.5x on Paddle
    CPU, ~1.5x in torch, measured). Dygraph only, and only where no autograd graph is recorded (inside the
    PyLayer or without gradients).
    """

    def __init__(self, T, nb, d, n, dtype, backward=False):
        shape = [T, nb, d, n]
        new = lambda s: paddle.empty(s, dtype=dtype)
        self.dx, self.a, self.b, self.H = new(shape), new(shape), new(shape), new(shape)
        self.tmp = new(shape[1:])
        self.a_l, self.b_l, self.H_l = paddle.unbind(self.a, 0), paddle.unbind(self.b, 0), paddle.unbind(self.H, 0)
        if backward:
            self.E, self.G, self.GLA = new(shape), new(shape), new(shape)
            self.E_l, self.G_l = paddle.unbind(self.E, 0), paddle.unbind(self.G, 0)
            self.GLA_l = paddle.unbind(self.GLA, 0)
            self.g_next = new(shape[1:])


def _buffers(cache, T, ref, n, backward=False):
    if T not in cache:
        cache[T] = _Buffers(T, ref.shape[1], ref.shape[2], n, ref.dtype, backward)
    return cache[T]


def _coeffs(delta_c, du_c, A, B_c, ones_n, buf):
    """One chunk's ``delta`` broadcast to ``[T, b, d, n]``, ``exp(delta*A)`` and ``(delta*u)*B``, written into
    ``buf.dx`` / ``buf.a`` / ``buf.b``."""
    paddle.matmul(delta_c.unsqueeze(-1), ones_n, out=buf.dx)
    paddle.exp(paddle.multiply(buf.dx, A, out=buf.a), out=buf.a)
    paddle.matmul(du_c.unsqueeze(-1), B_c.unsqueeze(-2), out=buf.b)
    return buf.dx


def _run(h, buf):
    """The chunk's recurrence steps ``s_t = a_t * s_{t-1} + b_t`` from state ``h`` into ``buf.H``; returns the
    last state (a view of ``buf.H``: reading it while the next chunk writes its first slab is safe)."""
    for a_t, b_t, h_t in zip(buf.a_l, buf.b_l, buf.H_l):
        paddle.add(paddle.multiply(a_t, h, out=buf.tmp), b_t, out=h_t)
        h = h_t
    return h


def _sections(length, chunk_size):
    return [chunk_size] * (length // chunk_size) + ([length % chunk_size] if length % chunk_size else [])


def _split(x, sections):
    return paddle.split(x, sections, axis=0) if len(sections) > 1 else [x]


def _scan_fwd(u, delta, A, B, C, chunk_size, keep_states=True):
    """Recurrence only: ``u, delta [l, b, d]``, ``B, C [l, b, n]`` -> ``y [l, b, d]`` and, if ``keep_states``,
    the state before each chunk ``[n_chunks, b, d, n]``."""
    length, nb, d = u.shape
    n = A.shape[-1]
    sec = _sections(length, chunk_size)
    ones_n = paddle.ones([1, n], dtype=u.dtype)
    h = paddle.zeros([nb, d, n], dtype=u.dtype)
    starts = paddle.empty([len(sec), nb, d, n], dtype=u.dtype) if keep_states else None
    starts_l = paddle.unbind(starts, 0) if keep_states else None
    cache, ys = {}, []
    for c, (dc, duc, Bc, Cc) in enumerate(zip(_split(delta, sec), _split(paddle.multiply(delta, u), sec),
                                              _split(B, sec), _split(C, sec))):
        if keep_states:
            paddle.assign(h, output=starts_l[c])
        buf = _buffers(cache, sec[c], u, n)
        _coeffs(dc, duc, A, Bc, ones_n, buf)
        h = _run(h, buf)
        ys.append(paddle.matmul(buf.H, Cc.unsqueeze(-1)).squeeze(-1))
    return paddle.concat(ys, axis=0), starts


def _sum_lb(x):
    """Sum of ``[l, b, d]`` over ``l`` and ``b``, as one matmul with a ones row."""
    flat = x.reshape([-1, x.shape[-1]])
    return paddle.matmul(paddle.ones([1, flat.shape[0]], dtype=x.dtype), flat).reshape([x.shape[-1]])


def _scan_bwd(gy, u, delta, A, B, C, starts, chunk_size):
    """Adjoint of :func:`_scan_fwd`: grads of ``u, delta, A, B, C`` (time-major). Chunks in reverse order; each
    chunk's states are recomputed from its start state."""
    length = u.shape[0]
    d, n = A.shape
    sec = _sections(length, chunk_size)
    ones_n = paddle.ones([1, n], dtype=u.dtype)
    ones_col = paddle.ones([n, 1], dtype=u.dtype)
    chunks = list(zip(_split(u, sec), _split(delta, sec), _split(paddle.multiply(delta, u), sec), _split(B, sec),
                      _split(C, sec), _split(gy, sec)))
    starts = paddle.unbind(starts, axis=0)
    n_chunks = len(chunks)
    gA = paddle.zeros([1, d * n], dtype=A.dtype)
    g_next = paddle.zeros_like(starts[0])   # exp(delta_{t+1} A) * g_{t+1}, carried backwards across chunks
    cache = {}
    gu, gdelta, gB, gC = [None] * n_chunks, [None] * n_chunks, [None] * n_chunks, [None] * n_chunks
    for c in range(n_chunks - 1, -1, -1):
        uc, dc, duc, Bc, Cc, gyc = chunks[c]
        buf = _buffers(cache, sec[c], u, n, backward=True)
        dx = _coeffs(dc, duc, A, Bc, ones_n, buf)
        _run(starts[c], buf)
        prev = (starts[c],) + tuple(buf.H_l[:-1])
        paddle.matmul(gyc.unsqueeze(-1), Cc.unsqueeze(-2), out=buf.E)              # dy_t C_t
        for t in range(sec[c] - 1, -1, -1):
            g = paddle.add(buf.E_l[t], g_next, out=buf.G_l[t])                    # dL/ds_t
            g_next = paddle.multiply(buf.a_l[t], g, out=buf.g_next)              # dL/ds_{t-1} via the decay
            paddle.multiply(g_next, prev[t], out=buf.GLA_l[t])                    # dL/d(delta_t A)
        gdu = paddle.matmul(buf.G, Bc.unsqueeze(-1)).squeeze(-1)                  # [T, b, d]
        gB[c] = paddle.matmul(duc.unsqueeze(-2), buf.G).squeeze(-2)               # [T, b, n]
        gC[c] = paddle.matmul(gyc.unsqueeze(-2), buf.H).squeeze(-2)
        gdelta[c] = paddle.add(paddle.matmul(paddle.multiply(buf.GLA, A, out=buf.E), ones_col).squeeze(-1),
                               paddle.multiply(gdu, uc))
        gu[c] = paddle.multiply(gdu, dc)
        prod = paddle.multiply(buf.GLA, dx, out=buf.GLA).reshape([-1, d * n])
        gA = paddle.add(gA, paddle.matmul(paddle.ones([1, prod.shape[0]], dtype=A.dtype), prod))
    return (paddle.concat(gu, axis=0), paddle.concat(gdelta, axis=0), gA.reshape([d, n]),
            paddle.concat(gB, axis=0), paddle.concat(gC, axis=0))


def _pre(delta, delta_bias, delta_softplus):
    delta_pre = paddle.add(delta, delta_bias) if delta_bias is not None else delta
    return delta_pre, (softplus(delta_pre) if delta_softplus else delta_pre)


def _post(y, u, D, z):
    if D is not None:
        y = paddle.add(y, paddle.multiply(u, D))
    out = paddle.multiply(y, F.silu(z)) if z is not None else y
    return out, y


class SelectiveScanFn(PyLayer):
    """``(u, delta [l,b,d], A [d,n], B, C [l,b,n], D [d]|None, z [l,b,d]|None, delta_bias [d]|None,
    delta_softplus: bool, chunk_size: int) -> out [l,b,d]`` (time-major; see module docstring)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        delta_pre, delta_sp = _pre(delta, delta_bias, delta_softplus)
        y, starts = _scan_fwd(u, delta_sp, A, B, C, chunk_size, keep_states=True)
        out, y = _post(y, u, D, z)
        ctx.save_for_backward(u, delta_pre, delta_sp, A, B, C, D, z, starts, y if z is not None else None)
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        ctx.needs = [t is not None and not t.stop_gradient for t in inputs]
        ctx.present = [t is not None for t in inputs]
        ctx.flags = (delta_softplus, chunk_size)
        return out

    @staticmethod
    def backward(ctx, gout):
        u, delta_pre, delta, A, B, C, D, z, starts, y = ctx.saved_tensor()
        delta_softplus, chunk_size = ctx.flags
        gz = gD = gbias = None
        if z is not None:
            sz = F.sigmoid(z)
            dsilu = paddle.multiply(sz, 1.0 + paddle.multiply(z, 1.0 - sz))      # s (1 + z (1 - s))
            gz = paddle.multiply(paddle.multiply(gout, y), dsilu)
            gy = paddle.multiply(gout, paddle.multiply(z, sz))
        else:
            gy = gout
        gu, gdelta, gA, gB, gC = _scan_bwd(gy, u, delta, A, B, C, starts, chunk_size)
        if D is not None:
            gD = _sum_lb(paddle.multiply(gy, u))
            gu = paddle.add(gu, paddle.multiply(gy, D))
        if delta_softplus:                                               # d softplus = sigmoid (1 above 20)
            gdelta = paddle.where(delta_pre > 20, gdelta, paddle.multiply(gdelta, F.sigmoid(delta_pre)))
        if ctx.present[7]:
            gbias = _sum_lb(gdelta)
        grads = (gu, gdelta, gA, gB, gC, gD, gz, gbias)
        return tuple(g if need else None for g, need, here in zip(grads, ctx.needs, ctx.present) if here)


# ----------------------------------------------------------------------------------------------------------
# fused C++ CPU kernels (paddle_rs/ops/csrc/selective_scan_cpu.cc), compiled on first use
# ----------------------------------------------------------------------------------------------------------
_EXT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "selective_scan_cpu.cc")
_EXT_CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_EXT_STATE = {}   # "module": loaded extension or None (unavailable), "build_s": seconds spent in load()


@paddle.jit.not_to_static
def fused_ext():
    """The compiled extension module (ops ``rs_selective_scan_fwd`` / ``rs_selective_scan_bwd``), or ``None``.

    Built with ``paddle.utils.cpp_extension.load`` on first use (~20 s with g++ 12; cached and reloaded in ~1 s
    afterwards; a file lock serialises concurrent builds; :mod:`paddle_rs.ops._build`). ``PADDLE_RS_FUSED_SCAN=0``
    disables it. Any failure (no compiler, no OpenMP, build error) is reported once as a warning and the
    pure-Paddle scan is used.
    """
    def build():
        return load_quietly("paddle_rs_selective_scan_cpu", _EXT_SOURCE,
                            cache_dir("selective_scan_cpu", _EXT_SOURCE, _EXT_CFLAGS),
                            ("rs_selective_scan_fwd", "rs_selective_scan_bwd"),
                            extra_cxx_cflags=_EXT_CFLAGS, extra_ldflags=["-fopenmp"])

    return load_once(_EXT_STATE, "PADDLE_RS_FUSED_SCAN", "fused CPU selective scan", "the pure-Paddle scan", build)


def _fused_ok(u, *others):
    return (paddle.in_dynamic_mode() and u.dtype == paddle.float32 and u.place.is_cpu_place()
            and all(t is None or t.dtype == paddle.float32 for t in others) and fused_ext() is not None)


def _fused_args(u, delta, A, B, C, D, z, delta_bias):
    """Contiguous fp32 inputs of the fused ops; absent ``D`` / ``delta_bias`` are zeros (adding 0 is exact),
    absent ``z`` a 1-element placeholder (``has_z=False``)."""
    zeros = None
    if D is None or delta_bias is None:
        zeros = paddle.zeros([A.shape[0]], dtype=A.dtype)
    c = lambda t: t.contiguous()
    return (c(u), c(delta), c(A), c(B), c(C), zeros if D is None else c(D),
            paddle.zeros([1], dtype=u.dtype) if z is None else c(z), zeros if delta_bias is None else c(delta_bias))


class FusedSelectiveScanFn(PyLayer):
    """Channels-last selective scan on the fused C++ kernels: ``(u, delta [b,l,d], A [d,n], B, C [b,l,n],
    D [d]|None, z [b,l,d]|None, delta_bias [d]|None, delta_softplus, chunk_size) -> out [b,l,d]``.

    Same algorithm as :class:`SelectiveScanFn` (chunk-start states saved, chunks recomputed in the backward),
    with ``delta_bias``, softplus, ``D`` and the gate fused in; all of it in one OpenMP kernel per direction.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        args = _fused_args(*inputs)
        out, starts = fused_ext().rs_selective_scan_fwd(*args, bool(delta_softplus), z is not None,
                                                          int(chunk_size), True)
        ctx.save_for_backward(*args, starts)
        ctx.needs = [t is not None and not t.stop_gradient for t in inputs]
        ctx.present = [t is not None for t in inputs]
        ctx.flags = (bool(delta_softplus), z is not None, int(chunk_size))
        return out

    @staticmethod
    def backward(ctx, gout):
        saved = ctx.saved_tensor()
        grads = fused_ext().rs_selective_scan_bwd(*saved, gout.contiguous(), *ctx.flags)
        return tuple(g if need else None for g, need, here in zip(grads, ctx.needs, ctx.present) if here)


_STATIC = StaticBackend("loop", "fused", lambda: fused_ext(), "fused selective-scan")


def set_static_scan(backend):
    """What ``paddle.jit.to_static`` puts into the exported graph for the scan:

    * ``"loop"`` (default): the pure-Paddle ``while_loop`` over ``ceil(l / T)`` chunks (:func:`_scan_static`); the
      export runs in any Paddle Inference build.
    * ``"fused"``: one ``rs_selective_scan_fwd`` custom op (the C++ kernel, dynamic ``l``; ~5x faster). The
      process that runs the exported model must register the op first — call :func:`fused_ext` (which builds or
      loads the cached library) before ``paddle.jit.load`` / ``paddle.inference.create_predictor``.

    Returns the previous backend. Raises ``RuntimeError`` for ``"fused"`` when the extension is unavailable.
    """
    return _STATIC.set(backend)


@paddle.jit.not_to_static
def _static_fused():
    return _STATIC.custom_on


@paddle.jit.not_to_static
def _fused_static(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
    """The fused forward op in a static graph (``set_static_scan("fused")``)."""
    zeros = paddle.zeros([A.shape[0]], dtype=A.dtype)
    return fused_ext().rs_selective_scan_fwd(
        u, delta, A, B, C, zeros if D is None else D, paddle.zeros([1], dtype=u.dtype) if z is None else z,
        zeros if delta_bias is None else delta_bias, bool(delta_softplus), z is not None, int(chunk_size), False)[0]


@paddle.jit.not_to_static
def _scan_static(u, delta, A, B, C, chunk_size):
    """Static-graph recurrence (time-major, like :func:`_scan_fwd`): ``while_loop`` over ``ceil(l/T)`` chunks.

    Explicit static APIs; shapes only from ``paddle.shape`` (porting.md §5.3), so the graph is independent of
    ``l`` and of the batch size.
    """
    T = chunk_size
    d, n = A.shape[0], A.shape[1]
    shp = paddle.shape(u)
    length, nb = shp[0], shp[1]
    n_chunks = (length + T - 1) // T
    padded = n_chunks * T
    zeros_d = paddle.zeros([T, nb, d], dtype=u.dtype)
    zeros_n = paddle.zeros([T, nb, n], dtype=u.dtype)

    def pad(x, zeros):   # [l, b, c] -> [n_chunks, T, b, c]; appended rows are zeros (delta = 0 keeps the state)
        x = paddle.slice(paddle.concat([x, zeros], axis=0), axes=[0], starts=[0], ends=[padded])
        return paddle.reshape(x, [-1, T, nb, zeros.shape[-1]])

    delta_p, du_p = pad(delta, zeros_d), pad(paddle.multiply(delta, u), zeros_d)
    B_p, C_p = pad(B, zeros_n), pad(C, zeros_n)
    ones_n = paddle.ones([1, n], dtype=u.dtype)

    def cond(i, h, ys):
        return i < n_chunks

    def body(i, h, ys):   # the same operations as _coeffs/_run, without scratch buffers
        a = paddle.exp(paddle.multiply(paddle.matmul(delta_p[i].unsqueeze(-1), ones_n), A))
        b = _outer(du_p[i], B_p[i])
        hs = []
        for t in range(T):
            h = paddle.add(paddle.multiply(a[t], h), b[t])
            hs.append(h)
        y = paddle.matmul(paddle.stack(hs), C_p[i].unsqueeze(-1)).squeeze(-1)
        return [i + 1, h, paddle.static.setitem(ys, i, y)]

    loop_vars = [paddle.zeros([], dtype="int64"), paddle.zeros([nb, d, n], dtype=u.dtype),
                 paddle.zeros(paddle.shape(delta_p), dtype=u.dtype)]
    _, _, ys = paddle.static.nn.while_loop(cond, body, loop_vars)
    return paddle.slice(paddle.reshape(ys, [-1, nb, d]), axes=[0], starts=[0], ends=[length])


def _tm(x):
    return None if x is None else x.transpose([1, 0, 2]).contiguous()     # [b, l, c] <-> [l, b, c]


def selective_scan_blc(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       chunk_size=None, fused=False):
    """Channels-last selective scan: ``u, delta, z: [b, l, d]``; ``B, C: [b, l, n]``; ``A [d, n]``;
    ``D, delta_bias: [d]`` -> ``[b, l, d]``. ``chunk_size`` defaults to ``CHUNK_SIZE``.

    ``fused``: use the fused C++ kernel where it applies (dygraph fp32 on CPU with the extension built; in a static
    graph after ``set_static_scan("fused")``). Off by default: the pure-Paddle scan, portable to every Paddle
    build, device and export (the accelerator, :func:`paddle_rs.accelerate`, turns it on per mixer)."""
    # (defaults are None, not CHUNK_SIZE: dy2static re-creates the function and loses module globals in defaults)
    chunk_size = CHUNK_SIZE if chunk_size is None else chunk_size
    if fused and not paddle.in_dynamic_mode() and _static_fused():
        return _fused_static(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    if not paddle.in_dynamic_mode():
        t = lambda x: None if x is None else x.transpose([1, 0, 2])
        delta_pre, delta_sp = _pre(t(delta), delta_bias, delta_softplus)
        y = _scan_static(t(u), delta_sp, A, t(B), t(C), chunk_size)
        out, _ = _post(y, t(u), D, t(z))
        return out.transpose([1, 0, 2])
    if fused and _fused_ok(u, delta, A, B, C, D, z, delta_bias):
        if paddle.is_grad_enabled() and any(t is not None and not t.stop_gradient
                                            for t in (u, delta, A, B, C, D, z, delta_bias)):
            return FusedSelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                              int(chunk_size))
        args = _fused_args(u, delta, A, B, C, D, z, delta_bias)
        return fused_ext().rs_selective_scan_fwd(*args, bool(delta_softplus), z is not None, int(chunk_size),
                                                 False)[0]
    args = (_tm(u), _tm(delta), A, _tm(B), _tm(C), D, _tm(z), delta_bias)
    if paddle.is_grad_enabled() and any(t is not None and not t.stop_gradient for t in args):
        out = SelectiveScanFn.apply(*args, bool(delta_softplus), int(chunk_size))
    else:
        u_, delta_, A_, B_, C_, D_, z_, bias_ = args
        _, delta_sp = _pre(delta_, bias_, delta_softplus)
        y, _ = _scan_fwd(u_, delta_sp, A_, B_, C_, chunk_size, keep_states=False)
        out, _ = _post(y, u_, D_, z_)
    return out.transpose([1, 0, 2])


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   chunk_size=None, fused=False):
    """mamba-ssm ``selective_scan_fn`` signature and layout: ``u, delta, z: [b, d, l]``; ``A: [d, n]``;
    ``B, C: [b, n, l]``; ``D, delta_bias: [d]`` -> ``[b, d, l]``."""
    t = lambda x: None if x is None else x.transpose([0, 2, 1])
    return t(selective_scan_blc(t(u), t(delta), A, t(B), t(C), D, t(z), delta_bias, delta_softplus, chunk_size,
                                fused))
