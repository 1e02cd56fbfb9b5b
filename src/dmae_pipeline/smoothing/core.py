"""The smoothed classifier of Cohen et al. (2019): Monte Carlo PREDICT and CERTIFY."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest, norm

from dmae_pipeline.smoothing.bounds import check_alpha, lower_confidence_bound

NOISE_CHUNK = 100
"""Default number of noisy samples drawn per call to the generator (see ``Smooth``)."""


@dataclass(frozen=True)
class Certificate:
    """What CERTIFY found for one input.

    ``prediction`` is the certified class or ``Smooth.ABSTAIN``; ``radius`` the certified L2 radius
    (0.0 on abstention); ``c_hat`` the class guessed from the selection samples; ``n_a`` how many of
    the ``n`` estimation samples ``c_hat`` received; ``p_a_lower`` the lower confidence bound on its
    probability under noise.
    """

    prediction: int
    radius: float
    c_hat: int
    n_a: int
    n: int
    p_a_lower: float


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Smooth:
    """A smoothed classifier g(x) = argmax_c P(f(x + eps) = c), eps ~ N(0, sigma^2 I).

    Noise is drawn from a ``torch.Generator`` on the input's device in chunks of ``noise_chunk``
    samples, in a fixed order, so the noisy samples, hence the counts, depend on the generator's
    state and ``noise_chunk`` but not on ``batch_size``.
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
        noise_chunk: int = NOISE_CHUNK,
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
        :param noise_chunk: the number of noisy samples drawn per generator call
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
        self.noise_chunk = _check_positive_int("noise_chunk", noise_chunk)
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
        p_a_lower = lower_confidence_bound(n_a, n, alpha)
        if p_a_lower < 0.5:
            return Certificate(Smooth.ABSTAIN, 0.0, c_hat, n_a, n, p_a_lower)
        radius = self.sigma * float(norm.ppf(p_a_lower))
        return Certificate(c_hat, radius, c_hat, n_a, n, p_a_lower)

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

    def _prepare(
        self, x: torch.Tensor, batch_size: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Generator]:
        """Check the arguments shared by PREDICT and CERTIFY; x as float32 and the generator."""
        _check_positive_int("batch_size", batch_size)
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor of [0, 1] pixels, got {type(x)}")
        x = x.to(torch.float32)
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

    def _sample_counts(
        self, x: torch.Tensor, num: int, batch_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Sample the base classifier's prediction under noisy corruptions of the input x.

        :param x: the input [channel x height x width], float32
        :param num: number of samples to collect
        :param batch_size: batch size to use when evaluating the base classifier
        :param generator: the noise source, on x's device
        :return: an int64 tensor on x's device, of length num_classes, holding the per-class counts
        """
        self.model.eval()
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=x.device)
        autocast = (
            torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode():
            for noise in self._noise_batches(x, num, batch_size, generator):
                noisy = noise.mul_(self.sigma).add_(x)  # float32, outside autocast
                with autocast:
                    logits = self.model(noisy)
                if logits.shape != (len(noisy), self.num_classes):
                    raise ValueError(
                        f"model must return logits of shape [batch, num_classes={self.num_classes}]"
                        f", got {tuple(logits.shape)} for a batch of {len(noisy)}"
                    )
                predictions = logits.argmax(dim=1)
                # scatter_add_, unlike bincount, never waits for the device
                counts.scatter_add_(0, predictions, torch.ones_like(predictions))
        return counts

    def _noise_batches(
        self, x: torch.Tensor, num: int, batch_size: int, generator: torch.Generator
    ) -> Iterator[torch.Tensor]:
        """Yield ``num`` float32 standard normal samples shaped like x, in batches of ``batch_size``
        (the last one partial), drawn ``noise_chunk`` samples per generator call."""
        pieces: list[torch.Tensor] = []
        held = 0
        for start in range(0, num, self.noise_chunk):
            drawn = torch.randn(
                (min(self.noise_chunk, num - start), *x.shape),
                generator=generator,
                device=x.device,
                dtype=torch.float32,
            )
            pieces.append(drawn)
            held += len(drawn)
            if held >= batch_size:
                merged = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
                full = held - held % batch_size
                for begin in range(0, full, batch_size):
                    yield merged[begin : begin + batch_size]
                pieces = [merged[full:]] if full < held else []
                held -= full
        if held:
            yield torch.cat(pieces)
