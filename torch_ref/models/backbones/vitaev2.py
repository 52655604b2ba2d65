"""ViTAEv2-S, window attention without shift (RSP ``ViTAE_Window_NoShift_basic``), PyTorch reference.

Mirror of ``paddle_rs/models/backbones/vitaev2.py``. Spec: rsp_upernet.md §3.3 (normative, incl. quirks Q1-Q9).

Each stage ``layers.{i}`` is a ReductionCell ``RC`` followed by ``NC_depth[i]`` NormalCells ``NC.{k}``.
Parameter names equal the upstream checkpoint keys below ``backbone.``. ``relative_position_index`` is a
persistent buffer here (upstream checkpoints hold it); the Paddle port rebuilds it (non-persistable).

Upstream quirks reproduced on purpose (they change numbers or keys):
* Q1  drop-path slices are not cumulative: stage i uses ``dpr[start:start+depth_i]`` with
      ``start = 0 if i == 0 else NC_depth[i-1]`` (training only);
* Q2  ``norm0..3`` and the six ``relative_position_bias_table`` s exist but are never used;
* Q3  no output norm; stage tokens are reshaped with ``wh = int(sqrt(N))`` -> square inputs only;
* Q4  LayerNorm eps 1e-5 in the RCs, 1e-6 in the NCs;
* Q5  ``qkv`` has no bias only in the transformer RCs (stages 2-3);
* Q6  swin RC attention has no residual; transformer RC attention adds ``v`` (head-major merge);
* Q7  zero padding to the window size happens after LN1 and is not masked (padded keys = qkv bias);
* Q8  PRM channels are dilation-major; Q9 windows in row-major (H/7, W/7) order.

Forward contract: ``forward(x[B,3,S,S]) -> [f0..f3]``, ``f_i``: ``[B, token_dims[i], S/4/2**i, S/4/2**i]``.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .swin import Mlp, make_drop_path, relative_position_index, window_partition, window_reverse

__all__ = ["PRM", "WindowAttention", "Attention", "TokenAttention", "SwinRCAttn", "TokenTransformer",
           "ReductionCell", "NormalCell", "BasicLayer", "ViTAEv2", "vitaev2_s"]


def _window_pad(x, ws):
    """(B, H, W, C): zero-pad right/bottom to multiples of ``ws``; returns (x, Hp, Wp)."""
    H, W = x.shape[1], x.shape[2]
    pad_r, pad_b = (ws - W % ws) % ws, (ws - H % ws) % ws
    if pad_r or pad_b:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x, H + pad_b, W + pad_r


class PRM(nn.Module):
    """Pyramid reduction: parallel dilated convs (stride = ratio) + GELU, concatenated dilation-major (Q8)."""

    def __init__(self, kernel_size=7, downsample_ratio=4, dilations=(1, 2, 3, 4), in_chans=3, embed_dim=64):
        super().__init__()
        self.dilations = list(dilations)
        self.convs = nn.ModuleList()
        for d in self.dilations:
            pad = math.ceil(((kernel_size - 1) * d + 1 - downsample_ratio) / 2)
            self.convs.append(nn.Sequential(
                nn.Conv2d(in_chans, embed_dim, kernel_size, stride=downsample_ratio, padding=pad, dilation=d),
                nn.GELU()))
        self.out_chans = embed_dim * len(self.dilations)

    def forward(self, x):
        # == upstream stack(-1).permute(0,4,1,2,3).reshape: channel index = d_idx*embed + c
        y = torch.cat([conv(x) for conv in self.convs], dim=1)
        return y.flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """ViTAE window attention: qkv Linear(in_dim -> 3*out_dim), scale (out_dim/heads)^-0.5, no mask.

    The relative position bias table/index exist (checkpoint keys) but are only used if ``relative_pos``.
    """

    def __init__(self, in_dim, out_dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0,
                 proj_drop=0.0, relative_pos=False):
        super().__init__()
        self.in_dim, self.dim = in_dim, out_dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (out_dim // num_heads) ** -0.5
        self.relative_pos = relative_pos
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", torch.from_numpy(relative_position_index(window_size)))
        self.qkv = nn.Linear(in_dim, out_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(out_dim, out_dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x):
        B_, N, _ = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.relative_pos:
            bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
            attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B_, N, self.dim)
        return self.proj_drop(self.proj(x))


class Attention(nn.Module):
    """Global MHSA of the transformer NormalCells: softmax(q @ k^T * scale) @ v -> proj."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class TokenAttention(nn.Module):
    """Transformer-RC attention (T2T ``Token_transformer.attn``): Linear(dim -> 3*in_dim), v-skip (Q6)."""

    def __init__(self, dim, in_dim, num_heads=1, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads, self.in_dim = num_heads, in_dim
        self.scale = qk_scale or (in_dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, in_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(in_dim, in_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.in_dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        x = self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(B, N, self.in_dim)))
        return v.transpose(1, 2).reshape(B, N, self.in_dim) + x


class SwinRCAttn(nn.Module):
    """Container of the swin RC's ``norm1``/``attn``/``norm2``/``mlp`` (upstream ``SwinTransformerBlock``);
    the RC drives them itself. LN eps 1e-5, MLP ratio 1 (Q4)."""

    def __init__(self, in_dim, out_dim, input_resolution, num_heads, window_size=7, mlp_ratio=1.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, relative_pos=False, norm_eps=1e-5):
        super().__init__()
        if input_resolution <= window_size:    # upstream: no partition when the map is not larger than a window
            window_size = input_resolution
        self.norm1 = nn.LayerNorm(in_dim, eps=norm_eps)
        self.attn = WindowAttention(in_dim, out_dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop,
                                    relative_pos)
        self.norm2 = nn.LayerNorm(out_dim, eps=norm_eps)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio), drop=drop)


