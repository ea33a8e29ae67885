"""Compares fedssl_torch against fedssl on the same images.

Usage: python check_features.py RUN FEATURES [--tol 1e-4]

RUN is a fedssl run folder (scenario.json, final.safetensors); FEATURES the file
``fedssl-coordinator features RUN/final.safetensors --out FEATURES`` wrote. Prints one line
per compared tensor with the max absolute difference and exits 1 when any exceeds the
tolerance (pre-logits and every stage map), or when ``normalize`` of the stored uint8 images
differs from the normalised images fedssl fed its backbone by more than 1e-6.
"""

import argparse
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import fedssl_torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("features")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    f = load_file(a.features)
    with safe_open(a.features, "pt") as h:
        meta = h.metadata()
    mean = [float(v) for v in meta["mean"].split(",")]
    std = [float(v) for v in meta["std"].split(",")]
    model = fedssl_torch.load_run(a.run)
    ok = True
    x = fedssl_torch.normalize(f["images_u8"], mean, std)
    d = (x - f["images"]).abs().max().item()
    print(f"normalize: max abs difference {d:.3e}")
    ok &= d <= 1e-6
    with torch.no_grad():
        pre, stages = model(f["images"], return_stages=True)
    worst = 0.0
    d = (pre - f["pre_logits"]).abs().max().item()
    print(f"pre_logits {tuple(pre.shape)}: max abs difference {d:.3e}")
    worst = max(worst, d)
    for s, t in enumerate(stages):
        want = f[f"stages.{s}"]
        if tuple(t.shape) != tuple(want.shape):
            print(f"stages.{s}: shape {tuple(t.shape)} but fedssl's is {tuple(want.shape)}")
            return 1
        d = (t - want).abs().max().item()
        print(f"stages.{s} {tuple(t.shape)}: max abs difference {d:.3e}")
        worst = max(worst, d)
    print(f"{meta['backbone']}: worst max abs difference {worst:.3e} (tolerance {a.tol:g})")
    ok &= worst <= a.tol
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
