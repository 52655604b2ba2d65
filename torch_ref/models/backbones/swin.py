"""Swin Transformer backbone (RSP / Swin-Transformer-Semantic-Segmentation ``swin``), PyTorch reference.

Mirror of ``paddle_rs/models/backbones/swin.py``. Spec: rsp_upernet.md §3.2.

Parameter names equal the upstream mmseg checkpoint keys below ``backbone.``:
``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.{norm1, attn.{relative_position_bias_table,
relative_position_index, qkv, proj}, norm2, mlp.{fc1,fc2}}``, ``layers.{i}.downsample.{norm,reduction}``
and the output norms ``norm{i}`` (one per ``out_indices`` entry).
``relative_position_index`` is a persistent buffer here (upstream checkpoints contain it, so a strict load
works); the Paddle port rebuilds it as a non-persistable buffer.

Forward contract: ``forward(x[B,3,H,W]) -> [f0, f1, f2, f3]`` with ``f_i`` of shape
``[B, embed_dim*2**i, ceil(H/4/2**i), ceil(W/4/2**i)]`` (any H, W; right/bottom zero padding to the patch,
merge and window sizes happens inside). ``out_channels`` lists the channel counts.

Depth/width are constructor arguments so the same file serves Swin-T (RSP UperNet) and Swin-B (RMSIN).
The shared building blocks (``DropPath``, ``Mlp``, ``window_partition``/``window_reverse``,
``relative_position_index``) are reused by ``vitaev2.py``.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DropPath", "Mlp", "window_partition", "window_reverse", "relative_position_index",
           "shifted_window_mask", "WindowAttention", "SwinTransformerBlock", "PatchMerging", "BasicLayer",
           "PatchEmbed", "SwinTransformer", "swin_t", "swin_b"]


# ----------------------------------------------------------------------------------------------------------
# shared building blocks
# ----------------------------------------------------------------------------------------------------------
class DropPath(nn.Module):
    """Stochastic depth per sample (timm semantics: keep mask ``floor(keep + U[0,1))``, scaled by 1/keep)."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = torch.floor(keep + torch.rand(shape, dtype=x.dtype, device=x.device))
        return x.div(keep) * mask

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


def make_drop_path(p):
    return DropPath(p) if p > 0.0 else nn.Identity()


class Mlp(nn.Module):
    """Linear -> GELU(exact) -> Dropout -> Linear -> Dropout."""

    def __init__(self, in_features, hidden_features=None, out_features=None, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


def window_partition(x, ws):
    """(B, H, W, C) -> (B*nW, ws*ws, C); windows in row-major order (spec Q9)."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows, ws, H, W):
    """(B*nW, ws*ws, C) -> (B, H, W, C); inverse of :func:`window_partition`."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


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


# ----------------------------------------------------------------------------------------------------------
# Swin
# ----------------------------------------------------------------------------------------------------------
class WindowAttention(nn.Module):
    """W-MSA with relative position bias: softmax(q*scale @ k^T + B [+ mask]) @ v -> proj."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", torch.from_numpy(relative_position_index(window_size)))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(-1, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """x += DP(W-MSA(LN1 x)); x += DP(MLP(LN2 x)). Zero padding to the window size happens after LN1."""

    def __init__(self, dim, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop=0.0, attn_drop=0.0, drop_path=0.0, norm_eps=1e-5):
        super().__init__()
        assert 0 <= shift_size < window_size
        self.dim, self.num_heads = dim, num_heads
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = make_drop_path(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x, H, W, attn_mask=None):
        B, L, C = x.shape
        ws, s = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        pad_r, pad_b = (ws - W % ws) % ws, (ws - H % ws) % ws
        if pad_r or pad_b:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        x = self.attn(window_partition(x, ws), mask=attn_mask if s > 0 else None)
        x = window_reverse(x, ws, Hp, Wp)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        if pad_r or pad_b:
            x = x[:, :H, :W, :]
        x = shortcut + self.drop_path(x.reshape(B, H * W, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concat x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2] -> LN(4C) -> Linear(4C->2C, no bias)."""

    def __init__(self, dim, norm_eps=1e-5):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=norm_eps)

    def forward(self, x, H, W):
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.reshape(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks (odd ones shifted by ws//2), then an optional PatchMerging."""

    def __init__(self, dim, depth, num_heads, window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop=0.0, attn_drop=0.0, drop_path=0.0, downsample=True, norm_eps=1e-5):
        super().__init__()
        self.window_size, self.shift_size = window_size, window_size // 2
        dp = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                                 qkv_bias, qk_scale, drop, attn_drop, dp[i], norm_eps)
            for i in range(depth)])
        self.downsample = PatchMerging(dim, norm_eps) if downsample else None

    def forward(self, x, H, W):
        ws = self.window_size
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        mask = None
        if len(self.blocks) > 1:   # recomputed each forward on (Hp, Wp); not a buffer
            mask = torch.from_numpy(shifted_window_mask(Hp, Wp, ws, self.shift_size)).to(x.device)
        for blk in self.blocks:
            x = blk(x, H, W, mask)
        if self.downsample is None:
            return x, H, W, x, H, W
        return x, H, W, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    """Pad right/bottom to a multiple of the patch size, Conv(k=s=patch, bias), LN. Returns NCHW."""

    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, patch_norm=True, norm_eps=1e-5):
        super().__init__()
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if patch_norm else None

    def forward(self, x):
        _, _, H, W = x.shape
        p = self.patch_size
        pad_r, pad_b = (p - W % p) % p, (p - H % p) % p
        if pad_r or pad_b:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.proj(x)
        if self.norm is not None:
            Wh, Ww = x.shape[2], x.shape[3]
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(-1, self.embed_dim, Wh, Ww)
        return x


class SwinTransformer(nn.Module):
    """Swin backbone returning the normed stage outputs ``norm_i(stage_i)`` as NCHW maps.

    Defaults are Swin-T; ``drop_path_rate`` is spread linearly over all blocks (torch.linspace).
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
        dpr = [float(v) for v in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(BasicLayer(
                int(embed_dim * 2 ** i), depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, qk_scale,
                drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < self.num_layers - 1, norm_eps=norm_eps))
        self.num_features = [int(embed_dim * 2 ** i) for i in range(self.num_layers)]
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i], eps=norm_eps))
        self.out_channels = [self.num_features[i] for i in self.out_indices]
        self._init_weights()

    def _init_weights(self):
        # upstream init_weights() without a checkpoint: trunc_normal(.02) Linear, zero bias; LN 1/0.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x)
        Wh, Ww = x.shape[2], x.shape[3]
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outs = []
        for i, layer in enumerate(self.layers):
            x_out, H, W, x, Wh, Ww = layer(x, Wh, Ww)
            if i in self.out_indices:
                x_out = getattr(self, f"norm{i}")(x_out)
                outs.append(x_out.view(-1, H, W, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
        return outs


def swin_t(**kw):
    cfg = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
    cfg.update(kw)
    return SwinTransformer(**cfg)


def swin_b(**kw):
    cfg = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7)
    cfg.update(kw)
    return SwinTransformer(**cfg)
