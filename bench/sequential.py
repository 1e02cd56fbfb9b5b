"""Sequential CERTIFY against fixed-n CERTIFY: samples per image, certified accuracy, throughput.

1. Synthetic (``synthetic``): a two-class base classifier whose label class has a known
   probability p under noise, per image, from a spread like a trained model's: 65% of images near
   1 (1 - p log-uniform in [1e-7, 1e-4]), 20% across the radius thresholds (Phi^-1(p) uniform in
   [0, 3.5], i.e. a true radius uniform in [0, 3.5 sigma]) and 15% below 1/2 (p uniform in
   [0.05, 0.5]: the other class wins). Counts are drawn as binomials per look, so thousands of
   images take seconds; the same is then run through ``certify_many`` on a subset with a
   model whose forward is a comparison, to exercise the pooled code path end to end. Prints mean
   and median estimation samples per image (goal: mean at most n_max / 10) and certified accuracy
   at each radius, sequential against fixed-n Clopper-Pearson at n = n_max (goal: within 0.5
   points).
2. A real model (``compare_on_model``): sequential and fixed-n CERTIFY of a model on a dataset,
   with the pooled path's samples/s against the bare forward pass at the same batch size. Run here
   on an untrained tiny CNN (or ``--model small_vit``) and random images, for throughput only.
3. The embedded default (``--digits PROJECT``, after ``kedro run`` there): ``compare_on_model``
   with each finetuned sigma model of the chain on the digits test set, n_max = 10,000 and the
   report's radii (goal: certified accuracy within 0.5 points of fixed-n at n = n_max).

    python bench/sequential.py [--images 4000] [--pooled-images 2000] [--seed 0]
        [--no-synthetic] [--model tiny_cnn|small_vit] [--model-images 60] [--model-n-max 2000]
        [--batch-size 400]
    python bench/sequential.py --digits . [--digits-n-max 10000] [--digits-skip 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.stats import norm
from torch import nn

from bench_certify import small_vit, tiny_cnn
from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.models import load_classifier
from dmae_pipeline.smoothing import SequentialTest, Smooth, certify_many, lower_confidence_bound

SIGMA, ALPHA, N0, N_MAX = 0.25, 0.001, 100, 100_000
RADII = (0.25, 0.5, 0.75, 1.0)


def label_probabilities(count: int, rng: np.random.Generator) -> np.ndarray:
    """The label class's probability under noise, per image, from the spread in the docstring."""
    kind = rng.choice(3, size=count, p=[0.65, 0.20, 0.15])
    near_one = 1 - 10 ** rng.uniform(-7, -4, count)
    across = norm.cdf(rng.uniform(0, 3.5, count))
    below = rng.uniform(0.05, 0.5, count)
    return np.choose(kind, [near_one, across, below])


def certified_accuracy(c_hat, p_a_lower, radii=RADII) -> np.ndarray:
    """Percent of images certified for the label (class 0) at each radius."""
    radius = np.where(p_a_lower >= 0.5, SIGMA * norm.ppf(np.maximum(p_a_lower, 0.5)), -1.0)
    return np.array([100 * np.mean((c_hat == 0) & (radius >= r)) for r in radii])


def simulate(p_label: np.ndarray, test: SequentialTest, rng: np.random.Generator):
    """Selection, sequential estimation and fixed-n estimation from binomial draws.

    :return: c_hat, estimation samples and pA_lower (sequential), pA_lower (fixed n = n_max)
    """
    selected = rng.binomial(N0, p_label)
    c_hat = np.where(selected >= N0 - selected, 0, 1)  # argmax takes the first of tied classes
    p_a = np.where(c_hat == 0, p_label, 1 - p_label)
    n_a, n = np.zeros(len(p_a), np.int64), np.zeros(len(p_a), np.int64)
    active, drawn = np.ones(len(p_a), bool), 0
    for look in test.looks:
        running = np.flatnonzero(active)
        n_a[running] += rng.binomial(look - drawn, p_a[running])
        n[running], drawn = look, look
        active[running[test.settled(n_a[running], look)]] = False
    fixed = lower_confidence_bound(rng.binomial(test.n_max, p_a), test.n_max, test.alpha)
    return c_hat, n, test.lower(n_a, n), fixed


