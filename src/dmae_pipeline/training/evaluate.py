"""Clean and Gaussian-noise accuracy of a classifier: the finetuning model-selection metric.

Noise is N(0, sigma^2) per pixel, drawn in float32 from a generator seeded afresh on every call,
and added to the [0, 1] images at the resolution the loader yields (the model resizes and
normalizes inside), as certification does. Every call therefore scores the same noisy images, so
epochs are compared on equal terms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def noisy_accuracy(
    model: nn.Module, loader: DataLoader, sigma: float, seed: int
) -> dict[str, float]:
    """``{"clean_acc", "noisy_acc"}`` of ``model`` over ``loader``'s ``(images, labels)``.

    Runs in eval mode (the model's mode is restored afterwards) on the device of its parameters;
    counts stay on the device until the end.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    correct = torch.zeros(2, dtype=torch.int64, device=device)
    total = 0
    was_training = model.training
    model.eval()
    try:
        for images, labels in loader:
            images = images.to(device, torch.float32, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            noise = torch.randn(images.shape, generator=generator, device=device)
            correct[0] += (model(images).argmax(-1) == labels).sum()
            correct[1] += (model(images + sigma * noise).argmax(-1) == labels).sum()
            total += len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("noisy_accuracy: the loader yielded no images")
    clean, noisy = (count / total for count in correct.tolist())
    return {"clean_acc": clean, "noisy_acc": noisy}


def accuracy_evaluator(
    dataset: Dataset,
    *,
    sigma: float,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    prefix: str = "",
) -> Callable[[nn.Module], dict[str, float]]:
    """An ``evaluate(model)`` for the training engine: :func:`noisy_accuracy` on ``dataset``,
    in its order, with the same noise at every call; metric names get ``prefix`` (e.g. "val_")."""
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma >= 0:
        raise ValueError(f"sigma: expected a number >= 0, got {sigma!r}")
    for name, value, minimum in (
        ("batch_size", batch_size, 1),
        ("seed", seed, 0),
        ("num_workers", num_workers, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if len(dataset) == 0:
        raise ValueError("accuracy_evaluator: the evaluation dataset is empty")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)

    def evaluate(model: nn.Module) -> dict[str, float]:
        metrics = noisy_accuracy(model, loader, float(sigma), seed)
        return {f"{prefix}{name}": value for name, value in metrics.items()}

    return evaluate
