"""The smoothed classifier of Cohen et al. (2019): Monte Carlo PREDICT and CERTIFY, fixed-n and
sequential."""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy.stats import binomtest, norm

from dmae_pipeline.smoothing.bounds import check_alpha, lower_confidence_bound
from dmae_pipeline.smoothing.sequential import SequentialTest

NOISE_LAYOUT = "chunked-v2"
"""Names the order in which noise is drawn (see ``Smooth``); put it in a certification log's
fingerprint so a log is never resumed with noise drawn another way."""

NOISE_CHUNK_ELEMENTS = 2**22
"""Noise values drawn per generator call, rounded down to whole samples (at least one)."""


@dataclass(frozen=True)
class Certificate:
    """What CERTIFY found for one input.

    ``prediction`` is the certified class or ``Smooth.ABSTAIN``; ``radius`` the certified L2 radius
    (0.0 on abstention); ``c_hat`` the class guessed from the selection samples; ``n_a`` how many of
    the ``n`` estimation samples ``c_hat`` received; ``p_a_lower`` the lower confidence bound on its
    probability under noise. ``n`` is 0 (and ``n_a``, ``p_a_lower`` too) when sequential CERTIFY
    stopped at selection because ``c_hat`` is not the label; ``prediction`` is then ``ABSTAIN``.
    """

    prediction: int
    radius: float
    c_hat: int
    n_a: int
    n: int
    p_a_lower: float


