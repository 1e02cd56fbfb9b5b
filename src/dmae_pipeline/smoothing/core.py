"""The smoothed classifier of Cohen et al. (2019), and the stream of noisy samples it counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from scipy.stats import binomtest, norm

from dmae_pipeline.smoothing.bounds import check_alpha, check_positive_int, lower_confidence_bound
from dmae_pipeline.smoothing.sequential import SequentialTest

NOISE_LAYOUT = "chunked-v2"
"""Names the noise layout (see ``NoisyStream``), so that a log's fingerprint changes with it."""

NOISE_CHUNK_ELEMENTS = 2**22
"""Noise values drawn per generator call, rounded down to whole samples (at least one)."""


@dataclass(frozen=True)
class Certificate:
    """What CERTIFY found for one input: ``prediction``, the certified class or ``Smooth.ABSTAIN``;
    ``radius``, the certified L2 radius (0.0 on abstention); ``c_hat``, the class guessed from the
    selection samples; ``n_a``, how many of the ``n`` estimation samples ``c_hat`` received;
    ``p_a_lower``, the lower confidence bound on its probability under noise. The last three are 0
    where sequential CERTIFY stopped at selection."""

    prediction: int
    radius: float
    c_hat: int
    n_a: int
    n: int
    p_a_lower: float