class TokenTransformer(nn.Module):
    """Container of the transformer RC's ``norm1``/``attn``/``norm2``/``mlp`` (upstream ``Token_transformer``)."""

    def __init__(self, dim, in_dim, num_heads, mlp_ratio=1.0, qkv_bias=False, qk_scale=None, drop=0.0,
                 attn_drop=0.0, norm_eps=1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = TokenAttention(dim, in_dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.norm2 = nn.LayerNorm(in_dim, eps=norm_eps)
        self.mlp = Mlp(in_dim, int(in_dim * mlp_ratio), in_dim, drop=drop)


class ReductionCell(nn.Module):
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
            nn.Conv2d(in_chans, embed_dims, 3, stride=strides[0], padding=1, groups=group),
            nn.BatchNorm2d(embed_dims),
            nn.SiLU(),
            nn.Conv2d(embed_dims, embed_dims, 3, stride=strides[1], padding=1, groups=group),
            nn.BatchNorm2d(embed_dims),
            nn.SiLU(),
            nn.Conv2d(embed_dims, token_dims, 3, stride=strides[2], padding=1, groups=group))
        self.PRM = PRM(kernel_size, downsample_ratios, dilations, in_chans, embed_dims)
        c = self.PRM.out_chans
        if tokens_type == "swin":
            self.attn = SwinRCAttn(c, token_dims, img_size // downsample_ratios, num_heads, window_size, mlp_ratio,
                                   True, None, drop, attn_drop, relative_pos, norm_eps)
        else:
            self.attn = TokenTransformer(c, token_dims, num_heads, mlp_ratio, False, None, drop, attn_drop, norm_eps)

    def forward(self, x, H, W):
        if x.dim() == 3:
            B, N, C = x.shape
            x = x.view(B, H, W, C).permute(0, 3, 1, 2)
        shortcut = x
        t = self.PRM(x)
        H, W = H // self.downsample_ratios, W // self.downsample_ratios
        B, N, C = t.shape
        if self.tokens_type == "swin":
            ws = self.window_size
            a, Hp, Wp = _window_pad(self.attn.norm1(t).view(B, H, W, C), ws)
            a = window_reverse(self.attn.attn(window_partition(a, ws)), ws, Hp, Wp)
            a = a[:, :H, :W, :].reshape(B, H * W, self.token_dims)       # no attention residual (Q6)
        else:
            a = self.attn.attn(self.attn.norm1(t))                          # v-skip inside (Q6)
        c = self.PCM(shortcut)
        if c.shape[2] != H or c.shape[3] != W:
            raise ValueError(f"ReductionCell: PCM output {c.shape[2]}x{c.shape[3]} != PRM output {H}x{W} "
                             f"(upstream fails here too; use a square input with a side that is a multiple of 32)")
        x = a + c.permute(0, 2, 3, 1).reshape(a.shape)
        return x + self.attn.mlp(self.attn.norm2(x)), H, W


class NormalCell(nn.Module):
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
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        if tokens_type == "swin":
            self.attn = WindowAttention(dim, dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop,
                                        relative_pos)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = make_drop_path(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = Mlp(dim, hidden, drop=drop)
        self.PCM = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, 1, 1, 1, group),
            nn.BatchNorm2d(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, dim, 3, 1, 1, 1, group),
            nn.BatchNorm2d(dim),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 3, 1, 1, 1, group))

    def forward(self, x, H, W):
        B, N, C = x.shape
        shortcut = x
        if self.tokens_type == "swin":
            ws = self.window_size
            a, Hp, Wp = _window_pad(self.norm1(x).view(B, H, W, C), ws)
            a = window_reverse(self.attn(window_partition(a, ws)), ws, Hp, Wp)
            a = a[:, :H, :W, :].reshape(B, N, C)
        else:
            a = self.attn(self.norm1(x))
        c = self.PCM(shortcut.view(B, H, W, C).permute(0, 3, 1, 2).contiguous())   # contiguous as upstream (conv algo)
        c = c.permute(0, 2, 3, 1).reshape(B, N, C)
        x = shortcut + self.drop_path(a) + self.drop_path(c)     # two independent drop-path draws
        return x + self.drop_path(self.mlp(self.norm2(x))), H, W


