"""Selective scan of Mamba v1 (the SSM recurrence of ``MambaMixer``), pure PyTorch.

Mirror of ``paddle_rs/ops/selective_scan.py``: same functions, same algorithm,
same floating-point operation order in the recurrence.

Math (rsmamba.md §3; mamba-ssm ``selective_scan_ref``), mamba-ssm layout
``u, delta, z: [b, d, l]``, ``A: [d, n]`` (real), ``B, C: [b, n, l]`` (input
dependent), ``D, delta_bias: [d]``::

    delta = softplus(delta + delta_bias)              (bias / softplus optional)
    s_0 = 0;  s_t = exp(delta_t * A) * s_{t-1} + (delta_t * u_t) * B_t        [b, d, n]
    y_t = sum_n s_t[..., n] * C_t[n]                                           [b, d]
    out = (y + D * u) * silu(z)                       (D / z optional)

Entry points
------------
``selective_scan``      mamba-ssm's ``selective_scan_fn`` signature and layout.
``selective_scan_blc``  the same, channels-last: ``u, delta, z: [b, l, d]``,
                        ``B, C: [b, l, n]`` -> ``[b, l, d]`` (what the mixer's
                        Linear layers produce; no ``[b, d, l]`` copies).
``selective_scan_ref``  plain sequential recurrence with autograd (test oracle).

Both production entry points call mamba-ssm's fused CUDA ``selective_scan_fn``
when ``mamba_ssm`` is importable and the tensors are on CUDA (what produced the
released checkpoints, rsmamba.md §3.1); otherwise :class:`SelectiveScanFn`.

:class:`SelectiveScanFn` — chunked sequential scan with a hand-written backward
--------------------------------------------------------------------------------
Time-major (``[l, b, d]``). The discretised coefficients ``exp(delta*A)`` and
``(delta*u)*B`` (``[T, b, d, n]``) are built one chunk of ``T = chunk_size``
steps at a time, so no ``[l, b, d, n]`` tensor is ever materialised; the ``T``
inner steps ``s = a_t*s + b_t`` touch cache-resident ``[b, d, n]`` slabs,
written with ``out=`` into ``unbind`` views of per-chunk-length scratch buffers
(no per-step allocation, no ``stack``). The forward keeps only the state at
each chunk start (``[l/T, b, d, n]``). The backward walks the chunks in
reverse, recomputes each chunk's states from its start state and runs the
adjoint recurrence ``g_t = dy_t C_t + exp(delta_{t+1} A) g_{t+1}``. Time and
memory are linear in ``l`` in forward and backward (nothing slices a growing
tensor per step), and autograd stores ``O(l·(d+n))`` numbers per call instead
of ``O(l·d·n)``. Like mamba-ssm's kernel, ``delta_bias``, softplus, ``D`` and
the ``z`` gate are fused into the same function; every reduction over
``(l, b)`` is a single call.

The forward recurrence performs the reference's floating-point operations in
the same order, except that the input term is ``(delta*u)*B`` instead of
``(delta*B)*u`` (one rounding apart).

Why sequential steps inside chunks rather than a closed form (cumsum of
``delta*A``, ``exp(±S)``) or a log-depth parallel scan: on CPU the cost is the
number of full passes over ``[l, b, d, n]`` elements, not the number of ops.
The recurrence needs 2 passes per step on cache-resident slabs; a closed form
needs >= 2 ``exp`` passes plus cumsums (and fp64 or clamping to stay finite
when ``-sum(delta*A)`` over a chunk exceeds ~88), Hillis-Steele log2(T) x 3.
On GPU (no ``mamba_ssm``) the chunk loop is launch-bound; use the fused
kernel there.
"""
import torch
import torch.nn.functional as F

try:  # fused CUDA kernels (state-spaces/mamba); optional, never needed on CPU
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_selective_scan_fn
except Exception:  # pragma: no cover - not installed / no CUDA build
    _mamba_selective_scan_fn = None

