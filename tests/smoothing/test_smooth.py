import re

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, norm

from dmae_pipeline.smoothing import Smooth, core, lower_confidence_bound

from .toys import (
    BernoulliModel,
    CategoricalModel,
    ConstantModel,
    GroupMaxModel,
    LinearModel,
    Recorder,
)

CENTER, SIGMA = 0.5, 0.25
X1 = torch.full((1,), CENTER)  # a one-pixel input for the Bernoulli model


def bernoulli_smooth(p_a: float, seed: int) -> Smooth:
    return Smooth(BernoulliModel(p_a, CENTER, SIGMA), num_classes=2, sigma=SIGMA, seed=seed)


def test_false_certification_rate_is_at_most_alpha():
    """With true pA known, P(pA_lower > pA) <= alpha; Clopper-Pearson's exact rate is computable."""
    p_a, n0, n, alpha, trials = 0.7, 100, 100, 0.05, 2000
    smooth = bernoulli_smooth(p_a, seed=0)
    certs = [smooth.certify_detailed(X1, n0, n, alpha, batch_size=n) for _ in range(trials)]
    c_hat = np.array([c.c_hat for c in certs])
    p_lower = np.array([c.p_a_lower for c in certs])
    n_a = np.array([c.n_a for c in certs])
    true_p = np.where(c_hat == 0, p_a, 1 - p_a)
    false = int(np.sum(p_lower > true_p))
    # no evidence that the false-certification rate exceeds alpha
    assert binomtest(false, trials, alpha, alternative="greater").pvalue > 1e-3
    # and it matches the exact rate P(N_A >= k*), k* the least count whose bound exceeds pA
    bounds = lower_confidence_bound(np.arange(n + 1), n, alpha)
    k_star = int(np.argmax(bounds > p_a))
    exact = binom.sf(k_star - 1, n, p_a)
    assert 0.04 < exact <= alpha  # the setting is one where the test has power
    on_top = c_hat == 0
    assert binomtest(int(np.sum(p_lower[on_top] > p_a)), int(on_top.sum()), exact).pvalue > 1e-3
    # the counts themselves are Binomial(n, pA)
    assert np.mean(n_a[on_top]) == pytest.approx(
        n * p_a, abs=4 * np.sqrt(n * p_a * (1 - p_a) / trials)
    )


@pytest.mark.parametrize(
    ("num_classes", "cls", "n", "alpha"), [(2, 1, 1000, 0.001), (5, 3, 250, 0.05)]
)
def test_constant_classifier_certifies_the_all_successes_radius(num_classes, cls, n, alpha):
    smooth = Smooth(ConstantModel(num_classes, cls), num_classes, sigma=0.5, seed=0)
    prediction, radius = smooth.certify(torch.rand(3, 4, 4), 20, n, alpha, batch_size=64)
    assert prediction == cls
    assert radius == 0.5 * norm.ppf(lower_confidence_bound(n, n, alpha))
    cert = smooth.certify_detailed(torch.rand(3, 4, 4), 20, n, alpha, batch_size=64)
    assert (cert.c_hat, cert.n_a, cert.n, cert.radius) == (cls, n, n, radius)


def test_certify_abstains_when_the_bound_is_below_one_half():
    smooth = Smooth(ConstantModel(3, 2), 3, sigma=0.5, seed=0)
    # one success out of one: the bound is alpha itself
    assert smooth.certify(torch.rand(2, 2), 1, 1, 0.05, batch_size=1) == (Smooth.ABSTAIN, 0.0)
    cert = bernoulli_smooth(0.5, seed=1).certify_detailed(X1, 100, 1000, 0.001, batch_size=256)
    assert cert.prediction == Smooth.ABSTAIN and cert.radius == 0.0 and cert.p_a_lower < 0.5


def test_a_bound_of_exactly_one_half_certifies_radius_zero(monkeypatch):
    """Cohen et al. abstain only when pA_lower < 1/2; at 1/2 the radius is
    sigma * Phi^-1(1/2) = 0."""
    monkeypatch.setattr(core, "lower_confidence_bound", lambda n_a, n, alpha: 0.5)
    smooth = Smooth(ConstantModel(3, 2), 3, sigma=0.5, seed=0)
    assert smooth.certify(torch.rand(2, 2), 10, 10, 0.05, batch_size=10) == (2, 0.0)


