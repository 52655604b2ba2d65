"""Swin Transformer backbone (RSP / Swin-Transformer-Semantic-Segmentation ``swin``), Paddle port.

Mirror of ``torch_ref/models/backbones/swin.py`` (same classes, same attribute names, same parameter names).
Spec: rsp_upernet.md §3.2; porting rules: porting.md.

Differences to the reference (layout only; results equal up to fp32 rounding):
* ``nn.Linear`` weights are [in, out] (the converter transposes them);
* ``relative_position_index`` is rebuilt at construction as a **non-persistable** buffer (not in
  ``state_dict()``); the converter checks the checkpoint's copy equals the rebuilt one and drops it;
* LayerNorm epsilon is always passed explicitly; GELU is exact.

Forward contract: ``forward(x[B,3,H,W]) -> [f0, f1, f2, f3]``, ``f_i``: ``[B, embed_dim*2**i, ceil(H/4/2**i),
ceil(W/4/2**i)]``. Export (porting.md §5.3): padding sizes and the shifted-window mask are computed from the
static H/W with Python ints / numpy, so ``paddle.jit.to_static`` works with a **fixed** H/W input spec;
batch dimensions are written as -1 so the batch may stay dynamic.
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .. import init

__all__ = ["DropPath", "Mlp", "window_partition", "window_reverse", "relative_position_index",
           "shifted_window_mask", "WindowAttention", "SwinTransformerBlock", "PatchMerging", "BasicLayer",
           "PatchEmbed", "SwinTransformer", "swin_t", "swin_b"]


# ----------------------------------------------------------------------------------------------------------
# shared building blocks
# ----------------------------------------------------------------------------------------------------------
class DropPath(nn.Layer):
    """Stochastic depth per sample (timm semantics: keep mask ``floor(keep + U[0,1))``, scaled by 1/keep)."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = [paddle.shape(x)[0]] + [1] * (x.ndim - 1)
        mask = paddle.floor(keep + paddle.rand(shape, dtype=x.dtype))
        return x / keep * mask

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


def make_drop_path(p):
    return DropPath(p) if p > 0.0 else nn.Identity()


def linear(in_f, out_f, bias=True):
    """``nn.Linear`` with the reference init: trunc_normal(std .02) weight, zero bias."""
    m = nn.Linear(in_f, out_f, bias_attr=None if bias else False)
    init.trunc_normal_(m.weight, std=0.02)
    if m.bias is not None:
        init.constant_(m.bias, 0.0)
    return m


