"""Layers shared by the backbones."""

from torch import nn


def _drop_batch_counter(bn: nn.Module) -> nn.Module:
    # fedssl's checkpoints hold weight, bias, running_mean and running_var only; without
    # PyTorch's `num_batches_tracked` buffer the state dict has exactly fedssl's names (the
    # buffer is only used when `momentum=None`, which fedssl never uses).
    bn.register_buffer("num_batches_tracked", None)
    return bn


def batch_norm_2d(c: int) -> nn.BatchNorm2d:
    """BatchNorm over ``(N, C, H, W)`` with fedssl's settings (eps 1e-5, momentum 0.1)."""
    return _drop_batch_counter(nn.BatchNorm2d(c, eps=1e-5, momentum=0.1))


def batch_norm_1d(c: int) -> nn.BatchNorm1d:
    """BatchNorm over ``(N, C)`` with fedssl's settings (eps 1e-5, momentum 0.1)."""
    return _drop_batch_counter(nn.BatchNorm1d(c, eps=1e-5, momentum=0.1))
