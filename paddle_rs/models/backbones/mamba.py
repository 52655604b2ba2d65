"""Mamba (v1) mixer and the RSMamba backbone, PaddlePaddle.

Mirror of ``torch_ref/models/backbones/mamba.py`` (same classes, same attribute
and parameter names, same forward order). Framework notes:

* ``nn.Linear`` weights are ``[in, out]`` (the converter transposes them);
  ``A_log`` ``[I, N]`` is a plain parameter and is never transposed.
* The causal depthwise conv is torch's: ``padding=K-1`` on channels-first input, then the
  first ``L`` outputs (``L`` read with ``paddle.shape``, so an export keeps a dynamic length).
* LayerNorms get ``epsilon`` explicitly (1e-6); Paddle's default is 1e-5. Paddle 3.3.1's
  CPU ``layer_norm`` drops the weight from the input gradient whenever the weight's
  gradient is not computed (frozen LayerNorm weights, ``paddle.grad`` w.r.t. the image
  only; tests/test_act_onednn.py documents it); :func:`paddle_rs.accelerate` swaps in a
  LayerNorm whose gradient is right in every case.
* The selective scan is the op of :mod:`paddle_rs.ops.selective_scan`: a portable
  pure-Paddle scan by default; :func:`paddle_rs.accelerate` sets ``fused_scan`` for
  its fused CPU kernel.
* Initialisation reproduces torch's defaults with ``paddle_rs.models.init``.
* Static export (``paddle.jit.to_static``): shapes come from ``paddle.shape`` or
  reshape with ``0/-1``; the selective scan switches to its ``while_loop``
  form; ``H, W`` must be fixed (``pos_embed`` is not interpolated), batch may be
  dynamic. The shuffle path exports in-graph ``paddle.randperm`` (random mode)
  or index buffers (``perm_seed``), or takes ``perms`` as an input.

Shuffle permutations, in order of precedence: ``forward(x, perms=...)`` (``[num_layers, L]``
int64), fixed ``make_perms(num_layers, L, perm_seed)`` buffers (non-persistable, not
in the state_dict) when built with ``perm_seed=int``, else ``paddle.randperm(L)`` per layer per
forward (upstream behaviour; Paddle's RNG stream differs from torch's — parity needs
``perms`` or ``perm_seed``).
"""
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .. import init
from ...ops.selective_scan import selective_scan_blc

__all__ = ["ARCH_ZOO", "PATH_TYPES", "make_perms", "MambaMixer", "PatchEmbed", "RSMambaBackbone"]

# embed_dims D, num_layers, feedforward_channels I (= mixer intermediate size)
ARCH_ZOO = {
    "s": dict(embed_dims=192, num_layers=16, feedforward_channels=384),
    "b": dict(embed_dims=192, num_layers=24, feedforward_channels=384),
    "l": dict(embed_dims=256, num_layers=36, feedforward_channels=512),
    "h": dict(embed_dims=320, num_layers=48, feedforward_channels=640),
}
_ARCH_ALIASES = {"small": "s", "base": "b", "large": "l", "huge": "h"}
PATH_TYPES = ("forward", "forward_reverse_mean", "forward_reverse_gate", "forward_reverse_shuffle_gate",
              "forward_reverse_shuffle_mean")


