"""fedssl's CIFAR-style ResNet (He et al., "Deep Residual Learning for Image Recognition",
CVPR 2016, §4.2) in PyTorch, with the parameter names of ``shared/src/model/resnet.rs``:

``stem.conv.weight``, ``stem.bn.{weight,bias,running_mean,running_var}``,
``stages.{s}.{b}.conv1.weight``, ``stages.{s}.{b}.bn1.*``, ``stages.{s}.{b}.conv2.weight``,
``stages.{s}.{b}.bn2.*`` and, where a block changes stride or width,
``stages.{s}.{b}.shortcut.conv.weight``, ``stages.{s}.{b}.shortcut.bn.*``.

A 3×3 stem (stride 1, no max-pool), stages of BasicBlocks (the first block of every stage
after the first has stride 2), global average pooling. BatchNorm ``eps = 1e-5``,
``momentum = 0.1`` as candle's and PyTorch's defaults.
"""

import torch
from torch import nn
import torch.nn.functional as F

from .layers import batch_norm_2d


class ConvBn(nn.Module):
    """Convolution ``(co, ci, k, k)`` without bias, padding ``k // 2``, then BatchNorm."""

    def __init__(self, ci: int, co: int, k: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(ci, co, k, stride=stride, padding=k // 2, bias=False)
        self.bn = batch_norm_2d(co)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a 1×1
    ConvBn where the stride or the width changes, the identity otherwise."""

    def __init__(self, ci: int, co: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ci, co, 3, stride=stride, padding=1, bias=False)
        self.bn1 = batch_norm_2d(co)
        self.conv2 = nn.Conv2d(co, co, 3, stride=1, padding=1, bias=False)
        self.bn2 = batch_norm_2d(co)
        self.shortcut = ConvBn(ci, co, 1, stride) if stride != 1 or ci != co else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        s = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.bn2(self.conv2(y)) + s)


class ResNet(nn.Module):
    """The backbone of ``[model.resnet]``: ``stem_width``, ``widths``, ``blocks``, ``widen``.

    ``forward(x)`` takes normalised images ``(N, 3, H, W)`` and returns the pre-logits
    ``(N, D)`` with ``D = widen · widths[-1]``; ``forward(x, return_stages=True)`` returns
    ``(pre_logits, stages)`` with ``stages[s]`` of shape ``(N, C_s, H_s, W_s)``,
    ``H_s = ceil(H / 2^s)``.
    """

    def __init__(self, stem_width=16, widths=(16, 32, 64), blocks=(1, 1, 1), widen=1):
        super().__init__()
        if not widths or len(widths) != len(blocks):
            raise ValueError(f"resnet: widths {list(widths)} and blocks {list(blocks)} must be non-empty and of equal length")
        k = widen
        self.stem = ConvBn(3, k * stem_width, 3, 1)
        ci = k * stem_width
        stages = []
        for s, (co, nb) in enumerate(zip(widths, blocks)):
            stage = []
            for b in range(nb):
                stride = 2 if s > 0 and b == 0 else 1
                stage.append(BasicBlock(ci, k * co, stride))
                ci = k * co
            stages.append(nn.ModuleList(stage))
        self.stages = nn.ModuleList(stages)
        self.feature_dim = ci

    def forward(self, x: torch.Tensor, return_stages: bool = False):
        h = F.relu(self.stem(x))
        outs = []
        for stage in self.stages:
            for block in stage:
                h = block(h)
            outs.append(h)
        pre_logits = h.mean(dim=(2, 3))
        return (pre_logits, outs) if return_stages else pre_logits