class NoisyStream:
    """x + sigma * eps for one input, in the noise layout (``NOISE_LAYOUT``): an input's noisy
    samples come in segments (PREDICT's n; CERTIFY's n0, then n; sequential CERTIFY's n0, then the
    samples between its looks), each drawn from the generator, on x's device, in calls
    ``buffer.normal_(0, sigma)`` of ``max(1, NOISE_CHUNK_ELEMENTS // x.numel())`` samples (the last
    one partial) into a reused buffer, and handed out in drawing order as x + noise (float32,
    outside autocast). So the samples, and the counts of a model that reads each sample apart from
    its batch, never depend on ``batch_size`` or on which inputs share a forward batch (up to
    floating-point kernels that differ by batch shape). The first segment has ``num`` samples."""

    def __init__(self, x: torch.Tensor, sigma: float, generator: torch.Generator, num: int):
        self.x, self.sigma, self.generator = x, sigma, generator
        self.chunk = max(1, NOISE_CHUNK_ELEMENTS // x.numel())
        self.buffer = self.ready = x.new_empty((0, *x.shape))  # ready: drawn, not handed out
        self.undrawn = num  # samples of the segment not yet drawn

    def start(self, num: int) -> None:
        """Begin a segment of ``num`` samples (the previous one must be used up)."""
        self.undrawn = num

    @property
    def pending(self) -> int:
        """Samples of the segment not yet handed out."""
        return len(self.ready) + self.undrawn

    def fill(self, out: torch.Tensor) -> int:
        """Write the segment's next noisy samples into ``out``; return how many were written."""
        filled = 0
        while filled < len(out) and self.pending:
            if not len(self.ready):
                size = min(self.chunk, self.undrawn)
                if len(self.buffer) < size:
                    self.buffer = self.x.new_empty((size, *self.x.shape))
                self.ready = self.buffer[:size].normal_(0.0, self.sigma, generator=self.generator)
                self.undrawn -= size
            take = min(len(self.ready), len(out) - filled)
            # elementwise exact, so a sample's value never depends on its place in the batch
            torch.add(self.x, self.ready[:take], out=out[filled : filled + take])
            self.ready = self.ready[take:]
            filled += take
        return filled


class Smooth:
    """A smoothed classifier g(x) = argmax_c P(f(x + eps) = c), eps ~ N(0, sigma^2 I)."""

    # to abstain, Smooth returns this int
    ABSTAIN = -1

    def __init__(
        self,
        model: torch.nn.Module,
        num_classes: int,
        sigma: float,
        seed: int | None = None,
        *,
        autocast_dtype: torch.dtype | None = None,
    ):
        """
        :param model: the base classifier f: float32 [0, 1] images [batch x C x H x W] to logits
        :param num_classes: the number of classes (at least 2)
        :param sigma: the noise level hyperparameter, in [0, 1] pixel units
        :param seed: seeds the generator of calls that pass none; None: a nondeterministic seed
        :param autocast_dtype: run the model under ``torch.autocast`` in this dtype (the noise
                               and x + noise stay float32); None: off
        """
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        if check_positive_int("num_classes", num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.model, self.num_classes, self.sigma = model, int(num_classes), float(sigma)
        self.seed, self.autocast_dtype = seed, autocast_dtype
        self._generators: dict[torch.device, torch.Generator] = {}

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, generator=None
    ) -> tuple[int, float]:
        """Monte Carlo algorithm for certifying that g's prediction around x is constant within some
        L2 radius. With probability at least 1 - alpha, the class returned by this method will equal
        g(x), and g's prediction will be robust within an L2 ball of radius R around x.

        :param x: the input [channel x height x width], pixels in [0, 1]
        :param n0: the number of Monte Carlo samples to use for selection
        :param n: the number of Monte Carlo samples to use for estimation
        :param alpha: the failure probability
        :param batch_size: batch size to use when evaluating the base classifier
        :param generator: the noise source, a torch.Generator on x's device; None: the Smooth's own
        :return: (predicted class, certified radius);
                 in the case of abstention, the class will be ABSTAIN and the radius 0.
        """
        certificate = self.certify_detailed(x, n0, n, alpha, batch_size, generator)
        return certificate.prediction, certificate.radius

    def certify_detailed(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, generator=None
    ) -> Certificate:
        """``certify``, returning the whole ``Certificate``; the host waits for the device once."""
        n0, n, alpha = check_positive_int("n0", n0), check_positive_int("n", n), check_alpha(alpha)
        x, generator = self._prepare(x, batch_size, generator)
        # draw samples of f(x + epsilon); use them to take a guess at the top class
        c_hat = self._sample_counts(x, n0, batch_size, generator).argmax()
        # draw more samples of f(x + epsilon) to estimate a lower bound on pA
        counts = self._sample_counts(x, n, batch_size, generator)
        c_hat, n_a = torch.stack((c_hat, counts[c_hat])).tolist()
        return self._certificate(c_hat, n_a, n, lower_confidence_bound(n_a, n, alpha))

    def certify_sequential(
        self,
        x: torch.Tensor,
        n0: int,
        n_max: int,
        alpha: float,
        batch_size: int,
        radii: Sequence[float],
        generator: torch.Generator | None = None,
        *,
        label: int | None = None,
    ) -> Certificate:
        """``certify`` with sequential estimation: draw samples up to each look of
        ``SequentialTest(n_max, alpha, sigma, radii)`` in turn until the certificate at every
        radius is settled. With probability at least 1 - alpha, the class returned will equal g(x),
        and g's prediction will be robust within the radius returned, whatever the look.

        :param n_max: the most Monte Carlo samples to use for estimation
        :param radii: the radii whose certificates decide when to stop (non-negative)
        :param label: if given, stop at selection when c_hat is not ``label`` (then n = 0)
        :return: the certificate, whose ``n`` counts the estimation samples drawn
        """
        n0 = check_positive_int("n0", n0)
        test = SequentialTest(n_max, alpha, self.sigma, radii)
        x, generator = self._prepare(x, batch_size, generator)
        c_hat = int(self._sample_counts(x, n0, batch_size, generator).argmax())
        if label is not None and c_hat != int(label):
            return Certificate(Smooth.ABSTAIN, 0.0, c_hat, 0, 0, 0.0)
        n_a = 0
        for drawn, look in pairwise((0, *test.looks)):  # to each look until settled
            n_a += int(self._sample_counts(x, look - drawn, batch_size, generator)[c_hat])
            if test.settled(n_a, look):
                break
        return self._certificate(c_hat, n_a, look, test.lower(n_a, look))

    def predict(
        self, x: torch.Tensor, n: int, alpha: float, batch_size: int, generator=None
    ) -> int:
        """Monte Carlo algorithm for evaluating the prediction of g at x. With probability at least
        1 - alpha, the class returned by this method will equal g(x).

        This function uses the hypothesis test described in https://arxiv.org/abs/1610.03944
        for identifying the top category of a multinomial distribution.

        :param x: the input [channel x height x width], pixels in [0, 1]
        :param n: the number of Monte Carlo samples to use
        :param alpha: the failure probability
        :param batch_size: batch size to use when evaluating the base classifier
        :param generator: the noise source, a torch.Generator on x's device; None: the Smooth's own
        :return: the predicted class, or ABSTAIN
        """
        n, alpha = check_positive_int("n", n), check_alpha(alpha)
        x, generator = self._prepare(x, batch_size, generator)
        counts = self._sample_counts(x, n, batch_size, generator).cpu().numpy()
        top2 = np.argsort(-counts, kind="stable")[:2]
        count1, count2 = int(counts[top2[0]]), int(counts[top2[1]])
        if binomtest(count1, count1 + count2, p=0.5).pvalue > alpha:
            return Smooth.ABSTAIN
        return int(top2[0])

    def _certificate(self, c_hat: int, n_a: int, n: int, p_a_lower: float) -> Certificate:
        if p_a_lower < 0.5:
            return Certificate(Smooth.ABSTAIN, 0.0, c_hat, n_a, n, p_a_lower)
        return Certificate(c_hat, self.sigma * float(norm.ppf(p_a_lower)), c_hat, n_a, n, p_a_lower)

    def _prepare(self, x: torch.Tensor, batch_size: int, generator) -> tuple[torch.Tensor, ...]:
        """Check the arguments shared by PREDICT and CERTIFY; x as contiguous float32; generator."""
        check_positive_int("batch_size", batch_size)
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor of [0, 1] pixels, got {type(x)}")
        x = x.to(torch.float32).contiguous()
        if generator is None:
            if x.device not in self._generators:
                generator = self._generators[x.device] = torch.Generator(device=x.device)
                generator.seed() if self.seed is None else generator.manual_seed(self.seed)
            generator = self._generators[x.device]
        elif generator.device != x.device:
            raise ValueError(f"generator is on {generator.device} but x is on {x.device}")
        return x, generator

    def _classify(self, noisy: torch.Tensor) -> torch.Tensor:
        """The base classifier's predictions on a batch of noisy samples (under autocast if set)."""
        on = self.autocast_dtype is not None
        with torch.autocast(noisy.device.type, self.autocast_dtype, enabled=on):
            logits = self.model(noisy)
        if logits.shape != (len(noisy), self.num_classes):
            raise ValueError(
                f"model must return logits of shape [batch, num_classes={self.num_classes}]"
                f", got {tuple(logits.shape)} for a batch of {len(noisy)}"
            )
        return logits.argmax(dim=1)

    def _sample_counts(self, x: torch.Tensor, num: int, batch_size: int, generator) -> torch.Tensor:
        """The base classifier's per-class counts (int64, on x's device) on ``num`` noisy samples
        of x (contiguous float32): one segment of the noise layout, drawn from ``generator``."""
        self.model.eval()
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=x.device)
        stream = NoisyStream(x, self.sigma, generator, num)
        batch = x.new_empty((min(batch_size, num), *x.shape))
        ones = torch.ones(len(batch), dtype=torch.int64, device=x.device)
        with torch.inference_mode():
            while filled := stream.fill(batch):
                predictions = self._classify(batch[:filled])
                # scatter_add_, unlike bincount, never waits for the device
                counts.scatter_add_(0, predictions, ones[:filled])
        return counts
