"""ViTAEv2-S, window attention without shift (RSP ``ViTAE_Window_NoShift_basic``), Paddle port.

Mirror of ``torch_ref/models/backbones/vitaev2.py`` (same classes, attribute and parameter names).
Spec: rsp_upernet.md §3.3 (normative, incl. quirks Q1-Q9, all reproduced; see the reference's docstring).

Layout differences to the reference: ``nn.Linear`` weights are [in, out]; ``relative_position_index`` is
rebuilt as a non-persistable buffer; BatchNorm momentum 0.9 / epsilon 1e-5; LayerNorm epsilon explicit
(1e-5 in RCs, 1e-6 in NCs); GELU exact.

Forward contract: ``forward(x[B,3,S,S]) -> [f0..f3]``, ``f_i``: ``[B, token_dims[i], S/4/2**i, S/4/2**i]``.
Export: all sizes are Python ints derived from the static input H/W (fixed-shape ``to_static``).
"""
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .. import init
from .swin import Mlp, layer_norm, linear, make_drop_path, relative_position_index, window_partition, window_reverse

__all__ = ["PRM", "WindowAttention", "Attention", "TokenAttention", "SwinRCAttn", "TokenTransformer",
           "ReductionCell", "NormalCell", "BasicLayer", "ViTAEv2", "vitaev2_s"]


def _conv(cin, cout, k, stride=1, padding=0, dilation=1, groups=1):
    m = nn.Conv2D(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups)
    init.torch_default_(m)
    return m


def _bn(c):
    return nn.BatchNorm2D(c, momentum=0.9, epsilon=1e-5)


def _window_pad(x, ws):
    """(B, H, W, C): zero-pad right/bottom to multiples of ``ws``; returns (x, Hp, Wp)."""
    H, W = x.shape[1], x.shape[2]
    pad_r, pad_b = (ws - W % ws) % ws, (ws - H % ws) % ws
    if pad_r or pad_b:
        x = F.pad(x, [0, pad_r, 0, pad_b], data_format="NHWC")
    return x, H + pad_b, W + pad_r


class PRM(nn.Layer):
    """Pyramid reduction: parallel dilated convs (stride = ratio) + GELU, concatenated dilation-major (Q8)."""

    def __init__(self, kernel_size=7, downsample_ratio=4, dilations=(1, 2, 3, 4), in_chans=3, embed_dim=64):
        super().__init__()
        self.dilations = list(dilations)
        self.convs = nn.LayerList()
        for d in self.dilations:
            pad = math.ceil(((kernel_size - 1) * d + 1 - downsample_ratio) / 2)
            self.convs.append(nn.Sequential(
                _conv(in_chans, embed_dim, kernel_size, stride=downsample_ratio, padding=pad, dilation=d),
                nn.GELU(approximate=False)))
        self.out_chans = embed_dim * len(self.dilations)

    def forward(self, x):
        y = paddle.concat([conv(x) for conv in self.convs], axis=1)
        return y.flatten(2).transpose([0, 2, 1])