def test_predict_answers_when_the_p_value_equals_alpha():
    """Abstain only if the p-value exceeds alpha: 10 of 10 votes have p = 2 / 2**10 exactly."""
    alpha = binomtest(10, 10, p=0.5).pvalue
    assert alpha == 2 / 2**10
    constant = Smooth(ConstantModel(3, 1), 3, sigma=0.25, seed=0)
    assert constant.predict(torch.rand(4), 10, alpha, batch_size=10) == 1
    assert constant.predict(torch.rand(4), 10, alpha * 0.999, batch_size=10) == Smooth.ABSTAIN


@pytest.mark.parametrize("method", ["predict", "certify"])
def test_a_given_generator_is_the_only_noise_source(method):
    """predict and certify draw from the generator they are given, not from the Smooth's own
    seeded one nor from torch's global one: the same seed gives the same samples."""
    x = torch.linspace(0, 1, 16).reshape(1, 4, 4)
    seen = []
    for own_seed in (1, 2):
        recorder = Recorder(LinearModel(16, 4))
        smooth = Smooth(recorder, 4, sigma=0.25, seed=own_seed)
        args = (x, 50, 0.01, 32) if method == "predict" else (x, 10, 40, 0.01, 32)
        getattr(smooth, method)(*args, generator=torch.Generator().manual_seed(5))
        seen.append(recorder.seen())
    assert torch.equal(seen[0], seen[1])
    reference = torch.empty(len(seen[0]), *x.shape).normal_(
        0, 0.25, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(seen[0], x + reference)


def test_predict_abstains_on_a_coin_flip_and_answers_a_confident_classifier():
    assert bernoulli_smooth(0.5, seed=0).predict(X1, 1000, 0.001, batch_size=300) == Smooth.ABSTAIN
    assert bernoulli_smooth(0.9, seed=0).predict(X1, 1000, 0.001, batch_size=300) == 0
    assert bernoulli_smooth(0.1, seed=0).predict(X1, 1000, 0.001, batch_size=300) == 1
    constant = Smooth(ConstantModel(7, 5), 7, sigma=0.25, seed=0)
    assert constant.predict(torch.rand(3, 2, 2), 100, 0.001, batch_size=30) == 5


def test_predict_answers_a_coin_flip_at_most_alpha_of_the_time():
    smooth, alpha, trials = bernoulli_smooth(0.5, seed=2), 0.05, 400
    answered = sum(smooth.predict(X1, 100, alpha, batch_size=100) != -1 for _ in range(trials))
    assert binomtest(answered, trials, alpha, alternative="greater").pvalue > 1e-3


class SelectsFromEstimation(Smooth):
    """Wrong on purpose: takes c_hat from the estimation samples, not from separate ones."""

    def certify_detailed(self, x, n0, n, alpha, batch_size, generator=None):
        x, generator = self._prepare(x, batch_size, generator)
        counts = self._sample_counts(x, n, batch_size, generator)
        c_hat = int(counts.argmax())
        n_a = int(counts[c_hat])
        return self._certificate(c_hat, n_a, n, lower_confidence_bound(n_a, n, alpha))


@pytest.mark.parametrize(
    ("smooth_class", "valid"), [(Smooth, True), (SelectsFromEstimation, False)]
)
def test_certify_at_a_two_class_tie_certifies_at_most_alpha_of_the_time(smooth_class, valid):
    """pA = pB = 1/2: any certificate is false. With c_hat taken from the estimation samples, the
    larger count is tested and about 2 alpha of the runs certify."""
    smooth = smooth_class(BernoulliModel(0.5, CENTER, SIGMA), 2, SIGMA, seed=0)
    trials, alpha = 2000, 0.05
    certified = sum(smooth.certify(X1, 100, 100, alpha, 200)[0] != -1 for _ in range(trials))
    within = binomtest(certified, trials, alpha, alternative="greater").pvalue > 1e-3
    assert within == valid, certified / trials


class PredictsOnAllSamples(Smooth):
    """Wrong on purpose: tests the top count against all n samples, not against the top two."""

    def predict(self, x, n, alpha, batch_size, generator=None):
        x, generator = self._prepare(x, batch_size, generator)
        counts = self._sample_counts(x, n, batch_size, generator).cpu().numpy()
        top = int(counts.argmax())
        if binomtest(int(counts[top]), n, p=0.5).pvalue > alpha:
            return Smooth.ABSTAIN
        return top


@pytest.mark.parametrize(("smooth_class", "valid"), [(Smooth, True), (PredictsOnAllSamples, False)])
def test_predict_abstains_between_two_tied_classes_beside_a_third(smooth_class, valid):
    """Classes at 0.4 / 0.4 / 0.2: g(x) is a tie, so PREDICT should answer at most alpha of the
    time; testing the top count against all n samples answers almost always."""
    smooth = smooth_class(CategoricalModel([0.4, 0.4, 0.2], CENTER, SIGMA), 3, SIGMA, seed=3)
    trials, alpha = 300, 0.05
    answered = sum(smooth.predict(X1, 1000, alpha, 1000) != -1 for _ in range(trials))
    within = binomtest(answered, trials, alpha, alternative="greater").pvalue > 1e-3
    assert within == valid, answered / trials


def noisy_inputs(batch_size: int, num: int = 250, chunk: int = 100, model=None, **kwargs):
    """The inputs a model sees while ``num`` samples are counted, ``chunk`` samples a draw."""
    recorder = Recorder(model or LinearModel(3 * 5 * 5, 10))
    smooth = Smooth(recorder, 10, sigma=0.5, seed=7, **kwargs)
    x = torch.linspace(0, 1, 75).reshape(3, 5, 5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core, "NOISE_CHUNK_ELEMENTS", chunk * x.numel())
        counts = smooth._sample_counts(x, num, batch_size, smooth._prepare(x, batch_size, None)[1])
    return recorder, counts


def reference_counts(model, x, segments, sigma, generator, num_classes, chunk):
    """The noise layout, one sample at a time: each segment drawn ``chunk`` samples per call."""
    inputs, counts = [], []
    for num in segments:
        counts.append(torch.zeros(num_classes, dtype=torch.int64))
        for start in range(0, num, chunk):
            noise = torch.empty(min(chunk, num - start), *x.shape).normal_(
                0, sigma, generator=generator
            )
            for eps in noise:
                inputs.append(x + eps)
                counts[-1][model(inputs[-1][None]).argmax()] += 1
    return torch.stack(inputs), counts


@pytest.mark.parametrize(("chunk", "batch_size"), [(100, 64), (64, 300), (7, 1), (1000, 333)])
def test_batched_noise_and_counts_equal_a_sample_by_sample_reference(chunk, batch_size):
    model = GroupMaxModel(5)
    x = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(1))
    recorder = Recorder(model)
    smooth = Smooth(recorder, 5, sigma=0.25)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core, "NOISE_CHUNK_ELEMENTS", chunk * x.numel())
        cert = smooth.certify_detailed(
            x, 30, 270, 0.01, batch_size, torch.Generator().manual_seed(5)
        )
    inputs, (selection, estimation) = reference_counts(
        model, x, (30, 270), 0.25, torch.Generator().manual_seed(5), 5, chunk
    )
    assert torch.equal(recorder.seen(), inputs)
    c_hat = int(selection.argmax())
    assert (cert.c_hat, cert.n_a, cert.n) == (c_hat, int(estimation[c_hat]), 270)
    assert len(set(estimation.tolist())) > 1  # the counts are not all equal (the test has teeth)