class Threshold(nn.Module):
    """Class 0 when the (noisy) first pixel is below 1/2: at x = 1/2 - sigma Phi^-1(p), class 0
    has probability p under noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x.flatten(1)[:, :1]
        return torch.cat((0.5 - first, first - 0.5), dim=1)


def print_comparison(name, n, c_hat, lower, fixed_lower, n_max) -> None:
    sequential, fixed = certified_accuracy(c_hat, lower), certified_accuracy(c_hat, fixed_lower)
    print(
        f"{name}: {len(n)} images, estimation samples per image: mean {n.mean():,.0f} "
        f"({n.mean() / n_max:.3f} n_max), median {np.median(n):,.0f}"
    )
    print(f"  {'radius':>8}{'sequential %':>14}{'fixed-n %':>11}{'difference':>12}")
    for r, s, f in zip(RADII, sequential, fixed, strict=True):
        print(f"  {r:>8}{s:>14.2f}{f:>11.2f}{s - f:>12.2f}")


def synthetic(images: int, pooled_images: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    test = SequentialTest(N_MAX, ALPHA, SIGMA, RADII)
    print(
        f"sigma={SIGMA} alpha={ALPHA} n0={N0} n_max={N_MAX:,} radii={RADII}; "
        f"{len(test.looks)} looks at alpha/{ALPHA / test.alpha_look:.0f}: {test.looks}"
    )
    p_label = label_probabilities(images, rng)
    c_hat, n, lower, fixed = simulate(p_label, test, rng)
    print_comparison("synthetic, binomial draws", n, c_hat, lower, fixed, N_MAX)
    for name, part in (
        ("near 1", p_label > 1 - 1e-4),
        ("across", (p_label >= 0.5) & (p_label <= 1 - 1e-4)),
        ("below 1/2", p_label < 0.5),
    ):
        print(f"  {name}: {part.mean():.0%} of images, mean samples {n[part].mean():,.0f}")

    # the same through certify_many
    p_label = p_label[:pooled_images]
    smooth = Smooth(Threshold(), 2, SIGMA)
    items = (
        (i, torch.tensor([0.5 - SIGMA * norm.ppf(p)]), torch.Generator().manual_seed(seed + i))
        for i, p in enumerate(p_label)
    )
    start = time.perf_counter()
    certs = dict(certify_many(smooth, items, N0, N_MAX, ALPHA, 10_000, RADII))
    seconds = time.perf_counter() - start
    certs = [certs[i] for i in range(len(p_label))]
    n = np.array([c.n for c in certs])
    c_hat = np.array([c.c_hat for c in certs])
    lower = np.array([c.p_a_lower for c in certs])
    _, n_simulated, _, fixed = simulate(p_label, test, rng)
    print_comparison(f"synthetic, certify_many ({seconds:.1f} s)", n, c_hat, lower, fixed, N_MAX)
    print(f"  (binomial draws on the same images: mean samples {n_simulated.mean():,.0f})")


def compare_on_model(
    smooth: Smooth,
    dataset,
    n0: int,
    n_max: int,
    alpha: float,
    batch_size: int,
    radii=RADII,
    seed: int = 0,
) -> None:
    """Sequential (pooled) against fixed-n CERTIFY of ``smooth`` on ``dataset`` (a sequence of
    (image, label) pairs, images on the model's device): prints estimation samples per image,
    certified accuracy at each radius, the time of both, and noisy samples/s of both paths against
    the bare forward pass in full batches of ``batch_size`` noisy inputs (the fastest of three
    timings)."""
    device = dataset[0][0].device
    labels = np.array([int(label) for _, label in dataset])

    def generator(i: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed + i)

    start = time.perf_counter()
    items = ((i, image, generator(i)) for i, (image, _) in enumerate(dataset))
    pooled = dict(certify_many(smooth, items, n0, n_max, alpha, batch_size, radii))
    pooled_seconds = time.perf_counter() - start
    pooled = [pooled[i] for i in range(len(dataset))]
    start = time.perf_counter()
    fixed = [
        smooth.certify_detailed(image, n0, n_max, alpha, batch_size, generator(i))
        for i, (image, _) in enumerate(dataset)
    ]
    fixed_seconds = time.perf_counter() - start

    n = np.array([c.n for c in pooled])
    pooled_samples, fixed_samples = len(dataset) * n0 + n.sum(), len(dataset) * (n0 + n_max)
    image = dataset[0][0]
    batch = image + smooth.sigma * torch.randn(batch_size, *image.shape, device=device)
    batches = -(-pooled_samples // batch_size)
    bare = 0.0
    for _ in range(3):
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(batches):
                smooth.model(batch).argmax(1)
        bare = max(bare, batches * batch_size / (time.perf_counter() - start))

    def accuracy(certs):
        return [
            100
            * np.mean(
                [c.prediction == y and c.radius >= r for c, y in zip(certs, labels, strict=True)]
            )
            for r in radii
        ]

    print(
        f"{len(dataset)} images, n0={n0} n_max={n_max:,} alpha={alpha} batch={batch_size}: "
        f"estimation samples per image mean {n.mean():,.0f} (n_max / mean = "
        f"{n_max / n.mean():.1f}), median {np.median(n):,.0f}"
    )
    print(f"  {'radius':>8}{'sequential %':>14}{'fixed-n %':>11}{'difference':>12}")
    for r, a, b in zip(radii, accuracy(pooled), accuracy(fixed), strict=True):
        print(f"  {r:>8}{a:>14.2f}{b:>11.2f}{a - b:>12.2f}")
    pooled_rate, fixed_rate = pooled_samples / pooled_seconds, fixed_samples / fixed_seconds
    print(
        f"  time: sequential {pooled_seconds:.1f} s, fixed-n {fixed_seconds:.1f} s; samples/s: "
        f"pooled sequential {pooled_rate:,.0f}, fixed-n {fixed_rate:,.0f}, bare forward "
        f"{bare:,.0f} (best of 3); pooled / bare {pooled_rate / bare:.2f}, pooled / fixed-n "
        f"{pooled_rate / fixed_rate:.2f}"
    )


def digits(project: Path, n_max: int, skip: int, batch_size: int) -> None:
    """``compare_on_model`` on the embedded default's finetuned models and digits test set, after
    ``kedro run`` in ``project``; the radii are the report's (conf/base)."""
    spec = json.loads((project / "data/05_model_input/dataset_spec.json").read_text())
    test_split = safe_torch_load(project / "data/05_model_input/test.pt")
    images = SplitDataset(test_split, build_transform(spec, train=False))
    dataset = [images[i] for i in range(0, len(images), skip)]
    report = yaml.safe_load((project / "conf/base/parameters_report.yml").read_text())["report"]
    for path in sorted((project / "data/06_models/finetune").glob("sigma_*.pt")):
        checkpoint = safe_torch_load(path)
        model = load_classifier(
            checkpoint, path.name, num_classes=spec["num_classes"], in_chans=spec["channels"]
        )
        print(f"-- {path.stem}")
        smooth = Smooth(model.eval(), spec["num_classes"], float(checkpoint["sigma"]))
        compare_on_model(smooth, dataset, N0, n_max, ALPHA, batch_size, report["radii"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--pooled-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-synthetic", action="store_true", help="skip part 1")
    parser.add_argument("--model", choices=["tiny_cnn", "small_vit"], default="tiny_cnn")
    parser.add_argument("--model-images", type=int, default=60)
    parser.add_argument("--model-n-max", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=400)
    parser.add_argument(
        "--digits", type=Path, metavar="PROJECT", help="only the digits comparison, on a project "
        "where `kedro run` has run (its data/05_model_input and data/06_models/finetune)",
    )  # fmt: skip
    parser.add_argument("--digits-n-max", type=int, default=10_000)
    parser.add_argument("--digits-skip", type=int, default=1, help="every skip-th test image")
    args = parser.parse_args()
    if args.digits:
        print("== 3. the embedded default's finetuned models on the digits test set ==")
        digits(args.digits, args.digits_n_max, args.digits_skip, args.batch_size)
        return
    if not args.no_synthetic:
        print("== 1. synthetic base classifier ==")
        synthetic(args.images, args.pooled_images, args.seed)
    print(f"== 2. untrained {args.model} on random 3x32x32 images (throughput only) ==")
    torch.manual_seed(args.seed)
    dataset = [(torch.rand(3, 32, 32), i % 10) for i in range(args.model_images)]
    model = {"tiny_cnn": tiny_cnn, "small_vit": small_vit}[args.model](10)
    smooth = Smooth(model.eval(), 10, SIGMA)
    compare_on_model(smooth, dataset, N0, args.model_n_max, ALPHA, args.batch_size, seed=args.seed)


if __name__ == "__main__":
    main()