def make_perms(num_layers, length, seed):
    """``[num_layers, length]`` int64 numpy array of permutations of ``0..length-1`` (one per layer), from a
    seeded numpy generator. Framework independent: feed the same array to the torch and the Paddle model."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(length) for _ in range(num_layers)]).astype(np.int64)


class MambaMixer(nn.Layer):
    """Mamba v1 token mixer: ``[B, L, hidden] -> [B, L, hidden]`` (transformers 4.39.2 ``MambaMixer``).

    ``in_proj`` (no bias) -> x | z;  x -> causal depthwise ``conv1d`` -> SiLU -> ``x_proj`` -> dt | B | C;
    delta = softplus(``dt_proj``(dt));  A = -exp(``A_log``);  selective scan with ``D`` skip and SiLU(z) gate;
    ``out_proj`` (no bias). Initialisation: torch defaults, ``A_log = log(1..N)``, ``D = 1``.

    ``fused_scan``: run the scan on the fused CPU kernel where it applies (set by :func:`paddle_rs.accelerate`;
    off by default: the pure-Paddle scan, which every Paddle build and export runs).
    """

    fused_scan = False

    def __init__(self, hidden_size, intermediate_size, state_size=16, conv_kernel=4, time_step_rank=None,
                 use_conv_bias=True, use_bias=False, chunk_size=None):
        super().__init__()
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.ssm_state_size = state_size
        self.conv_kernel_size = conv_kernel
        self.time_step_rank = time_step_rank if time_step_rank is not None else math.ceil(hidden_size / 16)
        self.chunk_size = chunk_size
        I, N, R = intermediate_size, state_size, self.time_step_rank
        self.conv1d = nn.Conv1D(I, I, conv_kernel, groups=I, padding=conv_kernel - 1,
                                bias_attr=None if use_conv_bias else False)
        self.in_proj = nn.Linear(hidden_size, 2 * I, bias_attr=None if use_bias else False)
        self.x_proj = nn.Linear(I, R + 2 * N, bias_attr=False)
        self.dt_proj = nn.Linear(R, I)
        A = np.tile(np.arange(1, N + 1, dtype=np.float32)[None, :], (I, 1))
        self.A_log = self.create_parameter([I, N], default_initializer=nn.initializer.Assign(np.log(A)))
        self.D = self.create_parameter([I], default_initializer=nn.initializer.Constant(1.0))
        self.out_proj = nn.Linear(I, hidden_size, bias_attr=None if use_bias else False)
        for m in (self.conv1d, self.in_proj, self.x_proj, self.dt_proj, self.out_proj):
            init.torch_default_(m)

    def forward(self, hidden_states):
        """``[B, L, hidden]`` -> ``[B, L, hidden]``. Channels-last throughout (the scan takes ``[B, L, I]``).

        As in transformers' CUDA path, ``dt_proj``'s bias enters the scan as ``delta_bias`` (added before the
        softplus, same math as ``softplus(dt_proj(dt))``).
        """
        seq_len = paddle.shape(hidden_states)[1]
        R, N = self.time_step_rank, self.ssm_state_size
        xz = self.in_proj(hidden_states)                                  # [B, L, 2I]
        x, z = paddle.chunk(xz, 2, axis=-1)                               # first half x, second half gate z
        x = F.silu(self.conv1d(x.transpose([0, 2, 1]))[:, :, :seq_len]).transpose([0, 2, 1])   # causal depthwise conv
        dt, Bm, Cm = paddle.split(self.x_proj(x), [R, N, N], axis=-1)     # [B, L, R | N | N]
        delta = paddle.matmul(dt, self.dt_proj.weight)                    # [B, L, I], bias added in the scan
        # upstream computes A and reads D and the bias in float32 (``.float()``) whatever the model's dtype
        f32 = lambda t: t.astype("float32").astype(x.dtype)               # noqa: E731
        A = -paddle.exp(self.A_log.astype("float32")).astype(x.dtype)
        y = selective_scan_blc(x, delta, A, Bm, Cm, f32(self.D), z, delta_bias=f32(self.dt_proj.bias),
                               delta_softplus=True, chunk_size=self.chunk_size, fused=self.fused_scan)
        return self.out_proj(y)


class PatchEmbed(nn.Layer):
    """mmcv ``PatchEmbed``: corner adaptive padding (zeros bottom/right), ``Conv2D(k, stride, bias=False)``,
    flatten to ``[B, h*w, D]`` in row-major raster order. Returns ``(tokens, (h, w))``."""

    def __init__(self, in_channels=3, embed_dims=192, kernel_size=16, stride=8, bias=False):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.projection = nn.Conv2D(in_channels, embed_dims, kernel_size, stride=stride,
                                 bias_attr=None if bias else False)

    def pad_amount(self, size):
        out = math.ceil(size / self.stride)
        return max((out - 1) * self.stride + self.kernel_size - size, 0)

    def out_size(self, size):
        return (size + self.pad_amount(size) - self.kernel_size) // self.stride + 1

    def forward(self, x):
        H, W = x.shape[-2], x.shape[-1]
        if H < 0 or W < 0:
            raise ValueError("PatchEmbed needs static H and W (pos_embed fixes the input size); export with an "
                             "InputSpec such as [None, 3, 224, 224]")
        ph, pw = self.pad_amount(H), self.pad_amount(W)
        if ph or pw:
            x = F.pad(x, [0, pw, 0, ph], data_format="NCHW")     # [left, right, top, bottom]
        x = self.projection(x)
        hw = (self.out_size(H), self.out_size(W))
        return x.flatten(2).transpose([0, 2, 1]), hw


class RSMambaBackbone(nn.Layer):
    """RSMamba backbone. ``forward(x [B,3,H,W], perms=None)`` -> ``[B, D]`` for ``out_type='avg_featmap'``
    (``'featmap'``: ``[B, D, h, w]``; ``'raw'``: ``[B, L, D]``). ``H, W`` must equal ``img_size``."""

    def __init__(self, arch="b", img_size=224, patch_size=16, patch_stride=8, in_channels=3, pe_type="learnable",
                 path_type="forward_reverse_shuffle_gate", drop_rate=0.0, norm_eps=1e-6, final_norm=True,
                 out_type="avg_featmap", perm_seed=None, state_size=16, conv_kernel=4, chunk_size=None):
        super().__init__()
        if isinstance(arch, str):
            arch = _ARCH_ALIASES.get(arch.lower(), arch.lower())
            if arch not in ARCH_ZOO:
                raise ValueError(f"unknown RSMamba arch {arch!r}; choose from {sorted(ARCH_ZOO)} or pass a dict")
            arch = ARCH_ZOO[arch]
        if path_type not in PATH_TYPES:
            raise ValueError(f"unknown path_type {path_type!r}; choose from {PATH_TYPES}")
        if out_type not in ("avg_featmap", "featmap", "raw"):
            raise ValueError(f"unknown out_type {out_type!r}")
        self.embed_dims = D = arch["embed_dims"]
        self.num_layers = arch["num_layers"]
        I = arch.get("feedforward_channels", 2 * D)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.path_type, self.out_type, self.pe_type = path_type, out_type, pe_type
        self.final_norm = final_norm

        self.patch_embed = PatchEmbed(in_channels, D, patch_size, patch_stride, bias=False)
        self.patch_resolution = tuple(self.patch_embed.out_size(s) for s in self.img_size)
        self.num_patches = L = self.patch_resolution[0] * self.patch_resolution[1]
        if pe_type == "learnable":
            self.pos_embed = self.create_parameter([1, L, D], default_initializer=nn.initializer.Constant(0.0))
        elif pe_type == "sine":
            self.register_buffer("pos_embed", _sincos_pos_embed(self.patch_resolution, D), persistable=False)
        else:
            self.pos_embed = None
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        self.layers = nn.LayerList([
            MambaMixer(D, I, state_size, conv_kernel, math.ceil(D / 16), use_conv_bias=True, use_bias=False,
                       chunk_size=chunk_size) for _ in range(self.num_layers)])
        self.gate_layers = nn.LayerList()
        if "gate" in path_type:
            n_paths = 3 if "shuffle" in path_type else 2
            for _ in range(self.num_layers):
                fc = nn.Linear(n_paths * D, n_paths, bias_attr=False)
                init.torch_default_(fc)
                self.gate_layers.append(nn.Sequential(fc, nn.Softmax(axis=-1)))
        self.pre_norm = nn.LayerNorm(D, epsilon=norm_eps)
        if final_norm:
            self.ln1 = nn.LayerNorm(D, epsilon=norm_eps)
        if out_type == "avg_featmap":
            self.ln2 = nn.LayerNorm(D, epsilon=norm_eps)

        self.perm_seed = perm_seed
        if perm_seed is not None and "shuffle" in path_type:
            perms = make_perms(self.num_layers, L, perm_seed)
            self.register_buffer("fixed_perms", paddle.to_tensor(perms), persistable=False)
            self.register_buffer("fixed_inv_perms", paddle.to_tensor(np.argsort(perms, axis=-1).astype(np.int64)),
                                 persistable=False)
        self.init_weights()

    def init_weights(self):
        """rsmamba.md §3.2: projection kaiming_normal (fan_in, linear); pos_embed trunc_normal(0.02)."""
        init.kaiming_normal_(self.patch_embed.projection.weight, mode="fan_in", nonlinearity="linear")
        if self.pe_type == "learnable":
            init.trunc_normal_(self.pos_embed, std=0.02)

    def _flip(self, x):
        """``flip`` along the token axis."""
        return paddle.flip(x, axis=[1])

    # ---- permutations ---------------------------------------------------------------------------------
    def _perm(self, i, length, perms):
        """(perm, inverse perm) for layer ``i``."""
        if perms is not None:
            p = perms[i]
            return p, paddle.argsort(p)
        if self.perm_seed is not None:
            return self.fixed_perms[i], self.fixed_inv_perms[i]
        p = paddle.randperm(length, dtype="int64")
        return p, paddle.argsort(p)

    def forward(self, x, perms=None):
        if (x.ndim != 4 or tuple(x.shape[2:]) != tuple(self.img_size)) and all(
                isinstance(v, int) and v >= 0 for v in x.shape):
            raise ValueError(f"RSMamba takes [B, C, {self.img_size[0]}, {self.img_size[1]}] images (img_size: the "
                             f"position embedding and the scan orders are built for it), got shape "
                             f"{list(x.shape)}: resize the input, or build the model with "
                             f"img_size={tuple(x.shape[2:]) if x.ndim == 4 else '(H, W)'}")
        x, hw = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.drop_after_pos(x)
        length = self.num_patches
        if perms is not None and "shuffle" in self.path_type and paddle.in_dynamic_mode():
            if not isinstance(perms, paddle.Tensor):
                perms = paddle.to_tensor(np.asarray(perms, dtype=np.int64))
            if list(perms.shape) != [self.num_layers, length]:
                raise ValueError(f"perms must have shape [{self.num_layers}, {length}], got {list(perms.shape)}")
        for i, layer in enumerate(self.layers):
            residual = x
            if self.path_type == "forward":
                x = layer(self.pre_norm(x))
            elif self.path_type in ("forward_reverse_mean", "forward_reverse_gate"):
                out = layer(self.pre_norm(paddle.concat([x, self._flip(x)], axis=0)))
                fwd_x, rev_x = paddle.chunk(out, 2, axis=0)
                rev_x = self._flip(rev_x)
                if self.path_type == "forward_reverse_mean":
                    x = (fwd_x + rev_x) / 2
                else:
                    gate = self.gate_layers[i](paddle.concat([fwd_x.mean(1), rev_x.mean(1)], axis=-1))
                    x = gated_sum(gate, [fwd_x, rev_x])
            else:  # shuffle paths
                perm, inv = self._perm(i, length, perms)
                xin = paddle.concat([x, self._flip(x), paddle.index_select(x, perm, axis=1)], axis=0)
                out = layer(self.pre_norm(xin))
                fwd_x, rev_x, shuf_x = paddle.chunk(out, 3, axis=0)
                rev_x = self._flip(rev_x)
                shuf_x = paddle.index_select(shuf_x, inv, axis=1)
                if self.path_type == "forward_reverse_shuffle_mean":
                    x = (fwd_x + rev_x + shuf_x) / 3
                else:
                    gate = self.gate_layers[i](
                        paddle.concat([fwd_x.mean(1), rev_x.mean(1), shuf_x.mean(1)], axis=-1))
                    x = gated_sum(gate, [fwd_x, rev_x, shuf_x])
            x = residual + x
            if i == self.num_layers - 1 and self.final_norm:
                x = self.ln1(x)
        if self.out_type == "raw":
            return x
        if self.out_type == "featmap":
            return x.reshape([0, hw[0], hw[1], -1]).transpose([0, 3, 1, 2])
        return self.ln2(x.mean(axis=1))


def gated_sum(gate, paths):
    """``sum_k gate[:, k] * paths[k]`` (``gate [B, K]``, paths ``[B, L, D]``) as one batched matmul
    ``[B, 1, K] @ [B, K, L*D]``: the value of upstream's elementwise form (torch_ref), but the gradient w.r.t. the
    gate becomes a GEMM reduction over ``L*D`` (blocked accumulation). Paddle's CPU gradient of a broadcast multiply
    sums those ~150k terms sequentially in fp32, which the gate's softmax Jacobian then amplifies: the gate weight
    gradients differed from torch by 1.5e-4 of their max with the elementwise form, 5.3e-5 with this one
    (align/03_loss.py, 2x3x224x224 rsmamba_b)."""
    k = len(paths)
    l, d = paths[0].shape[1], paths[0].shape[2]
    stacked = paddle.stack(paths, axis=1).reshape([-1, k, l * d])
    return paddle.matmul(gate.reshape([-1, 1, k]), stacked).reshape([-1, l, d])


def _sincos_pos_embed(patches_resolution, embed_dims, temperature=10000.0):
    """mmpretrain ``build_2d_sincos_position_embedding`` (no cls token): ``[1, h*w, D]`` (numpy, fp32)."""
    h, w = patches_resolution
    grid_w, grid_h = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32), indexing="ij")
    pos_dim = embed_dims // 4
    omega = (1.0 / (temperature ** (np.arange(pos_dim, dtype=np.float32) / pos_dim))).astype(np.float32)
    out_w = np.outer(grid_w.reshape(-1), omega)
    out_h = np.outer(grid_h.reshape(-1), omega)
    pos = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1)[None]
    return paddle.to_tensor(pos.astype(np.float32)).astype(paddle.get_default_dtype())   # computed in fp32, as torch
