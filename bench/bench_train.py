"""Training throughput through the engine: images/s and peak memory of ``fit`` itself.

Runs ``dmae_pipeline.training.fit`` for 2 epochs of ``--steps`` optimizer steps on synthetic
uint8 images held in memory (converted to [0,1] floats on the device), and prints the second
epoch's images/s (the first one pays for warm-up and compilation) and the peak memory: CUDA's
max_memory_allocated on a GPU, the process's peak RSS on the CPU (with the libraries' and the
data's share, printed apart). A step is the engine's: the
loader, forward and backward under autocast, the gradient check and the fused AdamW update.

    pretrain: the DMAE loss (mask 0.75, sigma 0.25) on ``--batch`` images per micro-batch.
    finetune: the classifier under noise with consistency regularization (m = 2 copies per
              image, each counted as an image).

    python bench/bench_train.py [--stage pretrain|finetune] [--preset base] [--img-size 224]
        [--patch-size 16] [--batch 128] [--accum 1] [--steps 20] [--device auto] [--amp auto]
        [--compile] [--workers 0] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import tempfile

import torch
from torch.utils.data import Dataset

from dmae_pipeline.models import build_classifier, build_dmae
from dmae_pipeline.training import TrainConfig, fit, noisy_classification_loss, resolve_device

POOL = 256  # distinct synthetic images


class SyntheticImages(Dataset):
    """``n`` uint8 images (a pool of POOL random ones, repeated) with random labels."""

    def __init__(self, n: int, size: int, classes: int = 10):
        g = torch.Generator().manual_seed(0)
        self.n = n
        self.images = torch.randint(0, 256, (POOL, 3, size, size), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, classes, (POOL,), generator=g)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.images[i % POOL], self.labels[i % POOL]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def to_unit(batch: tuple) -> tuple:
    return batch[0].float().div_(255), batch[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("pretrain", "finetune"), default="pretrain")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per epoch")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    size = {"img_size": args.img_size, "patch_size": args.patch_size}
    if args.stage == "pretrain":
        model = build_dmae(args.preset, **size)

        def loss_fn(model, batch, generator):
            return model(to_unit(batch)[0], generator=generator)[0]

        copies = 1
    else:
        model = build_classifier(args.preset, 10, **size)
        consistency = noisy_classification_loss(sigma=0.25, num_classes=10, m=2, lam=2.0, eta=0.5)

        def loss_fn(model, batch, generator):
            return consistency(model, to_unit(batch), generator)

        copies = 2
    cfg = TrainConfig(
        epochs=2, warmup_epochs=0.5, blr=1.5e-4, min_lr=0.0, batch_size=args.batch,
        weight_decay=0.05, betas=(0.9, 0.95), seed=0, checkpoint_every=2,
        accum_iter=args.accum, num_workers=args.workers, num_threads=args.threads,
        device=args.device, amp=args.amp, compile=args.compile,
    )  # fmt: skip
    data = SyntheticImages(args.batch * args.accum * args.steps, args.img_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_rss_gib()
    with tempfile.TemporaryDirectory() as run_dir:
        history = fit(model, data, loss_fn=loss_fn, cfg=cfg, run_dir=run_dir)["history"]
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated on the GPU"
    else:
        peak = f"{peak_rss_gib():.2f} GiB peak RSS ({rss_before:.2f} GiB before training)"
    print(
        f"{args.stage}: {args.preset} at {args.img_size} (patch {args.patch_size}), micro-batch "
        f"{args.batch} x {args.accum}, {device}, amp {args.amp}, compile {args.compile}, "
        f"workers {args.workers}, threads {torch.get_num_threads()}"
    )
    print(f"  {copies * history[-1]['images_per_s']:10.1f} images/s   {peak}")


if __name__ == "__main__":
    main()
