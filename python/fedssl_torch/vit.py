"""fedssl's Vision Transformer (Dosovitskiy et al., ICLR 2021) laid out as MAE's encoder
(He et al., CVPR 2022), with the parameter names of ``shared/src/model/vit.rs`` (timm's):

``patch_embed.{weight,bias}`` (a Linear ``(D, p·p·3)`` on patchified pixels, each patch
flattened as ``(p, p, C)``), ``blocks.{i}.norm1.*``, ``blocks.{i}.attn.qkv.*`` ``(3D, D)``,
``blocks.{i}.attn.proj.*``, ``blocks.{i}.norm2.*``, ``blocks.{i}.mlp.fc1.*``,
``blocks.{i}.mlp.fc2.*``, ``norm.*``.

Fixed 2-D sin-cos position embeddings (no parameters), pre-norm blocks, LayerNorm
``eps = 1e-6``, exact (erf) GELU, no class token: the pre-logits are the mean of the
final-normed tokens.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, (H/p)·(W/p), p·p·C)``, patches in row-major grid order,
    each flattened as (pixel row, pixel column, channel) — MAE's ``patchify``."""
    n, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"vit: patch size {p} does not divide the {h}x{w} image")
    gh, gw = h // p, w // p
    return x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, p * p * c)


def sincos_pos_embed_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    """``(gh·gw, dim)``: for token ``k = i·gw + j`` the first ``dim/2`` values encode the
    column ``j`` and the last ``dim/2`` the row ``i``, each half ``[sin(pos·ω_t)…,
    cos(pos·ω_t)…]`` with ``ω_t = 10000^(−t/m)``, ``m = dim/4`` (computed in float64 and
    rounded to float32 as fedssl does)."""
    if dim % 4:
        raise ValueError("sin-cos position embedding needs dim % 4 == 0")
    m = dim // 4
    omega = torch.tensor([1.0 / 10000.0 ** (t / m) for t in range(m)], dtype=torch.float64)
    rows = []
    for i in range(gh):
        for j in range(gw):
            parts = []
            for pos in (float(j), float(i)):
                parts.append(torch.sin(pos * omega))
                parts.append(torch.cos(pos * omega))
            rows.append(torch.cat(parts))
    return torch.stack(rows).to(torch.float32)


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` ``(3D, D)``, scaled dot product per head, ``proj``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        hd = c // self.heads
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd ** -0.5, qkv[1], qkv[2]
        attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` with exact GELU."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Vit(nn.Module):
    """The backbone of ``[model.vit]``: ``patch_size``, ``dim``, ``depth``, ``heads``,
    ``mlp_ratio``.

    ``forward(x)``: normalised images ``(N, 3, H, W)`` (sides multiples of ``patch_size``)
    → pre-logits ``(N, dim)``; ``forward(x, return_stages=True)`` → ``(pre_logits, stages)``,
    ``stages[i]`` block ``i``'s tokens as a map ``(N, dim, H/p, W/p)``.
    """

    def __init__(self, patch_size=4, dim=96, depth=4, heads=4, mlp_ratio=4):
        super().__init__()
        if dim % 4 or dim % heads:
            raise ValueError(f"vit: dim {dim} must be a multiple of 4 and of heads {heads}")
        self.patch_size = patch_size
        self.dim = dim
        self.patch_embed = nn.Linear(3 * patch_size * patch_size, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.feature_dim = dim

    def forward(self, x: torch.Tensor, return_stages: bool = False):
        n, _, h, w = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        pos = sincos_pos_embed_2d(self.dim, gh, gw).to(device=x.device, dtype=x.dtype)
        t = self.patch_embed(patchify(x, p)) + pos
        stages = []
        for blk in self.blocks:
            t = blk(t)
            stages.append(t.transpose(1, 2).reshape(n, self.dim, gh, gw))
        pre_logits = self.norm(t).mean(dim=1)
        return (pre_logits, stages) if return_stages else pre_logits
