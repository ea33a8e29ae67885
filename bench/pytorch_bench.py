#!/usr/bin/env python3
"""PyTorch reference for `cargo run --release -p fedssl-shared --example bench_conv`.

Same model as the Rust bench: 3x3 stem conv 3->32 + BN + ReLU; three stages of two
BasicBlocks (widths 32/64/128, stride 2 at the start of stages 2 and 3, 1x1 stride-2 conv + BN
shortcut); global average pool; linear 128->10. Convs have no bias. Training step: forward
with BatchNorm in training mode, cross-entropy, backward, plain SGD (lr 0.01). Inference:
eval-mode forward under torch.no_grad(). Batch 128 of 32x32 random images, float32.
`--model vgg11` is fedssl's VGG-11-BN, `--model vit` fedssl's default ViT (see the classes).

Prints one JSON line per measured configuration: {"train_ips": ..., "infer_ips": ...,
"torch_version": ..., ...} (images per second over the best of --iters timed steps after
--warmup untimed ones, as the Rust bench reports; *_median over the median step). With one
model, batch and mode (the defaults) that is one line, the last line of the output.

GPU (issue 18): `--device cuda` runs on the GPU and synchronises the device after every timed
step; `--batch 128,512` and `--mode eager,compile` measure several configurations in one
process (`compile`: `torch.compile` of the model, default mode; its first steps, compilation
included, are the warm-up, and their time is reported as `compile_seconds`; a configuration
that fails reports its error instead of the rates). On CUDA, float32 stays float32 (cuDNN and
cuBLAS TF32 off, as candle's cuBLAS GEMMs) unless `--tf32` (PyTorch's default for cuDNN
convolutions), and `cudnn.benchmark` is on (PyTorch's fastest convolution algorithms).
Peak GPU memory is `torch.cuda.max_memory_allocated()` per configuration.
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


def sincos_pos_embed_2d(dim, gh, gw):
    """MAE's fixed 2-D sin-cos position embedding (L, D): half the width for the row, half for
    the column, each [sin | cos] of position * 10000^(-i / (D/4))."""
    def one(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1, 1).double() * omega.reshape(1, -1)
        return torch.cat([out.sin(), out.cos()], 1)
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.cat([one(dim // 2, ys), one(dim // 2, xs)], 1).float()


class VitBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x):
        b, l, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, l, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, l, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Vit(nn.Module):
    """fedssl's default ViT (model.backbone = "vit"): patch 4 (64 tokens), dim 96, depth 4,
    4 heads, MLP ratio 4, GELU (erf), pre-norm LayerNorm eps 1e-6, fixed sin-cos position
    embedding, no class token, pre-logits = mean of the final-normed tokens; linear 96->10."""

    def __init__(self, patch=4, dim=96, depth=4, heads=4, mlp_ratio=4, side=32):
        super().__init__()
        self.patch = patch
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.register_buffer("pos", sincos_pos_embed_2d(dim, side // patch, side // patch)[None])
        self.blocks = nn.Sequential(*[VitBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.fc(self.norm(self.blocks(t)).mean(1))


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


def timed(fn, warmup, iters, sync=lambda: None):
    """(best, median) seconds of `fn` over `iters` timed runs after `warmup` untimed ones, and
    the seconds the warm-up took; `sync` waits for the device after every run."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), warm


def build(model):
    return {"resnet": Net, "vgg11": Vgg11Bn, "vit": Vit}[model]()


def measure(a, model, batch, mode, device):
    """One configuration's JSON object."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    reset_peak_rss()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    net = build(model).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.tensor([(i * 7 + 3) % 10 for i in range(batch)], device=device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    fwd = net
    if mode == "compile":
        torch._dynamo.reset()
        fwd = torch.compile(net)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    net.train()
    train_s = timed(train_step, a.warmup, a.iters, sync)

    def infer_step():
        with torch.no_grad():
            fwd(x).sum().item()

    net.eval()
    infer_s = timed(infer_step, a.warmup, a.iters, sync)
    out = {
        "train_ips": batch / train_s[0],
        "infer_ips": batch / infer_s[0],
        "train_ips_median": batch / train_s[1],
        "infer_ips_median": batch / infer_s[1],
        "threads": torch.get_num_threads(),
        "batch": batch,
        "model": model,
        "torch_version": torch.__version__,
        "peak_rss_bytes": peak_rss_bytes(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(device),
        "mode": mode,
        "iters": a.iters,
        "warmup": a.warmup,
    }
    if mode == "compile":
        out["compile_seconds"] = {"train": train_s[2], "inference": infer_s[2]}
    if cuda:
        out["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["gpu"] = torch.cuda.get_device_name(device)
        out["tf32"] = a.tf32
        out["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        out["cuda_version"] = torch.version.cuda
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", default="128", help="batch size, or a comma-separated list")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--model", default="resnet",
                   help="resnet, vgg11 or vit, or a comma-separated list")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--mode", default="eager", help="eager, compile or eager,compile")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA: allow TF32 in cuDNN convolutions and cuBLAS matmuls")
    a = p.parse_args()
    models = a.model.split(",")
    for m in models:
        if m not in ("resnet", "vgg11", "vit"):
            p.error(f"--model {m}: expected resnet, vgg11 or vit")
    modes = a.mode.split(",")
    for m in modes:
        if m not in ("eager", "compile"):
            p.error(f"--mode {m}: expected eager or compile")
    batches = [int(b) for b in a.batch.split(",")]
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error(f"--device {a.device}: torch.cuda.is_available() is False")
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.benchmark = True
    for model in models:
        for batch in batches:
            for mode in modes:
                try:
                    out = measure(a, model, batch, mode, device)
                except Exception as e:  # a failed compile must not lose the other rows
                    out = {"model": model, "batch": batch, "mode": mode, "device": str(device),
                           "torch_version": torch.__version__,
                           "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
                print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
