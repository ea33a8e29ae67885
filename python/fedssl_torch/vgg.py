"""fedssl's VGG-BN (Simonyan & Zisserman, ICLR 2015, configurations A/D/E = VGG-11/16/19,
BatchNorm after every convolution), adapted to 32×32 inputs as Kolesnikov, Zhai & Beyer
("Revisiting Self-Supervised Visual Representation Learning", CVPR 2019) do, with the
parameter names of ``shared/src/model/vgg.rs``:

``blocks.{b}.{l}.conv.weight``, ``blocks.{b}.{l}.bn.{weight,bias,running_mean,running_var}``,
``hidden.fc.weight`` ``(hidden, C_last)``, ``hidden.bn.*``. No biases.

Five blocks of ``conv3×3 → BN → ReLU`` each followed by a 2×2 max-pool (skipped where the
map is already smaller than 2×2), global average pooling, then ``Linear → BatchNorm1d →
ReLU`` whose output is the pre-logits.
"""

import torch
from torch import nn
import torch.nn.functional as F

from .layers import batch_norm_1d, batch_norm_2d

CONVS_PER_BLOCK = {11: (1, 1, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
BLOCK_MULT = (1, 2, 4, 8, 8)


class ConvBnRelu(nn.Module):
    """``relu(bn(conv3×3(x)))``, padding 1, no bias."""

    def __init__(self, ci: int, co: int):
        super().__init__()
        self.conv = nn.Conv2d(ci, co, 3, padding=1, bias=False)
        self.bn = batch_norm_2d(co)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Hidden(nn.Module):
    """The hidden fully connected block: ``relu(bn1d(x @ fc.weightᵀ))``, no bias."""

    def __init__(self, ci: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(ci, hidden, bias=False)
        self.bn = batch_norm_1d(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.fc(x)))


class Vgg(nn.Module):
    """The backbone of ``[model.vgg]``: ``depth`` (11, 16, 19), ``base_width``, ``widen``,
    ``hidden`` (default ``8 · base_width · widen``).

    ``forward(x)``: normalised images ``(N, 3, H, W)`` → pre-logits ``(N, hidden)``;
    ``forward(x, return_stages=True)`` → ``(pre_logits, stages)``, ``stages[b]`` the output
    of block ``b`` after its max-pool.
    """

    def __init__(self, depth=11, base_width=16, widen=1, hidden=None):
        super().__init__()
        if depth not in CONVS_PER_BLOCK:
            raise ValueError(f"vgg: depth must be 11, 16 or 19, got {depth}")
        ci = 3
        blocks = []
        for n, m in zip(CONVS_PER_BLOCK[depth], BLOCK_MULT):
            co = m * base_width * widen
            layers = []
            for _ in range(n):
                layers.append(ConvBnRelu(ci, co))
                ci = co
            blocks.append(nn.ModuleList(layers))
        self.blocks = nn.ModuleList(blocks)
        hidden = hidden if hidden is not None else 8 * base_width * widen
        self.hidden = Hidden(ci, hidden)
        self.feature_dim = hidden

    def forward(self, x: torch.Tensor, return_stages: bool = False):
        h = x
        stages = []
        for block in self.blocks:
            for layer in block:
                h = layer(h)
            if h.shape[2] >= 2 and h.shape[3] >= 2:
                h = F.max_pool2d(h, 2)
            stages.append(h)
        pre_logits = self.hidden(h.mean(dim=(2, 3)))
        return (pre_logits, stages) if return_stages else pre_logits
