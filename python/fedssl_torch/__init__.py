"""fedssl's backbones as PyTorch modules.

A fedssl run folder holds ``scenario.json`` (the resolved scenario, whose ``model`` section
gives the backbone family and layout) and ``final.safetensors`` (the global backbone; round
checkpoints in ``checkpoints/``). This package rebuilds the backbone with exactly fedssl's
parameter names and layouts and loads the weights strictly::

    import fedssl_torch
    model = fedssl_torch.load_run("runs/quickstart")   # nn.Module, eval mode
    pre_logits = model(images)                          # (N, 3, H, W) normalised -> (N, D)

``model(images, return_stages=True)`` returns ``(pre_logits, stages)`` with every stage's
map. :func:`normalize` turns ``uint8`` images ``(N, H, W, 3)`` into the normalised input.
Depends only on torch and safetensors.
"""

import json
import os
from typing import Dict, Optional, Sequence, Union

import torch
from safetensors.torch import load_file

from .resnet import ResNet
from .vgg import Vgg
from .vit import Vit

__all__ = [
    "ResNet",
    "Vgg",
    "Vit",
    "build_backbone",
    "load_checkpoint",
    "load_run",
    "normalize",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "HEAD_PREFIX",
]

#: Per-channel mean of CIFAR-10's training images on the 0..1 scale (fedssl's normalisation).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
#: Per-channel standard deviation of CIFAR-10's training images on the 0..1 scale.
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: Tensors under this prefix in a checkpoint are pretext-task heads, not the backbone.
HEAD_PREFIX = "head."

PathLike = Union[str, "os.PathLike[str]"]


def build_backbone(model: Dict) -> torch.nn.Module:
    """The backbone described by a scenario's ``model`` section (a dict as in a run's
    ``scenario.json``: ``backbone`` = ``"resnet"`` | ``"vgg_bn"`` | ``"vit"`` and the chosen
    family's table), with PyTorch's default initialisation. Raises ``ValueError`` on an
    unknown family or layout."""
    kind = model.get("backbone", "resnet")
    if kind == "resnet":
        return ResNet(**_layout(model, "resnet", ("stem_width", "widths", "blocks", "widen")))
    if kind == "vgg_bn":
        return Vgg(**_layout(model, "vgg", ("depth", "base_width", "widen", "hidden")))
    if kind == "vit":
        keys = ("patch_size", "dim", "depth", "heads", "mlp_ratio")
        return Vit(**_layout(model, "vit", keys))
    raise ValueError(f"model.backbone: unknown backbone {kind!r} (expected resnet, vgg_bn or vit)")


def _layout(model: Dict, table: str, keys: Sequence[str]) -> Dict:
    cfg = dict(model.get(table) or {})
    unknown = sorted(set(cfg) - set(keys))
    if unknown:
        raise ValueError(f"model.{table}: unknown keys {unknown} (known: {list(keys)})")
    return {k: v for k, v in cfg.items() if v is not None}


def load_checkpoint(module: torch.nn.Module, path: PathLike) -> torch.nn.Module:
    """Loads the backbone tensors of the safetensors file ``path`` into ``module`` strictly:
    every tensor of the file except the pretext heads (``head.*``) must be a parameter or
    buffer of ``module`` with the same shape, and every one of ``module``'s must be in the
    file. Raises ``ValueError`` naming the file and the missing, unexpected or mis-shaped
    tensors; ``module`` is left untouched then. Returns ``module``."""
    try:
        loaded = load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors' own error types: a truncated or foreign file
        raise ValueError(f"{path}: not a readable safetensors checkpoint: {e}") from e
    tensors = {k: v for k, v in loaded.items() if not k.startswith(HEAD_PREFIX)}
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(tensors[k].shape)}, module {tuple(own[k].shape)}"
        for k in set(own) & set(tensors)
        if tuple(own[k].shape) != tuple(tensors[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    if shapes:
        problems.append(f"shape mismatch {shapes}")
    if problems:
        raise ValueError(f"{path}: does not hold this backbone: " + "; ".join(problems))
    # Copied in place (the state dict's tensors share storage with the module's parameters
    # and buffers): `load_state_dict` would have BatchNorm add back `num_batches_tracked`.
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(own[k].dtype))
    return module


def load_run(run: PathLike, checkpoint: Optional[PathLike] = None) -> torch.nn.Module:
    """The backbone of the fedssl run folder ``run``: built from ``run/scenario.json`` and
    loaded strictly (:func:`load_checkpoint`) from ``checkpoint`` (default
    ``run/final.safetensors``; a relative path is taken relative to the current folder), in
    eval mode (BatchNorm uses its running statistics, as fedssl's evaluation). Raises
    ``FileNotFoundError`` naming a missing file and ``ValueError`` as above."""
    scenario_path = os.path.join(run, "scenario.json")
    with open(scenario_path, encoding="utf-8") as f:
        try:
            scenario = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{scenario_path}: not a run's scenario.json: {e}") from e
    if "model" not in scenario:
        raise ValueError(f"{scenario_path}: no `model` section")
    module = build_backbone(scenario["model"])
    ckpt = checkpoint if checkpoint is not None else os.path.join(run, "final.safetensors")
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"no checkpoint {ckpt}")
    return load_checkpoint(module, ckpt).eval()


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> torch.Tensor:
    """``uint8`` images ``(N, H, W, 3)`` → the backbone's ``float32`` input ``(N, 3, H, W)``:
    ``(v/255 − mean[c]) / std[c]``, fedssl's normalisation (CIFAR-10's statistics by default;
    ``fedssl-coordinator features`` writes the ones a run used into its file's metadata)."""
    x = images.to(torch.float32).permute(0, 3, 1, 2) / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s
