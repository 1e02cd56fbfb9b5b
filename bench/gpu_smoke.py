"""A smoke run of the whole method on one device, without Kedro or MLflow: DMAE pretraining (with a
checkpoint and a resume), finetuning with noise and consistency regularization, then fixed-n and
sequential CERTIFY of a few images, through the library code the pipelines call.

Sizes are the test env's (a 16x16 one-channel image, the pico DMAE); the images are synthetic and
learnable (the class is the position of a bright square), so the finetuned classifier must beat
chance and certify some images. On CUDA it runs in bf16 autocast (noise stays float32). It prints
what each step did and fails loudly if a step does not do what it should.

    python bench/gpu_smoke.py [--device cuda] [--epochs 3]

Needs torch, timm, numpy, scipy and tqdm only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dmae_pipeline.models import build_classifier, build_dmae, encoder_config, load_init, seeded
from dmae_pipeline.smoothing import Smooth, certify_many
from dmae_pipeline.training import (
    TrainConfig,
    accuracy_evaluator,
    fit,
    load_checkpoint,
    noisy_classification_loss,
    param_groups,
    resolve_device,
)

SIZE, CLASSES = 16, 4
SHAPE = {"img_size": SIZE, "patch_size": 4, "in_chans": 1, "mean": [0.2], "std": [0.35]}
LOSS = {"sigma": 0.25, "num_classes": CLASSES, "m": 2, "lam": 2.0, "eta": 0.5,
        "label_smoothing": 0.1}  # fmt: skip


class Squares(Dataset):
    """Dark 16x16 images with a bright 6x6 square in one of four corners: the class."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, CLASSES, (n,), generator=g)
        self.images = 0.1 * torch.rand(n, 1, SIZE, SIZE, generator=g)
        for i, label in enumerate(self.labels.tolist()):
            top, left = divmod(label, 2)
            self.images[i, :, top * 10 : top * 10 + 6, left * 10 : left * 10 + 6] += 0.8

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def dmae_loss(model, batch, generator):
    return model(batch[0], generator=generator)[0]


class Crash(RuntimeError):
    """Stands for a killed run."""


def crashing_after(calls: int):
    """``dmae_loss`` that stops the run at its ``calls + 1``-th call."""
    done = iter(range(calls))

    def loss_fn(model, batch, generator):
        if next(done, None) is None:
            raise Crash
        return dmae_loss(model, batch, generator)

    return loss_fn


def stage(name: str, started: float) -> None:
    print(f"{name:<44s} {time.perf_counter() - started:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}")
    train, val, test = Squares(512, 0), Squares(128, 1), Squares(8, 2)
    cfg = TrainConfig(
        epochs=args.epochs, warmup_epochs=1, blr=1e-2, min_lr=0.0, batch_size=64,
        weight_decay=0.05, betas=(0.9, 0.95), seed=0, checkpoint_every=1, device=str(device),
    )  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        started = time.perf_counter()
        dmae = seeded(build_dmae, 0, preset="pico", **SHAPE)
        steps = len(train) // cfg.batch_size
        with contextlib.suppress(Crash):  # killed during epoch 2: last.pt holds epoch 1
            fit(dmae, train, loss_fn=crashing_after(steps + 2), cfg=cfg, run_dir=run / "pretrain")
        first = load_checkpoint(run / "pretrain/last.pt")["history"]
        assert [r["epoch"] for r in first] == [1]
        dmae = seeded(build_dmae, 0, preset="pico", **SHAPE)
        resumed = fit(dmae, train, loss_fn=dmae_loss, cfg=cfg, run_dir=run / "pretrain")
        losses = [r["train_loss"] for r in resumed["history"]]
        assert resumed["history"][0] == first[0], "the resumed run must keep epoch 1's record"
        assert losses[-1] < losses[0], f"pretraining did not learn: {losses}"
        stage(f"pretrain + resume: loss {losses[0]:.3f} -> {losses[-1]:.3f}", started)

        started = time.perf_counter()
        classifier = seeded(build_classifier, 0, num_classes=CLASSES, **encoder_config(dmae.config))
        load_init(classifier, dmae.state_dict(), new_keys=("head.", "fc_norm."))
        sigma = LOSS["sigma"]
        best = fit(
            classifier,
            train,
            loss_fn=noisy_classification_loss(**LOSS),
            cfg=dataclasses.replace(cfg, epochs=2 * args.epochs, blr=5e-3, betas=(0.9, 0.999)),
            run_dir=run / "finetune",
            param_groups=param_groups(classifier, 0.05, layer_decay=0.65),
            evaluate=accuracy_evaluator(val, sigma=sigma, batch_size=128, seed=0, prefix="val_"),
            select_metric="val_noisy_acc",
        )["best"]
        assert best["val_noisy_acc"] > 2 / CLASSES, f"finetuning did not learn: {best}"
        stage(f"finetune: noisy val accuracy {best['val_noisy_acc']:.3f}", started)

        started = time.perf_counter()
        autocast = torch.bfloat16 if device.type == "cuda" else None
        smooth = Smooth(classifier.eval(), CLASSES, sigma, seed=0, autocast_dtype=autocast)
        images = [(i, x.to(device), torch.Generator(device).manual_seed(i)) for i, (x, _) in
                  enumerate(test)]  # fmt: skip
        fixed = [smooth.certify_detailed(x, 100, 2_000, 0.001, 500, g) for _, x, g in images]
        images = [(i, x, torch.Generator(device).manual_seed(i)) for i, x, _ in images]
        sequential = dict(certify_many(smooth, images, 100, 20_000, 0.001, 500, [0.25, 0.5]))
        correct = [c.prediction == int(test[i][1]) for i, c in enumerate(fixed)]
        assert any(correct), "no test image was certified correctly"
        drawn = [sequential[i].n for i in range(len(test))]
        stage(f"certify: {sum(correct)}/{len(test)} certified correctly (fixed n)", started)
        print(f"  radii (fixed n = 2,000)  {[round(c.radius, 3) for c in fixed]}")
        print(f"  radii (sequential)       {[round(sequential[i].radius, 3) for i in range(8)]}")
        print(f"  samples (sequential)     {drawn}")


if __name__ == "__main__":
    main()
