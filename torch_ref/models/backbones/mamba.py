"""Mamba (v1) mixer and the RSMamba backbone, PyTorch reference.

Mirror of ``paddle_rs/models/backbones/mamba.py``. Standalone restatement of

* ``MambaMixer`` — huggingface/transformers v4.39.2 ``modeling_mamba.py``
  (``slow_forward`` math; rsmamba.md §3). Reused by every Mamba-based model
  (RSMamba, RS4D): parameter names ``in_proj``, ``conv1d``, ``x_proj``,
  ``dt_proj``, ``A_log``, ``D``, ``out_proj`` equal the upstream keys.
* ``PatchEmbed`` — mmcv 2.1 ``PatchEmbed`` with ``AdaptivePadding('corner')``
  and no norm (key ``projection.weight``).
* ``RSMambaBackbone`` — KyanChen/RSMamba ``RSMamba`` backbone (rsmamba.md §1–2,
  §4): forward / reverse / shuffled token sequences through one shared
  ``pre_norm`` and one mixer per layer, gated per layer, final ``ln1``, mean
  pooling and ``ln2``.

Shuffle permutations (the ``*shuffle*`` path types), one ``int64 [L]`` vector per
layer, in order of precedence:

1. ``forward(x, perms=...)`` — ``[num_layers, L]`` tensor or numpy array (parity
   harness; never touches the RNG);
2. ``perm_seed=int`` at construction — fixed permutations ``make_perms(num_layers,
   L, perm_seed)`` kept as non-persistent buffers (deterministic evaluation and
   export; not in the state_dict);
3. otherwise a fresh ``torch.randperm(L)`` per layer per forward, in train and
   eval, exactly as upstream.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

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


class MambaMixer(nn.Module):
    """Mamba v1 token mixer: ``[B, L, hidden] -> [B, L, hidden]`` (transformers 4.39.2 ``MambaMixer``).

    ``in_proj`` (no bias) -> x | z;  x -> causal depthwise ``conv1d`` -> SiLU -> ``x_proj`` -> dt | B | C;
    delta = softplus(``dt_proj``(dt));  A = -exp(``A_log``);  selective scan with ``D`` skip and SiLU(z) gate;
    ``out_proj`` (no bias). Initialisation as upstream without ``_init_weights`` (rsmamba.md §3.2): torch
    defaults, ``A_log = log(1..N)``, ``D = 1``.
    """

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
        self.conv1d = nn.Conv1d(I, I, conv_kernel, groups=I, padding=conv_kernel - 1, bias=use_conv_bias)
        self.in_proj = nn.Linear(hidden_size, 2 * I, bias=use_bias)
        self.x_proj = nn.Linear(I, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, I, bias=True)
        A = torch.arange(1, N + 1, dtype=torch.float32)[None, :].expand(I, -1).contiguous()
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(I))
        self.out_proj = nn.Linear(I, hidden_size, bias=use_bias)

    def forward(self, hidden_states):
        """``[B, L, hidden]`` -> ``[B, L, hidden]``. Channels-last throughout (the scan takes ``[B, L, I]``).

        As in transformers' CUDA path, ``dt_proj``'s bias enters the scan as ``delta_bias`` (added before the
        softplus, same math as ``softplus(dt_proj(dt))``).
        """
        seq_len = hidden_states.shape[1]
        R, N = self.time_step_rank, self.ssm_state_size
        xz = self.in_proj(hidden_states)                                  # [B, L, 2I]
        x, z = xz.chunk(2, dim=-1)                                        # first half x, second half gate z
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :seq_len]).transpose(1, 2)   # causal depthwise conv
        dt, Bm, Cm = torch.split(self.x_proj(x), [R, N, N], dim=-1)       # [B, L, R | N | N]
        delta = F.linear(dt, self.dt_proj.weight)                         # [B, L, I], bias added in the scan
        A = -torch.exp(self.A_log.float())
        y = selective_scan_blc(x, delta, A, Bm, Cm, self.D.float(), z, delta_bias=self.dt_proj.bias.float(),
                               delta_softplus=True,
                               **({} if self.chunk_size is None else {"chunk_size": self.chunk_size}))
        return self.out_proj(y)


class PatchEmbed(nn.Module):
    """mmcv ``PatchEmbed``: corner adaptive padding (zeros bottom/right), ``Conv2d(k, stride, bias=False)``,
    flatten to ``[B, h*w, D]`` in row-major raster order. Returns ``(tokens, (h, w))``."""

    def __init__(self, in_channels=3, embed_dims=192, kernel_size=16, stride=8, bias=False):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size, stride=stride, bias=bias)

    def pad_amount(self, size):
        out = math.ceil(size / self.stride)
        return max((out - 1) * self.stride + self.kernel_size - size, 0)

    def out_size(self, size):
        return (size + self.pad_amount(size) - self.kernel_size) // self.stride + 1

    def forward(self, x):
        ph, pw = self.pad_amount(x.shape[-2]), self.pad_amount(x.shape[-1])
        if ph or pw:
            x = F.pad(x, [0, pw, 0, ph])
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), hw


class RSMambaBackbone(nn.Module):
    """RSMamba backbone. ``forward(x [B,3,H,W], perms=None)`` -> ``[B, D]`` for ``out_type='avg_featmap'``
    (``'featmap'``: ``[B, D, h, w]``; ``'raw'``: ``[B, L, D]``). ``H, W`` must equal ``img_size``
    (``pos_embed`` is never interpolated)."""

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
            self.pos_embed = nn.Parameter(torch.zeros(1, L, D))
        elif pe_type == "sine":
            self.register_buffer("pos_embed", _sincos_pos_embed(self.patch_resolution, D), persistent=False)
        else:
            self.pos_embed = None
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        self.layers = nn.ModuleList(
            MambaMixer(D, I, state_size, conv_kernel, math.ceil(D / 16), use_conv_bias=True, use_bias=False,
                       chunk_size=chunk_size) for _ in range(self.num_layers))
        self.gate_layers = nn.ModuleList()
        if "gate" in path_type:
            n_paths = 3 if "shuffle" in path_type else 2
            for _ in range(self.num_layers):
                self.gate_layers.append(nn.Sequential(nn.Linear(n_paths * D, n_paths, bias=False),
                                                      nn.Softmax(dim=-1)))
        self.pre_norm = nn.LayerNorm(D, eps=norm_eps)
        if final_norm:
            self.ln1 = nn.LayerNorm(D, eps=norm_eps)
        if out_type == "avg_featmap":
            self.ln2 = nn.LayerNorm(D, eps=norm_eps)

        self.perm_seed = perm_seed
        if perm_seed is not None and "shuffle" in path_type:
            perms = torch.from_numpy(make_perms(self.num_layers, L, perm_seed))
            self.register_buffer("fixed_perms", perms, persistent=False)
            self.register_buffer("fixed_inv_perms", torch.argsort(perms, dim=-1), persistent=False)
        self.init_weights()

    def init_weights(self):
        """rsmamba.md §3.2: projection kaiming_normal (fan_in, linear); pos_embed trunc_normal(0.02); the rest
        keeps the torch defaults set at construction (mixer: A_log, D special)."""
        nn.init.kaiming_normal_(self.patch_embed.projection.weight, mode="fan_in", nonlinearity="linear")
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    # ---- permutations ---------------------------------------------------------------------------------
    def _perm(self, i, length, perms, device):
        """(perm, inverse perm) for layer ``i``."""
        if perms is not None:
            p = perms[i]
            return p, torch.argsort(p)
        if self.perm_seed is not None:
            return self.fixed_perms[i], self.fixed_inv_perms[i]
        p = torch.randperm(length).to(device)           # CPU draw, as upstream
        return p, torch.argsort(p)

    def forward(self, x, perms=None):
        x, hw = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(device=x.device)
        x = self.drop_after_pos(x)
        length = x.shape[1]
        if perms is not None and "shuffle" in self.path_type:
            perms = torch.as_tensor(np.asarray(perms) if not torch.is_tensor(perms) else perms,
                                    dtype=torch.int64, device=x.device)
            if tuple(perms.shape) != (self.num_layers, length):
                raise ValueError(f"perms must have shape [{self.num_layers}, {length}], got {tuple(perms.shape)}")
        for i, layer in enumerate(self.layers):
            residual = x
            if self.path_type == "forward":
                x = layer(self.pre_norm(x))
            elif self.path_type in ("forward_reverse_mean", "forward_reverse_gate"):
                out = layer(self.pre_norm(torch.cat([x, torch.flip(x, [1])], dim=0)))
                fwd_x, rev_x = out.chunk(2, dim=0)
                rev_x = torch.flip(rev_x, [1])
                if self.path_type == "forward_reverse_mean":
                    x = (fwd_x + rev_x) / 2
                else:
                    gate = self.gate_layers[i](torch.cat([fwd_x.mean(1), rev_x.mean(1)], dim=-1)).unsqueeze(-1)
                    x = gate[:, 0:1] * fwd_x + gate[:, 1:2] * rev_x
            else:  # shuffle paths
                perm, inv = self._perm(i, length, perms, x.device)
                xin = torch.cat([x, torch.flip(x, [1]), x.index_select(1, perm)], dim=0)
                out = layer(self.pre_norm(xin))
                fwd_x, rev_x, shuf_x = out.chunk(3, dim=0)
                rev_x = torch.flip(rev_x, [1])
                shuf_x = shuf_x.index_select(1, inv)
                if self.path_type == "forward_reverse_shuffle_mean":
                    x = (fwd_x + rev_x + shuf_x) / 3
                else:
                    gate = self.gate_layers[i](
                        torch.cat([fwd_x.mean(1), rev_x.mean(1), shuf_x.mean(1)], dim=-1)).unsqueeze(-1)
                    x = gate[:, 0:1] * fwd_x + gate[:, 1:2] * rev_x + gate[:, 2:3] * shuf_x
            x = residual + x
            if i == self.num_layers - 1 and self.final_norm:
                x = self.ln1(x)
        if self.out_type == "raw":
            return x
        if self.out_type == "featmap":
            return x.reshape(x.shape[0], hw[0], hw[1], -1).permute(0, 3, 1, 2)
        return self.ln2(x.mean(dim=1))


def _sincos_pos_embed(patches_resolution, embed_dims, temperature=10000.0):
    """mmpretrain ``build_2d_sincos_position_embedding`` (no cls token): ``[1, h*w, D]``."""
    h, w = patches_resolution
    grid_w = torch.arange(w, dtype=torch.float32)
    grid_h = torch.arange(h, dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    pos_dim = embed_dims // 4
    omega = 1.0 / (temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
    out_w = torch.einsum("m,d->md", grid_w.flatten(), omega)
    out_h = torch.einsum("m,d->md", grid_h.flatten(), omega)
    pos = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)
    return pos[None]