@pytest.mark.parametrize(
    ("chunk", "batch_sizes"), [(100, (1, 7, 100, 120, 1000)), (64, (5, 64, 300))]
)
def test_noise_and_counts_do_not_depend_on_batch_size(chunk, batch_sizes):
    runs = [noisy_inputs(b, chunk=chunk) for b in batch_sizes]
    reference_inputs, reference_counts = runs[0][0].seen(), runs[0][1]
    assert reference_inputs.shape == (250, 3, 5, 5) and int(reference_counts.sum()) == 250
    for recorder, counts in runs[1:]:
        assert torch.equal(recorder.seen(), reference_inputs)
        assert torch.equal(counts, reference_counts)


@pytest.mark.parametrize(
    ("batch_size", "calls"), [(100, [100, 100, 50]), (120, [120, 120, 10]), (1000, [250])]
)
def test_batches_are_full_but_the_last(batch_size, calls):
    recorder, _ = noisy_inputs(batch_size)
    assert [len(batch) for batch in recorder.inputs] == calls


def test_noise_is_gaussian_with_sigma_in_pixel_space():
    recorder, _ = noisy_inputs(500, num=4000)
    x = torch.linspace(0, 1, 75).reshape(3, 5, 5)
    noise = recorder.seen() - x
    assert recorder.seen().dtype == torch.float32
    assert noise.mean().item() == pytest.approx(0.0, abs=0.005)
    assert noise.std().item() == pytest.approx(0.5, abs=0.005)