__all__ = ["CHUNK_SIZE", "softplus", "selective_scan", "selective_scan_blc", "selective_scan_ref",
           "SelectiveScanFn"]

CHUNK_SIZE = 16


def softplus(x):
    """Threshold-20 softplus ``x if x > 20 else log1p(exp(x))`` — what transformers 4.39 and mamba-ssm use."""
    return F.softplus(x, beta=1.0, threshold=20.0)


# ----------------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------------
def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Plain sequential scan (transformers 4.39 ``MambaMixer.slow_forward`` order), autograd backward.

    Layout as :func:`selective_scan`. Linear in ``l``, but it materialises ``[b, d, l, n]`` and every step is an
    autograd node: the test oracle, not for training.
    """
    if delta_bias is not None:
        delta = delta + delta_bias.unsqueeze(-1)
    if delta_softplus:
        delta = softplus(delta)
    dA = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))                          # [b, d, l, n]
    dBu = delta.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1) * u.unsqueeze(-1)  # [b, d, l, n]
    Cs = C.transpose(1, 2).unbind(1)                                              # l x [b, n]
    s = torch.zeros_like(dA[:, :, 0])
    ys = []
    for t, (a_t, b_t) in enumerate(zip(dA.unbind(2), dBu.unbind(2))):
        s = a_t * s + b_t
        ys.append(torch.matmul(s, Cs[t].unsqueeze(-1)).squeeze(-1))              # [b, d]
    y = torch.stack(ys, dim=-1)                                                   # [b, d, l]
    if D is not None:
        y = y + u * D.unsqueeze(-1)
    if z is not None:
        y = y * F.silu(z)
    return y


# ----------------------------------------------------------------------------------------------------------
# chunked scan, time-major core
# ----------------------------------------------------------------------------------------------------------
class _Buffers:
    """Scratch ``[T, b, d, n]`` tensors for one chunk length, reused by every chunk of that length.

    The per-step results are written with ``out=`` into ``unbind`` views of ``H`` instead of allocating a new
    ``[b, d, n]`` tensor per step and stacking: allocation is a large share of these small ops (~1.5x in torch,
    ~2.5x in Paddle, measured).
    """

    def __init__(self, T, nb, d, n, like, backward=False):
        shape = (T, nb, d, n)
        self.a, self.b, self.H = like.new_empty(shape), like.new_empty(shape), like.new_empty(shape)
        self.tmp = like.new_empty(shape[1:])
        self.a_l, self.b_l, self.H_l = self.a.unbind(0), self.b.unbind(0), self.H.unbind(0)
        if backward:
            self.E, self.G, self.GLA = like.new_empty(shape), like.new_empty(shape), like.new_empty(shape)
            self.E_l, self.G_l, self.GLA_l = self.E.unbind(0), self.G.unbind(0), self.GLA.unbind(0)
            self.g_next = like.new_empty(shape[1:])


def _buffers(cache, T, ref, n, backward=False):
    if T not in cache:
        cache[T] = _Buffers(T, ref.shape[1], ref.shape[2], n, ref, backward)
    return cache[T]


def _coeffs(delta_c, du_c, A, B_c, buf):
    """One chunk's ``delta`` broadcast to ``[T, b, d, n]`` (a view), ``exp(delta*A)`` and ``(delta*u)*B``
    (written into ``buf.a`` / ``buf.b``)."""
    dx = delta_c.unsqueeze(-1).expand(*delta_c.shape, A.shape[-1])
    torch.exp(torch.mul(dx, A, out=buf.a), out=buf.a)
    torch.mul(du_c.unsqueeze(-1), B_c.unsqueeze(2), out=buf.b)
    return dx


def _run(h, buf):
    """The chunk's recurrence steps ``s_t = a_t * s_{t-1} + b_t`` from state ``h`` into ``buf.H``; returns the
    last state (a view of ``buf.H``: reading it while the next chunk writes its first slab is safe)."""
    for a_t, b_t, h_t in zip(buf.a_l, buf.b_l, buf.H_l):
        torch.add(torch.mul(a_t, h, out=buf.tmp), b_t, out=h_t)
        h = h_t
    return h


def _scan_fwd(u, delta, A, B, C, chunk_size, keep_states=True):
    """Recurrence only: ``u, delta [l, b, d]``, ``B, C [l, b, n]`` -> ``y [l, b, d]`` and, if ``keep_states``,
    the state before each chunk ``[n_chunks, b, d, n]``."""
    n = A.shape[-1]
    split = lambda x: x.split(chunk_size)
    chunks = list(zip(split(delta), split(delta * u), split(B), split(C)))
    h = u.new_zeros(u.shape[1], u.shape[2], n)
    starts = u.new_empty(len(chunks), *h.shape) if keep_states else None
    cache, ys = {}, []
    for c, (dc, duc, Bc, Cc) in enumerate(chunks):
        if keep_states:
            starts[c].copy_(h)
        buf = _buffers(cache, dc.shape[0], u, n)
        _coeffs(dc, duc, A, Bc, buf)
        h = _run(h, buf)
        ys.append(torch.matmul(buf.H, Cc.unsqueeze(-1)).squeeze(-1))
    return torch.cat(ys), starts


def _scan_bwd(gy, u, delta, A, B, C, starts, chunk_size):
    """Adjoint of :func:`_scan_fwd`: grads of ``u, delta, A, B, C`` (time-major). Chunks in reverse order; each
    chunk's states are recomputed from its start state."""
    n = A.shape[-1]
    split = lambda x: x.split(chunk_size)
    chunks = list(zip(split(u), split(delta), split(delta * u), split(B), split(C), split(gy)))
    n_chunks = len(chunks)
    gA = torch.zeros_like(A)
    g_next = torch.zeros_like(starts[0])   # exp(delta_{t+1} A) * g_{t+1}, carried backwards across chunks
    cache = {}
    gu, gdelta, gB, gC = [None] * n_chunks, [None] * n_chunks, [None] * n_chunks, [None] * n_chunks
    for c in range(n_chunks - 1, -1, -1):
        uc, dc, duc, Bc, Cc, gyc = chunks[c]
        buf = _buffers(cache, dc.shape[0], u, n, backward=True)
        dx = _coeffs(dc, duc, A, Bc, buf)
        _run(starts[c], buf)
        prev = (starts[c],) + buf.H_l[:-1]
        torch.mul(gyc.unsqueeze(-1), Cc.unsqueeze(2), out=buf.E)     # dy_t C_t
        for t in range(dc.shape[0] - 1, -1, -1):
            g = torch.add(buf.E_l[t], g_next, out=buf.G_l[t])        # dL/ds_t
            g_next = torch.mul(buf.a_l[t], g, out=buf.g_next)        # dL/ds_{t-1} through the decay
            torch.mul(g_next, prev[t], out=buf.GLA_l[t])             # dL/d(delta_t A)
        gdu = torch.matmul(buf.G, Bc.unsqueeze(-1)).squeeze(-1)     # [T, b, d]
        gB[c] = torch.matmul(duc.unsqueeze(-2), buf.G).squeeze(-2)  # [T, b, n]
        gC[c] = torch.matmul(gyc.unsqueeze(-2), buf.H).squeeze(-2)
        gdelta[c] = torch.mul(buf.GLA, A, out=buf.E).sum(-1) + gdu * uc
        gu[c] = gdu * dc
        gA += torch.mul(buf.GLA, dx, out=buf.GLA).sum((0, 1))
    return torch.cat(gu), torch.cat(gdelta), gA, torch.cat(gB), torch.cat(gC)


