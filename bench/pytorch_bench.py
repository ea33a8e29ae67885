#!/usr/bin/env python3
"""PyTorch reference for `cargo run --release -p fedssl-shared --example bench_conv`.

Same model as the Rust bench: 3x3 stem conv 3->32 + BN + ReLU; three stages of two
BasicBlocks (widths 32/64/128, stride 2 at the start of stages 2 and 3, 1x1 stride-2 conv + BN
shortcut); global average pool; linear 128->10. Convs have no bias. Training step: forward
with BatchNorm in training mode, cross-entropy, backward, plain SGD (lr 0.01). Inference:
eval-mode forward under torch.no_grad(). Batch 128 of 32x32 random images, CPU, float32.

Prints one JSON line: {"train_ips": ..., "infer_ips": ..., "torch_version": ..., ...}
(images per second over the best of --iters timed steps after --warmup untimed ones, as the
Rust bench reports; *_median over the median step).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBn(nn.Module):
    def __init__(self, c_in, c_out, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)

    def forward(self, x):
        return self.bn(self.conv(x))


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.a = ConvBn(c_in, c_out, 3, stride)
        self.b = ConvBn(c_out, c_out, 3, 1)
        self.shortcut = ConvBn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        y = self.b(F.relu(self.a(x)))
        s = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(y + s)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvBn(3, 32, 3, 1)
        blocks, c_in = [], 32
        for i, c in enumerate([32, 64, 128]):
            for j in range(2):
                blocks.append(Block(c_in, c, 2 if i > 0 and j == 0 else 1))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        y = self.blocks(F.relu(self.stem(x)))
        return self.fc(y.mean((2, 3)))


class Vgg11Bn(nn.Module):
    """fedssl's vgg_bn as benched: VGG-11 (configuration A) with BatchNorm, blocks of 1, 1, 2,
    2, 2 conv3x3-BN-ReLU layers of 32, 64, 128, 256, 256 channels (no bias), a 2x2 max-pool
    after each block (32 -> 1), global average pool, hidden Linear 256->256 (no bias) + BN1d +
    ReLU (the pre-logits), linear 256->10."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for n, c in zip([1, 1, 2, 2, 2], [32, 64, 128, 256, 256]):
            for _ in range(n):
                layers += [nn.Conv2d(c_in, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Linear(256, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU())
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(self.hidden(self.features(x).mean((2, 3))))


def reset_peak_rss():
    """Linux: writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes():
    """Peak resident set size (VmHWM) in bytes since the last reset; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--model", choices=["resnet", "vgg11"], default="resnet")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    reset_peak_rss()
    net = Net() if a.model == "resnet" else Vgg11Bn()
    x = torch.randn(a.batch, 3, 32, 32)
    y = torch.tensor([(i * 7 + 3) % 10 for i in range(a.batch)])
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    net.train()
    train_s = timed(train_step, a.warmup, a.iters)

    def infer_step():
        with torch.no_grad():
            net(x).sum().item()

    net.eval()
    infer_s = timed(infer_step, a.warmup, a.iters)
    print(json.dumps({
        "train_ips": a.batch / train_s[0],
        "infer_ips": a.batch / infer_s[0],
        "train_ips_median": a.batch / train_s[1],
        "infer_ips_median": a.batch / infer_s[1],
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "model": a.model,
        "torch_version": torch.__version__,
        "peak_rss_bytes": peak_rss_bytes(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }))


if __name__ == "__main__":
    main()