class BasicLayer(nn.Module):
    """One stage: ``RC`` then ``NC`` (a ModuleList of NormalCells)."""

    def __init__(self, img_size, in_chans, embed_dims, token_dims, downsample_ratios, kernel_size, RC_heads,
                 NC_heads, dilations, RC_tokens_type, NC_tokens_type, RC_group, NC_group, NC_depth, dpr,
                 mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, window_size=7,
                 relative_pos=False, nc_norm_eps=1e-6, rc_norm_eps=1e-5):
        super().__init__()
        self.RC = ReductionCell(img_size, in_chans, embed_dims, token_dims, downsample_ratios, kernel_size,
                                RC_heads, dilations, RC_tokens_type, RC_group, window_size, relative_pos,
                                norm_eps=rc_norm_eps)
        self.NC = nn.ModuleList([
            NormalCell(token_dims, NC_heads, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop,
                       dpr[i] if isinstance(dpr, (list, tuple)) else dpr, NC_group, NC_tokens_type, window_size,
                       relative_pos, nc_norm_eps)
            for i in range(NC_depth)])

    def forward(self, x, H, W):
        x, H, W = self.RC(x, H, W)
        for nc in self.NC:
            x, H, W = nc(x, H, W)
        return x, H, W


class ViTAEv2(nn.Module):
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
        dpr = [float(v) for v in torch.linspace(0, drop_path_rate, sum(NC_depth))]
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
        self.layers = nn.ModuleList(layers)
        for i in range(stages):      # Q2: created (checkpoint keys) but never applied
            self.add_module(f"norm{i}", nn.LayerNorm(token_dims[i], eps=norm_eps))
        self.out_channels = list(token_dims)
        self._init_weights()

    def _init_weights(self):
        # what upstream init_weights() intends without a checkpoint: trunc_normal(.02) Linear, zero bias;
        # LN 1/0. Convs keep torch's default init, BN 1/0.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        H, W = x.shape[2], x.shape[3]
        if H != W:
            raise ValueError(f"ViTAEv2 needs a square input (upstream reshapes tokens with sqrt(N)); got {H}x{W}")
        outs = []
        for layer in self.layers:
            x, H, W = layer(x, H, W)
            B, N, C = x.shape
            wh = int(math.sqrt(N))                                   # Q3
            outs.append(x.view(B, wh, wh, C).permute(0, 3, 1, 2))
        return outs


def vitaev2_s(**kw):
    return ViTAEv2(**kw)