def test_same_seed_reproduces_and_the_stream_continues():
    x = torch.linspace(0, 1, 16).reshape(1, 4, 4)

    def run(seed=None, generator=None, calls=1):
        recorder = Recorder(LinearModel(16, 4))
        smooth = Smooth(recorder, 4, sigma=0.25, seed=seed)
        certs = [smooth.certify_detailed(x, 10, 90, 0.01, 32, generator) for _ in range(calls)]
        return recorder.seen(), certs

    first, certs = run(seed=3, calls=2)
    again, certs_again = run(seed=3, calls=2)
    assert torch.equal(first, again) and certs == certs_again
    assert not torch.equal(first[:100], first[100:])  # the second call draws fresh noise
    from_generator, _ = run(generator=torch.Generator().manual_seed(3))
    assert torch.equal(from_generator, first[:100])
    other_seed, _ = run(seed=4)
    assert not torch.equal(other_seed, first[:100])
    unseeded, _ = run(seed=None)
    assert not torch.equal(unseeded, first[:100])


def test_autocast_runs_the_model_in_low_precision_but_keeps_noise_float32():
    plain, _ = noisy_inputs(100)
    mixed, mixed_counts = noisy_inputs(100, autocast_dtype=torch.bfloat16)
    assert all(mixed.autocast) and not any(plain.autocast)
    assert set(mixed.output_dtypes) == {torch.bfloat16}
    assert {batch.dtype for batch in mixed.inputs} == {torch.float32}
    assert torch.equal(mixed.seen(), plain.seen())
    assert int(mixed_counts.sum()) == 250


def test_float64_input_is_certified_in_float32():
    recorder = Recorder(LinearModel(4, 3))
    Smooth(recorder, 3, sigma=0.25, seed=0).certify(
        torch.rand(4, dtype=torch.float64), 5, 5, 0.1, 5
    )
    assert {batch.dtype for batch in recorder.inputs} == {torch.float32}


@pytest.mark.parametrize(
    ("num_classes", "message"),
    [
        (0, "num_classes must be a positive integer, got 0"),
        (2.0, "num_classes must be a positive integer, got 2.0"),
        (1, "num_classes must be at least 2, got 1"),
    ],
)
def test_smooth_names_a_bad_number_of_classes(num_classes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Smooth(ConstantModel(3, 0), num_classes, sigma=0.25)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n0": 0}, "n0"),
        ({"n": 2.5}, "n must"),
        ({"alpha": 0.0}, "alpha"),
        ({"batch_size": 0}, "batch_size"),
        ({"x": torch.ones(4, dtype=torch.uint8)}, "x must"),
    ],
)
def test_certify_rejects_bad_arguments(kwargs, match):
    smooth = Smooth(ConstantModel(3, 0), 3, sigma=0.25, seed=0)
    args = {"x": torch.rand(4), "n0": 10, "n": 10, "alpha": 0.01, "batch_size": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        smooth.certify(**args)


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        ("certify", {"n0": 0}, "n0 must be a positive integer, got 0"),
        ("certify", {"n": 0}, "n must be a positive integer, got 0"),
        ("predict", {"n": 0}, "n must be a positive integer, got 0"),
        ("predict", {"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ("certify_sequential", {"n0": 0}, "n0 must be a positive integer, got 0"),
        ("certify_sequential", {"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ],
)
def test_bad_counts_are_named_exactly(method, kwargs, message):
    smooth = Smooth(ConstantModel(3, 0), 3, sigma=0.25, seed=0)
    args = {"x": torch.rand(4), "n0": 10, "n": 10, "alpha": 0.01, "batch_size": 4}
    if method == "predict":
        del args["n0"]
    if method == "certify_sequential":
        args |= {"n_max": args.pop("n"), "radii": [0.1]}
    with pytest.raises(ValueError, match=f"^{message}$"):
        getattr(smooth, method)(**args | kwargs)


def test_constructor_and_model_checks():
    with pytest.raises(ValueError, match="sigma"):
        Smooth(ConstantModel(3, 0), 3, sigma=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        Smooth(ConstantModel(3, 0), 1, sigma=0.25)
    wrong_width = Smooth(ConstantModel(5, 0), 3, sigma=0.25, seed=0)
    with pytest.raises(ValueError, match=r"num_classes=3"):
        wrong_width.predict(torch.rand(4), 10, 0.01, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counting_never_waits_for_the_device():
    smooth = Smooth(LinearModel(48, 10).cuda(), 10, sigma=0.5, seed=0)
    x = torch.rand(3, 4, 4, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        counts = smooth._sample_counts(x, 1000, 64, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert counts.device.type == "cuda" and int(counts.sum()) == 1000
