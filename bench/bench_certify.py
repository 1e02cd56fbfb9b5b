"""Throughput of ``Smooth.certify``: noisy samples per second against the model's bare forward.

For a small ViT and a tiny CNN on CIFAR-sized inputs, over a sweep of batch sizes, prints the
noisy samples/s CERTIFY reaches and the samples/s of the bare forward pass in full batches of the
same size, on one batch of noisy copies of x drawn beforehand (the ceiling: the gap is the cost of
drawing noise and counting; on plain copies of x the tiny CNN runs some 10-15% faster than on the
noisy inputs it certifies, so they would not be the ceiling); a model that does no
work (``null``) gives the rate of drawing noise and counting alone. ``noise bound`` is the ratio
that drawing the noise alone allows, 1 / (1 + forward rate / noise rate), with the noise rate that
of ``normal_`` into one layout chunk: where drawing Gaussian noise is slow next to the model (a
CPU, a tiny model), it, not the code around it, caps the ratio. Certification and the bare
forward are timed in turn, and each figure is the best of ``--reps``, to damp the noise of a
shared machine.

``--compile`` runs the model through ``CompiledClassifier`` (torch.compile, static batch lengths)
in CERTIFY and in the bare forward alike, and prints how far compiled certificates are from eager
ones: for ``--compare`` inputs, the largest difference in nA between the two on the same noise.
``vit_base`` (ViT-B/16 at 224x224, the paper's classifier) is left out of the default models.

    python bench/bench_certify.py [--device cpu|cuda] [--autocast] [--compile] [--n 1000]
        [--batch-sizes ...] [--models small_vit tiny_cnn null vit_base] [--threads 1 --cpu-time]
"""

from __future__ import annotations

import argparse
import time

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dmae_pipeline.models import build_classifier
from dmae_pipeline.smoothing import CompiledClassifier, Smooth, core


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


def vit_base(num_classes: int) -> nn.Module:
    """The paper's ViT-B/16 classifier at 224x224."""
    return build_classifier("base", num_classes, img_size=224)


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


def best_times(works, reps: int, device: torch.device, clock=time.perf_counter) -> list[float]:
    """The fastest of ``reps`` timed calls of each of ``works`` (after one warm-up call each),
    taking turns so that a load on the machine slows them alike."""
    for work in works:
        work()
    best = [float("inf")] * len(works)
    for _ in range(reps):
        for i, work in enumerate(works):
            _sync(device)
            start = clock()
            work()
            _sync(device)
            best[i] = min(best[i], clock() - start)
    return best


def rates(smooth: Smooth, x, n0: int, n: int, batch_size: int, reps: int, autocast, clock):
    """Samples/s of CERTIFY, of the bare forward pass on as many samples in full batches of noisy
    inputs, and of drawing the noise."""
    generator = torch.Generator(device=x.device).manual_seed(0)
    batch = x + smooth.sigma * torch.randn(batch_size, *x.shape, device=x.device)
    batches = -(-(n0 + n) // batch_size)
    chunk = torch.empty(max(1, core.NOISE_CHUNK_ELEMENTS // x.numel()), *x.shape, device=x.device)

    def certify():
        smooth.certify(x, n0, n, 0.001, batch_size, generator)

    def forward():
        with torch.inference_mode(), autocast():
            for _ in range(batches):
                smooth.model(batch).argmax(1)

    def noise():
        chunk.normal_(0.0, smooth.sigma, generator=generator)

    times = best_times([certify, forward, noise], reps, x.device, clock)
    return (n0 + n) / times[0], batches * batch_size / times[1], len(chunk) / times[2]


MODELS = {"small_vit": small_vit, "tiny_cnn": tiny_cnn, "null": NullModel, "vit_base": vit_base}
INPUT_SIZE = {"vit_base": 224}  # the others: 32


def compiled_gap(eager: Smooth, compiled: Smooth, like, n0: int, n: int, batch_size: int, count):
    """Eager and compiled CERTIFY of ``count`` random inputs shaped as ``like``, on the same noise:
    how many get the same certificate, and the largest difference in nA (n where c_hat differs)."""
    same, gap = 0, 0
    for i in range(count):
        x = torch.rand(like.shape, generator=torch.Generator().manual_seed(i)).to(like.device)
        a, b = (
            smooth.certify_detailed(
                x, n0, n, 0.001, batch_size, torch.Generator(x.device).manual_seed(i)
            )
            for smooth in (eager, compiled)
        )
        same += a == b
        gap = max(gap, abs(a.n_a - b.n_a) if a.c_hat == b.c_hat else n)
    return same, gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast for the model")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--compare", type=int, default=20, help="inputs to compare (--compile)")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[25, 100, 400, 1000])
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=["small_vit", "tiny_cnn", "null"]
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by this process's CPU time, not the wall clock: steadier on a loaded CPU "
        "machine (use with --threads 1; meaningless on a GPU)",
    )
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.autocast else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    print(
        f"device={device} threads={torch.get_num_threads()} autocast={dtype} "
        f"compile={args.compile} n0={args.n0} n={args.n} reps={args.reps} "
        f"clock={clock.__name__}, 10 classes"
    )
    print(
        f"{'model':<10}{'input':>8}{'batch':>7}{'certify samples/s':>20}{'forward samples/s':>20}"
        f"{'ratio':>7}{'noise samples/s':>17}{'noise bound':>13}"
    )
    for name in args.models:
        torch.manual_seed(0)
        size = INPUT_SIZE.get(name, 32)
        x = torch.rand(3, size, size, device=device)
        model = MODELS[name](10).to(device).eval()
        eager = Smooth(model, 10, sigma=0.25, autocast_dtype=dtype)
        for batch_size in args.batch_sizes:
            smooth = eager
            if args.compile:
                lengths = [batch_size, min(args.n0, batch_size)]
                smooth = Smooth(CompiledClassifier(model, lengths), 10, 0.25, autocast_dtype=dtype)
            certified, bare, noise = rates(
                smooth, x, args.n0, args.n, batch_size, args.reps, autocast, clock
            )
            print(
                f"{name:<10}{size:>8}{batch_size:>7}{certified:>20,.0f}{bare:>20,.0f}"
                f"{certified / bare:>7.2f}{noise:>17,.0f}{1 / (1 + bare / noise):>13.2f}"
            )
            if args.compile:
                same, gap = compiled_gap(
                    eager, smooth, x, args.n0, args.n, batch_size, args.compare
                )
                print(
                    f"{'':<10}compiled vs eager: the same certificate for {same} of "
                    f"{args.compare} inputs; nA differs by at most {gap} of n = {args.n}"
                )


if __name__ == "__main__":
    main()
