"""Throughput of ``Smooth.certify``: noisy samples per second against the model's bare forward.

For a small ViT and a tiny CNN on CIFAR-sized inputs, over a sweep of batch sizes, prints the
noisy samples/s CERTIFY reaches and the samples/s of the bare forward pass in full batches of the
same size (the ceiling: the gap is the cost of drawing noise and counting); a model that does no
work (``null``) gives the rate of drawing noise and counting alone. Each figure is the best
of ``--reps`` timings, to damp the noise of a shared machine.

    python bench/bench_certify.py [--device cpu|cuda] [--autocast] [--n 1000] [--batch-sizes ...]
"""

from __future__ import annotations

import argparse
import time

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dmae_pipeline.smoothing import Smooth


def small_vit(num_classes: int) -> nn.Module:
    return VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=192,
        depth=6,
        num_heads=3,
        num_classes=num_classes,
        global_pool="avg",
        fc_norm=True,
    )


def tiny_cnn(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


class NullModel(nn.Module):
    """Constant logits: what is left is the cost of the noise and the counting."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(len(x), self.num_classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(work, samples: int, reps: int, device: torch.device) -> float:
    """Samples/s of the fastest of ``reps`` timed calls of ``work`` (after one warm-up call)."""
    work()
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        work()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return samples / best


def certify_rate(smooth: Smooth, x: torch.Tensor, n0: int, n: int, batch_size: int, reps: int):
    """Noisy samples/s of CERTIFY."""
    generator = torch.Generator(device=x.device).manual_seed(0)
    return best_rate(
        lambda: smooth.certify(x, n0, n, 0.001, batch_size, generator), n0 + n, reps, x.device
    )


def forward_rate(model: nn.Module, x, samples: int, batch_size: int, reps: int, autocast):
    """Samples/s of the bare forward pass on ``samples`` inputs, in full batches."""
    batch = x.expand(batch_size, *x.shape).contiguous()
    batches = -(-samples // batch_size)

    def work():
        with torch.inference_mode(), autocast():
            for _ in range(batches):
                model(batch).argmax(1)

    return best_rate(work, batches * batch_size, reps, x.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast for the model")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[25, 100, 400, 1000])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.autocast else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    torch.manual_seed(0)
    x = torch.rand(3, 32, 32, device=device)
    print(
        f"device={device} threads={torch.get_num_threads()} autocast={dtype} "
        f"n0={args.n0} n={args.n} reps={args.reps}, input 3x32x32, 10 classes"
    )
    print(f"{'model':<10}{'batch':>7}{'certify samples/s':>20}{'forward samples/s':>20}", end="")
    print(f"{'ratio':>7}")
    for name, build in (("small_vit", small_vit), ("tiny_cnn", tiny_cnn), ("null", NullModel)):
        model = build(10).to(device).eval()
        smooth = Smooth(model, 10, sigma=0.25, autocast_dtype=dtype)
        for batch_size in args.batch_sizes:
            certified = certify_rate(smooth, x, args.n0, args.n, batch_size, args.reps)
            bare = forward_rate(model, x, args.n0 + args.n, batch_size, args.reps, autocast)
            print(
                f"{name:<10}{batch_size:>7}{certified:>20,.0f}{bare:>20,.0f}"
                f"{certified / bare:>7.2f}"
            )


if __name__ == "__main__":
    main()