class WindowAttention(nn.Layer):
    """ViTAE window attention: qkv Linear(in_dim -> 3*out_dim), scale (out_dim/heads)^-0.5, no mask."""

    def __init__(self, in_dim, out_dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0,
                 proj_drop=0.0, relative_pos=False):
        super().__init__()
        self.in_dim, self.dim = in_dim, out_dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (out_dim // num_heads) ** -0.5
        self.relative_pos = relative_pos
        self.relative_position_bias_table = self.create_parameter(
            [(2 * window_size - 1) ** 2, num_heads], default_initializer=nn.initializer.Constant(0.0))
        init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index",
                             paddle.to_tensor(relative_position_index(window_size).reshape(-1)), persistable=False)
        self.qkv = linear(in_dim, out_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = linear(out_dim, out_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        N = x.shape[1]
        nH = self.num_heads
        qkv = self.qkv(x).reshape([-1, N, 3, nH, self.dim // nH]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = paddle.matmul(q * self.scale, k, transpose_y=True)
        if self.relative_pos:
            bias = paddle.index_select(self.relative_position_bias_table, self.relative_position_index, axis=0)
            attn = attn + bias.reshape([N, N, nH]).transpose([2, 0, 1]).unsqueeze(0)
        attn = self.attn_drop(F.softmax(attn, axis=-1))
        x = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([-1, N, self.dim])
        return self.proj_drop(self.proj(x))


class Attention(nn.Layer):
    """Global MHSA of the transformer NormalCells: softmax(q @ k^T * scale) @ v -> proj."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        N, C, nH = x.shape[1], self.dim, self.num_heads
        qkv = self.qkv(x).reshape([-1, N, 3, nH, C // nH]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(F.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1))
        x = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([-1, N, C])
        return self.proj_drop(self.proj(x))


class TokenAttention(nn.Layer):
    """Transformer-RC attention (T2T ``Token_transformer.attn``): Linear(dim -> 3*in_dim), v-skip (Q6)."""

    def __init__(self, dim, in_dim, num_heads=1, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads, self.in_dim = num_heads, in_dim
        self.scale = qk_scale or (in_dim // num_heads) ** -0.5
        self.qkv = linear(dim, in_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = linear(in_dim, in_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        N, D, nH = x.shape[1], self.in_dim, self.num_heads
        qkv = self.qkv(x).reshape([-1, N, 3, nH, D // nH]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(F.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1))
        x = self.proj_drop(self.proj(paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([-1, N, D])))
        return v.transpose([0, 2, 1, 3]).reshape([-1, N, D]) + x


class SwinRCAttn(nn.Layer):
    """Container of the swin RC's ``norm1``/``attn``/``norm2``/``mlp`` (upstream ``SwinTransformerBlock``)."""

    def __init__(self, in_dim, out_dim, input_resolution, num_heads, window_size=7, mlp_ratio=1.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, relative_pos=False, norm_eps=1e-5):
        super().__init__()
        if input_resolution <= window_size:
            window_size = input_resolution
        self.norm1 = layer_norm(in_dim, norm_eps)
        self.attn = WindowAttention(in_dim, out_dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop,
                                    relative_pos)
        self.norm2 = layer_norm(out_dim, norm_eps)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio), drop=drop)


class TokenTransformer(nn.Layer):
    """Container of the transformer RC's ``norm1``/``attn``/``norm2``/``mlp`` (upstream ``Token_transformer``)."""

    def __init__(self, dim, in_dim, num_heads, mlp_ratio=1.0, qkv_bias=False, qk_scale=None, drop=0.0,
                 attn_drop=0.0, norm_eps=1e-5):
        super().__init__()
        self.norm1 = layer_norm(dim, norm_eps)
        self.attn = TokenAttention(dim, in_dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.norm2 = layer_norm(in_dim, norm_eps)
        self.mlp = Mlp(in_dim, int(in_dim * mlp_ratio), in_dim, drop=drop)


class ReductionCell(nn.Layer):
    """x = attn(PRM(s)) + tokens(PCM(s)); x = x + MLP(LN2 x). No drop path in the RC (rate 0)."""

    def __init__(self, img_size=224, in_chans=3, embed_dims=64, token_dims=64, downsample_ratios=4, kernel_size=7,
                 num_heads=1, dilations=(1, 2, 3, 4), tokens_type="swin", group=1, window_size=7,
                 relative_pos=False, mlp_ratio=1.0, drop=0.0, attn_drop=0.0, norm_eps=1e-5):
        super().__init__()
        if tokens_type not in ("swin", "transformer"):
            raise NotImplementedError(f"RC tokens_type {tokens_type!r} is not ported (only swin/transformer)")
        self.window_size = window_size
        self.token_dims = token_dims
        self.downsample_ratios = downsample_ratios
        self.tokens_type = tokens_type
        strides, residual = [], downsample_ratios // 2
        for _ in range(3):
            strides.append(2 if residual > 0 else 1)
            residual //= 2
        self.PCM = nn.Sequential(
            _conv(in_chans, embed_dims, 3, stride=strides[0], padding=1, groups=group),
            _bn(embed_dims),
            nn.Silu(),
            _conv(embed_dims, embed_dims, 3, stride=strides[1], padding=1, groups=group),
            _bn(embed_dims),
            nn.Silu(),
            _conv(embed_dims, token_dims, 3, stride=strides[2], padding=1, groups=group))
        self.PRM = PRM(kernel_size, downsample_ratios, dilations, in_chans, embed_dims)
        c = self.PRM.out_chans
        if tokens_type == "swin":
            self.attn = SwinRCAttn(c, token_dims, img_size // downsample_ratios, num_heads, window_size, mlp_ratio,
                                   True, None, drop, attn_drop, relative_pos, norm_eps)
        else:
            self.attn = TokenTransformer(c, token_dims, num_heads, mlp_ratio, False, None, drop, attn_drop, norm_eps)

    def forward(self, x, H, W):
        if x.ndim == 3:
            x = x.reshape([-1, H, W, x.shape[2]]).transpose([0, 3, 1, 2])
        shortcut = x
        t = self.PRM(x)
        H, W = H // self.downsample_ratios, W // self.downsample_ratios
        C, D = t.shape[2], self.token_dims
        if self.tokens_type == "swin":
            ws = self.window_size
            a, Hp, Wp = _window_pad(self.attn.norm1(t).reshape([-1, H, W, C]), ws)
            a = window_reverse(self.attn.attn(window_partition(a, ws)), ws, Hp, Wp)
            if Hp != H or Wp != W:
                a = a[:, :H, :W, :]
            a = a.reshape([-1, H * W, D])                                   # no attention residual (Q6)
        else:
            a = self.attn.attn(self.attn.norm1(t))                          # v-skip inside (Q6)
        c = self.PCM(shortcut)
        if c.shape[2] != H or c.shape[3] != W:
            raise ValueError(f"ReductionCell: PCM output {c.shape[2]}x{c.shape[3]} != PRM output {H}x{W} "
                             f"(upstream fails here too; use a square input with a side that is a multiple of 32)")
        x = a + c.transpose([0, 2, 3, 1]).reshape([-1, H * W, D])
        return x + self.attn.mlp(self.attn.norm2(x)), H, W


class NormalCell(nn.Layer):
    """x = x + DP(attn(LN1 x)) + DP(PCM(x)); x = x + DP(MLP(LN2 x)). LN eps 1e-6 (Q4)."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, group=64, tokens_type="transformer", window_size=7, relative_pos=False,
                 norm_eps=1e-6):
        super().__init__()
        if tokens_type not in ("swin", "transformer"):
            raise NotImplementedError(f"NC tokens_type {tokens_type!r} is not ported (only swin/transformer)")
        self.dim = dim
        self.tokens_type = tokens_type
        self.window_size = window_size
        self.norm1 = layer_norm(dim, norm_eps)
        if tokens_type == "swin":
            self.attn = WindowAttention(dim, dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop,
                                        relative_pos)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = make_drop_path(drop_path)
        self.norm2 = layer_norm(dim, norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = Mlp(dim, hidden, drop=drop)
        self.PCM = nn.Sequential(
            _conv(dim, hidden, 3, 1, 1, 1, group),
            _bn(hidden),
            nn.Silu(),
            _conv(hidden, dim, 3, 1, 1, 1, group),
            _bn(dim),
            nn.Silu(),
            _conv(dim, dim, 3, 1, 1, 1, group))

    def forward(self, x, H, W):
        C = self.dim
        shortcut = x
        if self.tokens_type == "swin":
            ws = self.window_size
            a, Hp, Wp = _window_pad(self.norm1(x).reshape([-1, H, W, C]), ws)
            a = window_reverse(self.attn(window_partition(a, ws)), ws, Hp, Wp)
            if Hp != H or Wp != W:
                a = a[:, :H, :W, :]
            a = a.reshape([-1, H * W, C])
        else:
            a = self.attn(self.norm1(x))
        c = self.PCM(shortcut.reshape([-1, H, W, C]).transpose([0, 3, 1, 2]))
        c = c.transpose([0, 2, 3, 1]).reshape([-1, H * W, C])
        x = shortcut + self.drop_path(a) + self.drop_path(c)     # two independent drop-path draws
        return x + self.drop_path(self.mlp(self.norm2(x))), H, W


class BasicLayer(nn.Layer):
    """One stage: ``RC`` then ``NC`` (a LayerList of NormalCells)."""

    def __init__(self, img_size, in_chans, embed_dims, token_dims, downsample_ratios, kernel_size, RC_heads,
                 NC_heads, dilations, RC_tokens_type, NC_tokens_type, RC_group, NC_group, NC_depth, dpr,
                 mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, window_size=7,
                 relative_pos=False, nc_norm_eps=1e-6, rc_norm_eps=1e-5):
        super().__init__()
        self.RC = ReductionCell(img_size, in_chans, embed_dims, token_dims, downsample_ratios, kernel_size,
                                RC_heads, dilations, RC_tokens_type, RC_group, window_size, relative_pos,
                                norm_eps=rc_norm_eps)
        self.NC = nn.LayerList([
            NormalCell(token_dims, NC_heads, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop,
                       dpr[i] if isinstance(dpr, (list, tuple)) else dpr, NC_group, NC_tokens_type, window_size,
                       relative_pos, nc_norm_eps)
            for i in range(NC_depth)])

    def forward(self, x, H, W):
        x, H, W = self.RC(x, H, W)
        for nc in self.NC:
            x, H, W = nc(x, H, W)
        return x, H, W


class ViTAEv2(nn.Layer):
    """ViTAEv2 (window attention, no shift) backbone; defaults are ViTAEv2-S as used by RSP UperNet.

    ``img_size`` only sizes the (unused) RC bias tables, as upstream. Inputs must be square (Q3).
    """

    def __init__(self, img_size=512, in_chans=3, embed_dims=(64, 64, 128, 256), token_dims=(64, 128, 256, 512),
                 downsample_ratios=(4, 2, 2, 2), kernel_size=(7, 3, 3, 3), RC_heads=(1, 1, 2, 4),
                 NC_heads=(1, 2, 4, 8), dilations=((1, 2, 3, 4), (1, 2, 3), (1, 2), (1, 2)),
                 RC_tokens_type=("swin", "swin", "transformer", "transformer"),
                 NC_tokens_type=("swin", "swin", "transformer", "transformer"), RC_group=(1, 16, 32, 64),
                 NC_group=(1, 32, 64, 128), NC_depth=(2, 2, 8, 2), mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, window_size=7, relative_pos=False,
                 norm_eps=1e-6):
        super().__init__()
        stages = len(token_dims)
        self.token_dims = list(token_dims)
        self.NC_depth = list(NC_depth)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [float(v) for v in np.linspace(0, drop_path_rate, sum(NC_depth), dtype=np.float32)]
        layers = []
        for i in range(stages):
            start = 0 if i == 0 else NC_depth[i - 1]          # Q1: not cumulative (upstream)
            layers.append(BasicLayer(
                img_size, in_chans, embed_dims[i], token_dims[i], downsample_ratios[i], kernel_size[i],
                RC_heads[i], NC_heads[i], dilations[i], RC_tokens_type[i], NC_tokens_type[i], RC_group[i],
                NC_group[i], NC_depth[i], dpr[start:start + NC_depth[i]], mlp_ratio, qkv_bias, qk_scale,
                drop_rate, attn_drop_rate, window_size, relative_pos, nc_norm_eps=norm_eps))
            img_size //= downsample_ratios[i]
            in_chans = token_dims[i]
        self.layers = nn.LayerList(layers)
        for i in range(stages):      # Q2: created (checkpoint keys) but never applied
            self.add_sublayer(f"norm{i}", layer_norm(token_dims[i], norm_eps))
        self.out_channels = list(token_dims)

    def forward(self, x):
        H, W = x.shape[2], x.shape[3]
        if H != W:
            raise ValueError(f"ViTAEv2 needs a square input (upstream reshapes tokens with sqrt(N)); got {H}x{W}")
        outs = []
        for layer in self.layers:
            x, H, W = layer(x, H, W)
            N, C = x.shape[1], x.shape[2]
            wh = int(math.sqrt(N))                                   # Q3
            outs.append(x.reshape([-1, wh, wh, C]).transpose([0, 3, 1, 2]))
        return outs


def vitaev2_s(**kw):
    return ViTAEv2(**kw)