class Mlp(nn.Layer):
    """Linear -> GELU(exact) -> Dropout -> Linear -> Dropout."""

    def __init__(self, in_features, hidden_features=None, out_features=None, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = linear(in_features, hidden_features)
        self.act = nn.GELU(approximate=False)
        self.fc2 = linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


def window_partition(x, ws):
    """(B, H, W, C) -> (B*nW, ws*ws, C); windows in row-major order (spec Q9). H, W must be static."""
    _, H, W, C = x.shape
    x = x.reshape([-1, H // ws, ws, W // ws, ws, C]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, ws * ws, C])


def window_reverse(windows, ws, H, W):
    """(B*nW, ws*ws, C) -> (B, H, W, C); inverse of :func:`window_partition`."""
    C = windows.shape[-1]
    x = windows.reshape([-1, H // ws, W // ws, ws, ws, C]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, H, W, C])


def relative_position_index(ws):
    """int64 [ws*ws, ws*ws]: index into the [(2ws-1)^2, nH] bias table (Swin layout)."""
    coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (ws - 1)
    return (rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]).astype(np.int64)


def shifted_window_mask(Hp, Wp, ws, shift):
    """float32 [nW, ws*ws, ws*ws]: 0 within a region, -100 across the regions (0:-ws), (-ws:-shift), (-shift:)."""
    img = np.zeros((Hp, Wp), np.float32)
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[h, w] = cnt
            cnt += 1
    win = img.reshape(Hp // ws, ws, Wp // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0)).astype(np.float32)


def layer_norm(dim, eps):
    return nn.LayerNorm(dim, epsilon=eps)


# ----------------------------------------------------------------------------------------------------------
# Swin
# ----------------------------------------------------------------------------------------------------------
class WindowAttention(nn.Layer):
    """W-MSA with relative position bias: softmax(q*scale @ k^T + B [+ mask]) @ v -> proj."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.relative_position_bias_table = self.create_parameter(
            [(2 * window_size - 1) ** 2, num_heads], default_initializer=nn.initializer.Constant(0.0))
        init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index",
                             paddle.to_tensor(relative_position_index(window_size).reshape(-1)), persistable=False)
        self.qkv = linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, mask=None):
        N, C = x.shape[1], x.shape[2]
        nH = self.num_heads
        qkv = self.qkv(x).reshape([-1, N, 3, nH, C // nH]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = paddle.matmul(q * self.scale, k, transpose_y=True)
        bias = paddle.index_select(self.relative_position_bias_table, self.relative_position_index, axis=0)
        attn = attn + bias.reshape([N, N, nH]).transpose([2, 0, 1]).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.reshape([-1, nW, nH, N, N]) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.reshape([-1, nH, N, N])
        attn = self.attn_drop(F.softmax(attn, axis=-1))
        x = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([-1, N, C])
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Layer):
    """x += DP(W-MSA(LN1 x)); x += DP(MLP(LN2 x)). Zero padding to the window size happens after LN1."""

    def __init__(self, dim, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop=0.0, attn_drop=0.0, drop_path=0.0, norm_eps=1e-5):
        super().__init__()
        assert 0 <= shift_size < window_size
        self.dim, self.num_heads = dim, num_heads
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = layer_norm(dim, norm_eps)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = make_drop_path(drop_path)
        self.norm2 = layer_norm(dim, norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x, H, W, attn_mask=None):
        C = self.dim
        ws, s = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).reshape([-1, H, W, C])
        pad_r, pad_b = (ws - W % ws) % ws, (ws - H % ws) % ws
        if pad_r or pad_b:
            x = F.pad(x, [0, pad_r, 0, pad_b], data_format="NHWC")
        Hp, Wp = H + pad_b, W + pad_r
        if s > 0:
            x = paddle.roll(x, shifts=(-s, -s), axis=(1, 2))
        x = self.attn(window_partition(x, ws), mask=attn_mask if s > 0 else None)
        x = window_reverse(x, ws, Hp, Wp)
        if s > 0:
            x = paddle.roll(x, shifts=(s, s), axis=(1, 2))
        if pad_r or pad_b:
            x = x[:, :H, :W, :]
        x = shortcut + self.drop_path(x.reshape([-1, H * W, C]))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Layer):
    """Concat x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2] -> LN(4C) -> Linear(4C->2C, no bias)."""

    def __init__(self, dim, norm_eps=1e-5):
        super().__init__()
        self.dim = dim
        self.reduction = linear(4 * dim, 2 * dim, bias=False)
        self.norm = layer_norm(4 * dim, norm_eps)

    def forward(self, x, H, W):
        C = self.dim
        x = x.reshape([-1, H, W, C])
        if H % 2 or W % 2:
            x = F.pad(x, [0, W % 2, 0, H % 2], data_format="NHWC")
        x = paddle.concat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        return self.reduction(self.norm(x.reshape([-1, ((H + 1) // 2) * ((W + 1) // 2), 4 * C])))


class BasicLayer(nn.Layer):
    """One stage: ``depth`` blocks (odd ones shifted by ws//2), then an optional PatchMerging."""

    def __init__(self, dim, depth, num_heads, window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop=0.0, attn_drop=0.0, drop_path=0.0, downsample=True, norm_eps=1e-5):
        super().__init__()
        self.window_size, self.shift_size = window_size, window_size // 2
        dp = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.LayerList([
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                                 qkv_bias, qk_scale, drop, attn_drop, dp[i], norm_eps)
            for i in range(depth)])
        self.downsample = PatchMerging(dim, norm_eps) if downsample else None

    def forward(self, x, H, W):
        ws = self.window_size
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        mask = None
        if len(self.blocks) > 1:   # recomputed each forward on (Hp, Wp) from static ints; not a buffer
            mask = paddle.to_tensor(shifted_window_mask(Hp, Wp, ws, self.shift_size))
        for blk in self.blocks:
            x = blk(x, H, W, mask)
        if self.downsample is None:
            return x, H, W, x, H, W
        return x, H, W, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Layer):
    """Pad right/bottom to a multiple of the patch size, Conv(k=s=patch, bias), LN. Returns NCHW."""

    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, patch_norm=True, norm_eps=1e-5):
        super().__init__()
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.proj = nn.Conv2D(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        init.torch_default_(self.proj)
        self.norm = layer_norm(embed_dim, norm_eps) if patch_norm else None

    def forward(self, x):
        H, W = x.shape[2], x.shape[3]
        p = self.patch_size
        pad_r, pad_b = (p - W % p) % p, (p - H % p) % p
        if pad_r or pad_b:
            x = F.pad(x, [0, pad_r, 0, pad_b], data_format="NCHW")
        x = self.proj(x)
        if self.norm is not None:
            Wh, Ww = x.shape[2], x.shape[3]
            x = self.norm(x.flatten(2).transpose([0, 2, 1])).transpose([0, 2, 1])
            x = x.reshape([-1, self.embed_dim, Wh, Ww])
        return x


class SwinTransformer(nn.Layer):
    """Swin backbone returning the normed stage outputs ``norm_i(stage_i)`` as NCHW maps.

    Defaults are Swin-T; ``drop_path_rate`` is spread linearly over all blocks (like torch.linspace).
    ``ape`` (absolute position embedding) is not supported (unused by RSP and RMSIN).
    """

    def __init__(self, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.2,
                 patch_size=4, in_chans=3, patch_norm=True, out_indices=(0, 1, 2, 3), norm_eps=1e-5, ape=False):
        super().__init__()
        if ape:
            raise NotImplementedError("absolute position embedding (ape=True) is not ported")
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm, norm_eps)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [float(v) for v in np.linspace(0, drop_path_rate, sum(depths), dtype=np.float32)]
        self.layers = nn.LayerList()
        for i in range(self.num_layers):
            self.layers.append(BasicLayer(
                int(embed_dim * 2 ** i), depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, qk_scale,
                drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < self.num_layers - 1, norm_eps=norm_eps))
        self.num_features = [int(embed_dim * 2 ** i) for i in range(self.num_layers)]
        for i in self.out_indices:
            self.add_sublayer(f"norm{i}", layer_norm(self.num_features[i], norm_eps))
        self.out_channels = [self.num_features[i] for i in self.out_indices]

    def forward(self, x):
        x = self.patch_embed(x)
        Wh, Ww = x.shape[2], x.shape[3]
        x = self.pos_drop(x.flatten(2).transpose([0, 2, 1]))
        outs = []
        for i, layer in enumerate(self.layers):
            x_out, H, W, x, Wh, Ww = layer(x, Wh, Ww)
            if i in self.out_indices:
                x_out = getattr(self, f"norm{i}")(x_out)
                outs.append(x_out.reshape([-1, H, W, self.num_features[i]]).transpose([0, 3, 1, 2]))
        return outs


def swin_t(**kw):
    cfg = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
    cfg.update(kw)
    return SwinTransformer(**cfg)


def swin_b(**kw):
    cfg = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7)
    cfg.update(kw)
    return SwinTransformer(**cfg)
