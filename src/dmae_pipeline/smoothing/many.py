"""Sequential CERTIFY of many inputs at once: their noisy samples share full forward batches, and
each input leaves as soon as its certificate is settled."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from dmae_pipeline.smoothing.bounds import check_positive_int
from dmae_pipeline.smoothing.core import Certificate, NoisyStream, Smooth
from dmae_pipeline.smoothing.sequential import SequentialTest


class SequentialItem(NamedTuple):
    """One input of ``certify_many``: any ``(key, x, generator)`` or ``(key, x, generator, label)``
    tuple is read as one."""

    key: Hashable
    x: torch.Tensor
    generator: torch.Generator
    label: int | None = None


class _Task:
    """One input's sequential CERTIFY, from its first noisy sample to its certificate."""

    def __init__(self, item: SequentialItem, samples: NoisyStream, counts: torch.Tensor):
        self.key, self.label, self.samples, self.counts = item.key, item.label, samples, counts
        self.c_hat: int | None = None  # None during selection
        self.look = -1  # the index in test.looks of the look estimation is heading for


def certify_many(
    smooth: Smooth,
    items: Iterable[SequentialItem | tuple],
    n0: int,
    n_max: int,
    alpha: float,
    batch_size: int,
    radii: Sequence[float],
) -> Iterator[tuple[Hashable, Certificate]]:
    """``smooth.certify_sequential`` for many inputs, their noisy samples sharing full forward
    batches.

    Inputs are taken from ``items`` as needed to fill each batch of ``batch_size`` samples and
    leave as soon as their certificate is settled; each draws from its own generator in its own
    noise layout, so each certificate equals ``smooth.certify_sequential(x, n0, n_max, alpha,
    batch_size, radii, generator, label=label)`` on a generator in the same state, whatever
    ``batch_size`` and the other inputs. The host waits for the device once per batch in which
    some input reaches a look.

    :param items: ``(key, x, generator)`` or ``(key, x, generator, label)`` tuples: a key to
                  name the input, the input (all of one shape), its own generator on x's device,
                  and an optional label (see ``Smooth.certify_sequential``)
    :return: an iterator of (key, certificate) pairs, in the order the inputs finish
    """
    check_positive_int("n0", n0)
    check_positive_int("batch_size", batch_size)
    test = SequentialTest(n_max, alpha, smooth.sigma, radii)

    def prepared() -> Iterator[SequentialItem]:
        for item in items:
            item = SequentialItem(*item)
            if item.generator is None:
                raise ValueError(f"input {item.key!r} needs its own generator, got None")
            x, generator = smooth._prepare(item.x, batch_size, item.generator)
            yield item._replace(x=x, generator=generator)

    return _certify(smooth, prepared(), n0, batch_size, test)


def _certify(
    smooth: Smooth, items: Iterator[SequentialItem], n0: int, batch_size: int, test: SequentialTest
) -> Iterator[tuple[Hashable, Certificate]]:
    """``certify_many`` on checked arguments and prepared items."""
    smooth.model.eval()
    tasks: list[_Task] = []
    batch = ones = None
    with torch.inference_mode():
        while True:
            # take inputs until the samples they have pending fill a batch
            while sum(task.samples.pending for task in tasks) < batch_size:
                item = next(items, None)
                if item is None:
                    break
                if batch is None:
                    batch = item.x.new_empty((batch_size, *item.x.shape))
                    ones = torch.ones(batch_size, dtype=torch.int64, device=item.x.device)
                tasks.append(_start(smooth, item, n0, tasks, batch))
            if not tasks:
                return
            filled, spans = 0, []
            for task in tasks:
                if filled == batch_size:
                    break
                taken = task.samples.fill(batch[filled:])
                spans.append((task, filled, filled + taken))
                filled += taken
            predictions = smooth._classify(batch[:filled])
            for task, start, stop in spans:
                task.counts.scatter_add_(0, predictions[start:stop], ones[start:stop])
            segment_done = [task for task, _, _ in spans if not task.samples.pending]
            if segment_done:
                for task, certificate in _after_segment(smooth, segment_done, test):
                    tasks.remove(task)
                    yield task.key, certificate


def _start(
    smooth: Smooth, item: SequentialItem, n0: int, tasks: list[_Task], batch: torch.Tensor
) -> _Task:
    """An input's task, starting with its selection segment."""
    if item.x.shape != batch.shape[1:] or item.x.device != batch.device:
        raise ValueError(
            f"input {item.key!r} is {tuple(item.x.shape)} on {item.x.device}, but the first "
            f"input was {tuple(batch.shape[1:])} on {batch.device}"
        )
    if any(task.samples.generator is item.generator for task in tasks):
        raise ValueError(f"input {item.key!r} shares its generator with an input in progress")
    samples = NoisyStream(item.x, smooth.sigma, item.generator, n0)
    counts = torch.zeros(smooth.num_classes, dtype=torch.int64, device=item.x.device)
    return _Task(item, samples, counts)


def _after_segment(
    smooth: Smooth, tasks: list[_Task], test: SequentialTest
) -> Iterator[tuple[_Task, Certificate]]:
    """What comes next for tasks whose segment is all counted: after selection, c_hat (or, when it
    misses the label, the end); after a look, the certificate once the test has settled it; else
    the next segment. Yields the tasks that finish, with their certificate."""
    counts = torch.stack([task.counts for task in tasks]).cpu().numpy()
    estimating = [i for i, task in enumerate(tasks) if task.c_hat is not None]
    n_a = np.array([counts[i, tasks[i].c_hat] for i in estimating], dtype=np.int64)
    n = np.array([test.looks[tasks[i].look] for i in estimating], dtype=np.int64)
    settled = dict(zip(estimating, np.atleast_1d(test.settled(n_a, n)), strict=True))
    bounds = dict(zip(estimating, np.atleast_1d(test.lower(n_a, n)), strict=True))
    for i, task in enumerate(tasks):
        if task.c_hat is None:  # selection is done
            task.c_hat = int(counts[i].argmax())
            if task.label is not None and task.c_hat != int(task.label):
                yield task, Certificate(Smooth.ABSTAIN, 0.0, task.c_hat, 0, 0, 0.0)
                continue
            task.counts.zero_()
        elif settled[i]:
            look = test.looks[task.look]
            n_a_look = int(counts[i, task.c_hat])
            yield task, smooth._certificate(task.c_hat, n_a_look, look, float(bounds[i]))
            continue
        task.look += 1
        drawn = test.looks[task.look - 1] if task.look else 0
        task.samples.start(test.looks[task.look] - drawn)