class SequentialItem(NamedTuple):
    """One input of ``Smooth.certify_many``: any ``(key, x, generator)`` or
    ``(key, x, generator, label)`` tuple is read as one."""

    key: Hashable
    x: torch.Tensor
    generator: torch.Generator
    label: int | None = None


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class _NoisyStream:
    """x + sigma * eps for one input in the noise layout: one segment at a time, drawn in chunks
    into a reused buffer and handed out in drawing order."""

    def __init__(self, x: torch.Tensor, sigma: float, generator: torch.Generator):
        self.x, self.sigma, self.generator = x, sigma, generator
        self.chunk = max(1, NOISE_CHUNK_ELEMENTS // x.numel())
        self.buffer = x.new_empty((0, *x.shape))
        self.ready = self.buffer  # drawn, not yet handed out
        self.undrawn = 0  # samples of the segment not yet drawn

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


class _Flight:
    """One input of sequential CERTIFY between admission and its certificate."""

    def __init__(self, item: SequentialItem, stream: _NoisyStream, counts: torch.Tensor):
        self.key, self.label, self.stream, self.counts = item.key, item.label, stream, counts
        self.c_hat: int | None = None  # None during selection
        self.look = -1  # index of the look estimation is heading for


class Smooth:
    """A smoothed classifier g(x) = argmax_c P(f(x + eps) = c), eps ~ N(0, sigma^2 I).

    Noise layout (``NOISE_LAYOUT``): an input's noisy samples are drawn in segments: PREDICT's n;
    CERTIFY's n0 (selection), then n (estimation); sequential CERTIFY's n0, then the sample counts
    between its looks. A segment is drawn from the generator, on x's device, in calls
    ``buffer.normal_(0, sigma)`` of ``max(1, NOISE_CHUNK_ELEMENTS // x.numel())`` samples (the last
    one partial), and its samples x + noise (float32, outside autocast) are used in drawing order.
    So the samples depend on the generator's state, x's shape and the segments, never on
    ``batch_size`` or on which inputs share a forward batch; nor do the counts, for a model whose
    output for a sample does not depend on the rest of its batch (floating-point kernels may differ
    by batch shape).
    """

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
        :param model: the base classifier f; maps a float32 batch [batch x channel x height x width]
                      of [0, 1] pixel images to logits [batch x num_classes] (normalization is the
                      model's own first step)
        :param num_classes: the number of classes (at least 2)
        :param sigma: the noise level hyperparameter, in [0, 1] pixel units
        :param seed: seeds the generator used when a call passes none; None draws a
                     nondeterministic seed. Successive calls continue the same stream.
        :param autocast_dtype: run the model under ``torch.autocast`` with this dtype (e.g.
                               ``torch.bfloat16``); the noise and x + noise stay float32. None: off
        """
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        if _check_positive_int("num_classes", num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.model = model
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)
        self.seed = seed
        self.autocast_dtype = autocast_dtype
        self._generators: dict[torch.device, torch.Generator] = {}

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> tuple[int, float]:
        """Monte Carlo algorithm for certifying that g's prediction around x is constant within some
        L2 radius. With probability at least 1 - alpha, the class returned by this method will equal
        g(x), and g's prediction will be robust within an L2 ball of radius R around x.

        :param x: the input [channel x height x width], pixels in [0, 1]
        :param n0: the number of Monte Carlo samples to use for selection
        :param n: the number of Monte Carlo samples to use for estimation
        :param alpha: the failure probability
        :param batch_size: batch size to use when evaluating the base classifier
        :param generator: the noise source, on x's device; None: the Smooth's own seeded generator
        :return: (predicted class, certified radius);
                 in the case of abstention, the class will be ABSTAIN and the radius 0.
        """
        certificate = self.certify_detailed(x, n0, n, alpha, batch_size, generator)
        return certificate.prediction, certificate.radius

    def certify_detailed(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Certificate:
        """CERTIFY, as ``certify``, returning the counts and the bound as well (for logs).

        Both phases stay on the device; the host waits once, at the end.
        """
        n0 = _check_positive_int("n0", n0)
        n = _check_positive_int("n", n)
        alpha = check_alpha(alpha)
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
        """CERTIFY with sequential estimation: stop as soon as the certificate at every radius in
        ``radii`` is settled (see ``SequentialTest``), after at most ``n_max`` samples.

        Selection is CERTIFY's (n0 samples give c_hat). Estimation draws samples up to each of the
        test's looks in turn and stops at the first look where, for every r in radii, pA >=
        Phi(r / sigma) is proven, disproven or out of reach within n_max, or at n_max. The
        certificate uses the test's anytime-valid lower bound pA_lower at the look where it
        stopped: with probability at least 1 - alpha, the class returned equals g(x) and g is
        robust within the returned radius sigma * Phi^-1(pA_lower) (abstain if pA_lower < 1/2),
        whatever the look.

        :param x: the input [channel x height x width], pixels in [0, 1]
        :param n0: the number of Monte Carlo samples to use for selection
        :param n_max: the most Monte Carlo samples to use for estimation
        :param alpha: the failure probability
        :param batch_size: batch size to use when evaluating the base classifier
        :param radii: the radii whose certificates decide when to stop (non-negative)
        :param generator: the noise source, on x's device; None: the Smooth's own seeded generator
        :param label: if given, stop at selection when c_hat is not ``label``: the certificate
                      then has n = 0 and abstains
        :return: the certificate; its ``n`` is the number of estimation samples drawn
        """
        test = self._sequential_test(n0, n_max, alpha, batch_size, radii)
        x, generator = self._prepare(x, batch_size, generator)
        [(_, certificate)] = self._certify_many([(None, x, generator, label)], n0, batch_size, test)
        return certificate

    def certify_many(
        self,
        items: Iterable[SequentialItem | tuple],
        n0: int,
        n_max: int,
        alpha: float,
        batch_size: int,
        radii: Sequence[float],
    ) -> Iterator[tuple[Hashable, Certificate]]:
        """``certify_sequential`` for many inputs, their noisy samples sharing full forward batches.

        Inputs are taken from ``items`` as needed to fill each batch of ``batch_size`` samples and
        leave as soon as their certificate is settled; each draws from its own generator in its own
        noise layout, so each certificate equals ``certify_sequential(x, n0, n_max, alpha,
        batch_size, radii, generator, label=label)`` on a generator in the same state, whatever
        ``batch_size`` and the other inputs. The host waits for the device once per batch in which
        some input reaches a look.

        :param items: ``(key, x, generator)`` or ``(key, x, generator, label)`` tuples: a key to
                      name the input, the input (all of one shape), its own generator on x's
                      device, and an optional label (see ``certify_sequential``)
        :return: an iterator of (key, certificate) pairs, in the order the inputs finish
        """
        test = self._sequential_test(n0, n_max, alpha, batch_size, radii)

        def prepared() -> Iterator[SequentialItem]:
            for item in items:
                item = SequentialItem(*item)
                if item.generator is None:
                    raise ValueError(f"input {item.key!r} needs its own generator, got None")
                x, generator = self._prepare(item.x, batch_size, item.generator)
                yield item._replace(x=x, generator=generator)

        return self._certify_many(prepared(), n0, batch_size, test)

    def predict(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> int:
        """Monte Carlo algorithm for evaluating the prediction of g at x. With probability at least
        1 - alpha, the class returned by this method will equal g(x).

        This function uses the hypothesis test described in https://arxiv.org/abs/1610.03944
        for identifying the top category of a multinomial distribution.

        :param x: the input [channel x height x width], pixels in [0, 1]
        :param n: the number of Monte Carlo samples to use
        :param alpha: the failure probability
        :param batch_size: batch size to use when evaluating the base classifier
        :param generator: the noise source, on x's device; None: the Smooth's own seeded generator
        :return: the predicted class, or ABSTAIN
        """
        n = _check_positive_int("n", n)
        alpha = check_alpha(alpha)
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
        radius = self.sigma * float(norm.ppf(p_a_lower))
        return Certificate(c_hat, radius, c_hat, n_a, n, p_a_lower)

    def _prepare(
        self, x: torch.Tensor, batch_size: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Generator]:
        """Check the arguments shared by PREDICT and CERTIFY; x as contiguous float32 and the
        generator."""
        _check_positive_int("batch_size", batch_size)
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor of [0, 1] pixels, got {type(x)}")
        x = x.to(torch.float32).contiguous()
        if generator is None:
            generator = self._generators.get(x.device)
            if generator is None:
                generator = torch.Generator(device=x.device)
                if self.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(self.seed)
                self._generators[x.device] = generator
        elif generator.device != x.device:
            raise ValueError(f"generator is on {generator.device} but x is on {x.device}")
        return x, generator

    def _classify(self, noisy: torch.Tensor) -> torch.Tensor:
        """The base classifier's predictions on a batch of noisy samples (under autocast if set)."""
        autocast = (
            torch.autocast(device_type=noisy.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            logits = self.model(noisy)
        if logits.shape != (len(noisy), self.num_classes):
            raise ValueError(
                f"model must return logits of shape [batch, num_classes={self.num_classes}]"
                f", got {tuple(logits.shape)} for a batch of {len(noisy)}"
            )
        return logits.argmax(dim=1)

    def _sample_counts(
        self, x: torch.Tensor, num: int, batch_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Sample the base classifier's prediction under noisy corruptions of the input x.

        :param x: the input [channel x height x width], contiguous float32
        :param num: number of samples to collect (one segment of the noise layout)
        :param batch_size: batch size to use when evaluating the base classifier
        :param generator: the noise source, on x's device
        :return: an int64 tensor on x's device, of length num_classes, holding the per-class counts
        """
        self.model.eval()
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=x.device)
        stream = _NoisyStream(x, self.sigma, generator)
        stream.start(num)
        batch = x.new_empty((min(batch_size, num), *x.shape))
        ones = torch.ones(len(batch), dtype=torch.int64, device=x.device)
        with torch.inference_mode():
            while filled := stream.fill(batch):
                predictions = self._classify(batch[:filled])
                # scatter_add_, unlike bincount, never waits for the device
                counts.scatter_add_(0, predictions, ones[:filled])
        return counts

    def _sequential_test(
        self, n0: int, n_max: int, alpha: float, batch_size: int, radii: Sequence[float]
    ) -> SequentialTest:
        """Check the arguments of sequential CERTIFY; its test."""
        _check_positive_int("n0", n0)
        _check_positive_int("batch_size", batch_size)
        return SequentialTest(n_max, alpha, self.sigma, radii)

    def _certify_many(
        self, items: Iterable[tuple], n0: int, batch_size: int, test: SequentialTest
    ) -> Iterator[tuple[Hashable, Certificate]]:
        """``certify_many`` on checked arguments and prepared items (x contiguous float32, a
        generator each)."""
        self.model.eval()
        items = iter(items)
        flights: list[_Flight] = []
        batch = ones = None
        with torch.inference_mode():
            while True:
                while sum(flight.stream.pending for flight in flights) < batch_size:
                    item = next(items, None)
                    if item is None:
                        break
                    item = SequentialItem(*item)
                    flights.append(self._take_off(item, n0, flights, batch))
                    if batch is None:
                        batch = item.x.new_empty((batch_size, *item.x.shape))
                        ones = torch.ones(batch_size, dtype=torch.int64, device=item.x.device)
                if not flights:
                    return
                filled, spans = 0, []
                for flight in flights:
                    if filled == batch_size:
                        break
                    taken = flight.stream.fill(batch[filled:])
                    spans.append((flight, filled, filled + taken))
                    filled += taken
                predictions = self._classify(batch[:filled])
                for flight, start, stop in spans:
                    flight.counts.scatter_add_(0, predictions[start:stop], ones[start:stop])
                at_look = [flight for flight, _, _ in spans if not flight.stream.pending]
                if at_look:
                    for flight, certificate in self._look(at_look, test):
                        flights.remove(flight)
                        yield flight.key, certificate

    def _take_off(
        self, item: SequentialItem, n0: int, flights: list[_Flight], batch: torch.Tensor | None
    ) -> _Flight:
        """Start an input's selection segment."""
        if batch is not None and (item.x.shape != batch.shape[1:] or item.x.device != batch.device):
            raise ValueError(
                f"input {item.key!r} is {tuple(item.x.shape)} on {item.x.device}, but the first "
                f"input was {tuple(batch.shape[1:])} on {batch.device}"
            )
        if any(flight.stream.generator is item.generator for flight in flights):
            raise ValueError(f"input {item.key!r} shares its generator with an input in flight")
        stream = _NoisyStream(item.x, self.sigma, item.generator)
        stream.start(n0)
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=item.x.device)
        return _Flight(item, stream, counts)

    def _look(
        self, flights: list[_Flight], test: SequentialTest
    ) -> Iterator[tuple[_Flight, Certificate]]:
        """Decide, for inputs whose segment is all counted, what comes next; yield those that
        finish with their certificate."""
        counts = torch.stack([flight.counts for flight in flights]).cpu().numpy()
        estimating = [i for i, flight in enumerate(flights) if flight.c_hat is not None]
        n_a = np.array([counts[i, flights[i].c_hat] for i in estimating], dtype=np.int64)
        n = np.array([test.looks[flights[i].look] for i in estimating], dtype=np.int64)
        settled = dict(zip(estimating, np.atleast_1d(test.settled(n_a, n)), strict=True))
        bounds = dict(zip(estimating, np.atleast_1d(test.lower(n_a, n)), strict=True))
        for i, flight in enumerate(flights):
            if flight.c_hat is None:  # selection is done
                flight.c_hat = int(counts[i].argmax())
                if flight.label is not None and flight.c_hat != int(flight.label):
                    yield flight, Certificate(Smooth.ABSTAIN, 0.0, flight.c_hat, 0, 0, 0.0)
                    continue
                flight.counts.zero_()
            elif settled[i]:
                c_hat, look = flight.c_hat, test.looks[flight.look]
                count = int(counts[i, c_hat])
                yield flight, self._certificate(c_hat, count, look, float(bounds[i]))
                continue
            flight.look += 1
            drawn = test.looks[flight.look - 1] if flight.look else 0
            flight.stream.start(test.looks[flight.look] - drawn)