def _sum_lb(x):
    """Sum of ``[l, b, d]`` over ``l`` and ``b``."""
    return x.sum((0, 1))


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, keep_states):
    """Whole op, time-major. Returns ``out`` and what the backward needs."""
    delta_pre = delta + delta_bias if delta_bias is not None else delta
    delta = softplus(delta_pre) if delta_softplus else delta_pre
    y, starts = _scan_fwd(u, delta, A, B, C, chunk_size, keep_states)
    if D is not None:
        y = y + u * D
    out = y * F.silu(z) if z is not None else y
    return out, (delta_pre, delta, starts, y)


class SelectiveScanFn(torch.autograd.Function):
    """``(u, delta [l,b,d], A [d,n], B, C [l,b,n], D [d]|None, z [l,b,d]|None, delta_bias [d]|None,
    delta_softplus: bool, chunk_size: int) -> out [l,b,d]`` (time-major; see module docstring)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        out, (delta_pre, delta_sp, starts, y) = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                         chunk_size, keep_states=any(ctx.needs_input_grad))
        ctx.save_for_backward(u, delta_pre, delta_sp, A, B, C, D, z, starts, y if z is not None else None)
        ctx.flags = (D is not None, z is not None, delta_bias is not None, delta_softplus, chunk_size)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):
        u, delta_pre, delta, A, B, C, D, z, starts, y = ctx.saved_tensors
        has_D, has_z, has_bias, delta_softplus, chunk_size = ctx.flags
        gout = gout.contiguous()
        gz = gD = gbias = None
        if has_z:
            sz = torch.sigmoid(z)
            gz = gout * y * (sz * (1 + z * (1 - sz)))                # d silu(z) = s (1 + z (1 - s))
            gy = gout * (z * sz)
        else:
            gy = gout
        gu, gdelta, gA, gB, gC = _scan_bwd(gy, u, delta, A, B, C, starts, chunk_size)
        if has_D:
            gD = _sum_lb(gy * u)
            gu = gu + gy * D
        if delta_softplus:                                           # d softplus = sigmoid (1 above threshold)
            gdelta = torch.where(delta_pre > 20, gdelta, gdelta * torch.sigmoid(delta_pre))
        if has_bias:
            gbias = _sum_lb(gdelta)
        return gu, gdelta, gA, gB, gC, gD, gz, gbias, None, None


def _tm(x):
    return None if x is None else x.transpose(0, 1).contiguous()    # [b, l, c] <-> [l, b, c]


def selective_scan_blc(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       chunk_size=CHUNK_SIZE):
    """Channels-last selective scan: ``u, delta, z: [b, l, d]``; ``B, C: [b, l, n]``; ``A [d, n]``;
    ``D, delta_bias: [d]`` -> ``[b, l, d]``."""
    if _mamba_selective_scan_fn is not None and u.is_cuda:
        t = lambda x: None if x is None else x.transpose(1, 2)
        return t(_mamba_selective_scan_fn(t(u), t(delta), A, t(B), t(C), D, t(z), delta_bias, delta_softplus))
    out = SelectiveScanFn.apply(_tm(u), _tm(delta), A.contiguous(), _tm(B), _tm(C), D, _tm(z), delta_bias,
                                bool(delta_softplus), int(chunk_size))
    return out.transpose(0, 1)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   chunk_size=CHUNK_SIZE):
    """mamba-ssm ``selective_scan_fn`` signature and layout: ``u, delta, z: [b, d, l]``; ``A: [d, n]``;
    ``B, C: [b, n, l]``; ``D, delta_bias: [d]`` -> ``[b, d, l]``."""
    if _mamba_selective_scan_fn is not None and u.is_cuda:
        return _mamba_selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    t = lambda x: None if x is None else x.transpose(1, 2)
    return t(selective_scan_blc(t(u), t(delta), A, t(B), t(C), D, t(z), delta_bias, delta_softplus, chunk_size))
