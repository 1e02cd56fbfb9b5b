"""Training throughput: images/s of one DMAE pretraining step and one finetuning step.

A step is forward, backward and AdamW update on random [0,1] images at the native resolution
(the model resizes to its own). Finetuning counts the m noisy copies of consistency
regularization as m images each. Prints the median of ``--steps`` timed steps after warm-up.

    python bench/bench_train.py [--preset tiny] [--img-size 224] [--native 224] [--batch 32]
                                [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dmae_pipeline.models import build_classifier, build_dmae
from dmae_pipeline.training import consistency_loss


def time_steps(step, steps: int, device: str) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--native", type=int, default=224, help="resolution of the input images")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device == "cuda" else None
    size = {"img_size": args.img_size, "patch_size": args.patch_size}
    imgs = torch.rand(args.batch, 3, args.native, args.native, device=args.device)
    labels = torch.randint(0, 10, (args.batch,), device=args.device)
    gen = torch.Generator(args.device).manual_seed(0)

    dmae = build_dmae(args.preset, **size).to(args.device)
    classifier = build_classifier(args.preset, 10, **size).to(args.device)
    dmae_opt = torch.optim.AdamW(dmae.parameters())
    classifier_opt = torch.optim.AdamW(classifier.parameters())

    def pretrain_step():
        with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
            loss = dmae(imgs, generator=gen)[0]
        loss.backward()
        dmae_opt.step()
        dmae_opt.zero_grad(set_to_none=True)

    def finetune_step(m=2):
        copies = imgs.repeat(m, 1, 1, 1)
        noisy = copies + 0.25 * torch.randn(copies.shape, generator=gen, device=args.device)
        with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
            logits = classifier(noisy)
        loss = consistency_loss(logits.float(), labels, m=m, lam=2.0, eta=0.5)
        loss.backward()
        classifier_opt.step()
        classifier_opt.zero_grad(set_to_none=True)

    print(f"{args.preset} at {args.img_size} (native {args.native}), batch {args.batch}, "
          f"{args.device}, threads {args.threads}")  # fmt: skip
    for name, step, images in (
        ("pretrain (DMAE, mask 0.75)", pretrain_step, args.batch),
        ("finetune (consistency, m=2)", finetune_step, 2 * args.batch),
    ):
        seconds = time_steps(step, args.steps, args.device)
        print(f"  {name:30s} {images / seconds:10.1f} images/s  ({seconds * 1e3:.0f} ms/step)")


if __name__ == "__main__":
    main()
