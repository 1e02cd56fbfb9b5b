import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm

from dmae_pipeline.smoothing import SequentialTest, Smooth, certify_many, core, many
from dmae_pipeline.smoothing.sequential import FIRST_LOOK, LOOK_RATIO

from .toys import BernoulliModel, CategoricalModel, ConstantModel, GroupMaxModel, Recorder

CENTER, SIGMA = 0.5, 0.25
X1 = torch.full((1,), CENTER)  # a one-pixel input for the Bernoulli model
RADII = (0.25, 0.5, 0.75, 1.0)


P_BASE = 0.9


def at(p_a: float) -> torch.Tensor:
    """The one-pixel input where ``BernoulliModel(P_BASE, ...)`` gives class 0 probability p_a."""
    return torch.tensor([CENTER + SIGMA * (norm.ppf(P_BASE) - norm.ppf(p_a))])


def test_looks_are_fixed_sample_counts_ending_at_n_max():
    test = SequentialTest(100_000, 0.001, SIGMA, RADII)
    looks = np.array(test.looks)
    assert looks[-1] == 100_000 and np.all(np.diff(looks) > 0)
    geometric = [int(np.ceil(FIRST_LOOK * LOOK_RATIO**k)) for k in range(12)]
    assert set(geometric) < set(test.looks) and geometric[-1] < 100_000 < geometric[-1] * 1.5
    # alpha is spent at most once per look
    assert test.alpha_look * len(test.looks) <= 0.001
    # a look where all successes first prove each reachable radius (1.0 needs 218k samples)
    for r in RADII[:3]:
        proving = [n for n in test.looks if test.lower(n, n) >= norm.cdf(r / SIGMA)]
        assert test.lower(proving[0] - 1, proving[0] - 1) < norm.cdf(r / SIGMA)
        assert proving[0] in test.looks and proving[0] not in geometric
    assert SequentialTest(500, 0.001, SIGMA, [1.0]).looks == (500,)


def test_look_schedule_and_alpha_spending_on_small_cases():
    """K' = geometric looks below n_max + one per radius + n_max. Radius 3.0 (Phi(12) is 1.0 in
    float64) can never be proven and adds no look."""
    test = SequentialTest(1500, 0.001, SIGMA, [3.0])
    assert test.looks == (1000, 1500) and test.alpha_look == 0.001 / 3
    # n_max on the first geometric look: that look is n_max, not one more geometric look
    test = SequentialTest(1000, 0.001, SIGMA, [3.0, 1.0])
    assert test.looks == (1000,) and test.alpha_look == 0.001 / 3
    # one sample is a valid n_max
    assert SequentialTest(1, 0.001, SIGMA, [0.25]).looks == (1,)


def test_a_radius_exactly_at_a_bound_is_settled_as_a_certificate_reads_it():
    """A certificate covers r when its radius is >= r: a radius equal to the proven one is proven,
    and one equal to the upper bound's is still open (pA may be exactly Phi(r / sigma))."""
    n_a, n, alpha = 960, 1000, 0.001
    one_radius = SequentialTest(100_000, alpha, SIGMA, [0.0])  # alpha_look depends on the count
    proven = SIGMA * norm.ppf(one_radius.lower(n_a, n))
    below = SIGMA * norm.ppf(one_radius.upper(n_a, n))
    assert 0 < proven < below
    assert SequentialTest(100_000, alpha, SIGMA, [proven]).settled(n_a, n)
    assert not SequentialTest(100_000, alpha, SIGMA, [below]).settled(n_a, n)


def test_settled_stops_when_every_radius_is_proven_disproven_or_out_of_reach():
    test = SequentialTest(100_000, 0.001, SIGMA, RADII)
    t = norm.cdf(np.array(RADII) / SIGMA)
    # all successes prove 0.75 at 7212 (a look), not a sample before; 1.0 is out of reach
    assert test.settled(7212, 7212) is True and test.lower(7212, 7212) >= t[2]
    assert test.lower(7211, 7212) < t[2] < test.upper(7211, 7212)
    assert test.settled(7211, 7212) is False  # one failure: 0.75 is still open
    # 900 of 1000: 0.25 proven, 0.5 and up disproven
    assert test.lower(900, 1000) >= t[0] and test.upper(900, 1000) < t[1]
    assert test.settled(900, 1000)
    # 960 of 1000: 0.5 is open
    assert test.lower(960, 1000) < t[1] < test.upper(960, 1000)
    assert not test.settled(960, 1000)
    # below one half: every radius disproven
    assert test.upper(400, 1000) < 0.5 and test.settled(400, 1000)
    # out of reach: 0.75 is neither proven nor disproven, but 100 failures already rule it out
    # at n_max (90 do not)
    n = 86_498
    for failures, reach in ((90, True), (100, False)):
        assert test.lower(n - failures, n) < t[2] < test.upper(n - failures, n)
        assert (test.lower(100_000 - failures, 100_000) >= t[2]) == reach
        assert test.settled(n - failures, n) != reach
    # n_max always stops
    assert test.settled(99_900, 100_000)
    # vectorized like the scalars
    n_a, n = np.array([7212, 7211, 900, 960, 400]), np.array([7212, 7212, 1000, 1000, 1000])
    assert test.settled(n_a, n).tolist() == [True, False, True, False, True]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_max": 0}, "^n_max must be a positive integer, got 0$"),
        ({"n_max": True}, "^n_max must be a positive integer, got True$"),
        ({"n_max": 1000.5}, r"^n_max must be a positive integer, got 1000\.5$"),
        ({"radii": [None]}, "radii"),
        ({"radii": []}, "radii"),
        ({"radii": [-0.5]}, "radii"),
        ({"alpha": 1.0}, "alpha"),
        ({"sigma": 0.0}, "sigma"),
    ],
)
def test_sequential_test_rejects_bad_arguments(kwargs, match):
    args = {"n_max": 1000, "alpha": 0.01, "sigma": SIGMA, "radii": RADII} | kwargs
    with pytest.raises(ValueError, match=match):
        SequentialTest(**args)


class RepeatedFixedN(SequentialTest):
    """Wrong on purpose: a fixed-n Clopper-Pearson bound at full alpha after every batch of 100."""

    def __init__(self, n_max, alpha, sigma, radii):
        super().__init__(n_max, alpha, sigma, radii)
        self.looks = tuple(range(100, n_max + 1, 100))
        self.alpha_look = alpha


@pytest.mark.parametrize(("test_class", "valid"), [(SequentialTest, True), (RepeatedFixedN, False)])
def test_sequential_certificates_overclaim_at_most_alpha_of_the_time(
    test_class, valid, monkeypatch
):
    """pA = 0.9 and a radius just above sigma * Phi^-1(pA): estimation runs through many looks,
    each a chance to over-claim. The union bound keeps false certificates at most alpha; recomputing
    a fixed-n bound at full alpha after every batch does not (about 28% at alpha = 0.1)."""
    monkeypatch.setattr(many, "SequentialTest", test_class)
    p_a, alpha, trials = 0.9, 0.1, 1000
    smooth = Smooth(BernoulliModel(p_a, CENTER, SIGMA), 2, SIGMA)
    radii = [SIGMA * norm.ppf(p_a) + 1e-3]
    items = ((i, X1, torch.Generator().manual_seed(i)) for i in range(trials))
    certs = [cert for _, cert in certify_many(smooth, items, 100, 2000, alpha, 4096, radii)]
    assert len(certs) == trials
    over = sum(c.p_a_lower > (p_a if c.c_hat == 0 else 1 - p_a) for c in certs)
    within = binomtest(over, trials, alpha, alternative="greater").pvalue > 1e-3
    assert within == valid, over / trials


def test_a_constant_classifier_certifies_the_largest_reachable_radius():
    smooth = Smooth(ConstantModel(5, 3), 5, sigma=SIGMA, seed=0)
    x = torch.rand(3, 4, 4)
    fixed = smooth.certify_detailed(x, 100, 100_000, 0.001, 4096)
    cert = smooth.certify_sequential(x, 100, 100_000, 0.001, 4096, RADII)
    # 1.0 is out of reach within 100,000 samples (fixed-n reaches 0.95): 0.75 is the most to prove
    assert fixed.prediction == cert.prediction == 3 and 0.75 < fixed.radius < 1.0
    assert cert.radius >= 0.75 and cert.n == cert.n_a == 7212
    # asked for a radius close to fixed-n's, it gets there, at a bound a little below fixed-n's
    cert = smooth.certify_sequential(x, 100, 100_000, 0.001, 4096, [0.9])
    assert cert.prediction == 3 and 0.9 <= cert.radius <= fixed.radius and cert.n < 100_000


@pytest.mark.parametrize("seed", range(5))
def test_sequential_and_fixed_agree_far_from_every_threshold(seed):
    """pA = 0.9 lies between the thresholds of 0.25 (0.84) and 0.5 (0.98): both modes certify 0.25
    and not 0.5, sequential after far fewer samples."""
    smooth = Smooth(BernoulliModel(0.9, CENTER, SIGMA), 2, SIGMA, seed=seed)
    fixed = smooth.certify_detailed(X1, 100, 20_000, 0.001, 1000)
    cert = smooth.certify_sequential(X1, 100, 20_000, 0.001, 1000, [0.25, 0.5])
    assert fixed.prediction == cert.prediction == 0
    assert 0.25 <= cert.radius < 0.5 and 0.25 <= fixed.radius < 0.5
    assert cert.n <= 2250


def test_abstains_once_pa_is_shown_below_one_half():
    """Three classes at 0.4 / 0.3 / 0.3: radius 0 (pA >= 1/2) is disproven early."""
    smooth = Smooth(CategoricalModel([0.4, 0.3, 0.3], CENTER, SIGMA), 3, SIGMA, seed=0)
    cert = smooth.certify_sequential(X1, 100, 100_000, 0.001, 1000, [0.0])
    test = SequentialTest(100_000, 0.001, SIGMA, [0.0])
    assert cert.prediction == Smooth.ABSTAIN and cert.radius == 0.0 and cert.n <= 2250
    assert test.upper(cert.n_a, cert.n) < 0.5 and cert.p_a_lower == test.lower(cert.n_a, cert.n)


def pool_items(count: int, labels: bool = False):
    """Inputs with pA from 0.3 to 0.9999 for BernoulliModel(P_BASE), each with its own seed."""
    p_as = np.linspace(0.3, 0.9999, count)
    for i, p_a in enumerate(p_as):
        yield (i, at(p_a), torch.Generator().manual_seed(100 + i), i % 2 if labels else None)


@pytest.mark.parametrize("labels", [False, True])
def test_pool_certificates_equal_single_ones_whatever_the_batch_size(labels, monkeypatch):
    monkeypatch.setattr(core, "NOISE_CHUNK_ELEMENTS", 333)  # segments span several draws
    smooth = Smooth(BernoulliModel(P_BASE, CENTER, SIGMA), 2, SIGMA)
    args = (100, 20_000, 0.01, 700, RADII)
    alone = {
        key: smooth.certify_sequential(x, *args, generator, label=label)
        for key, x, generator, label in pool_items(12, labels)
    }
    assert len({c.n for c in alone.values()}) > 3  # images stop at different looks
    for batch_size in (1, 64, 700, 5000):
        pooled = list(
            certify_many(smooth, pool_items(12, labels), 100, 20_000, 0.01, batch_size, RADII)
        )
        assert dict(pooled) == alone and len(pooled) == 12
    if labels:  # exactly the inputs whose c_hat is not their label stop at selection
        stopped = {i for i, c in alone.items() if c.n == 0}
        assert (
            stopped == {i for i, c in alone.items() if c.c_hat != i % 2} and 0 < len(stopped) < 12
        )
        assert all(alone[i].prediction == Smooth.ABSTAIN for i in stopped)


def test_an_input_stopped_at_selection_gets_the_abstain_certificate():
    smooth = Smooth(ConstantModel(3, 2), 3, sigma=SIGMA, seed=0)
    cert = smooth.certify_sequential(torch.rand(4), 10, 1000, 0.01, 64, RADII, label=1)
    assert cert == core.Certificate(Smooth.ABSTAIN, 0.0, 2, 0, 0, 0.0)


def test_inputs_stopped_together_never_cost_an_empty_batch():
    """Two inputs finish selection in one batch, the first stopped there by its label: the second
    goes on at once, and the model never sees an empty batch."""
    model = Recorder(ConstantModel(3, 2))
    smooth = Smooth(model, 3, sigma=SIGMA)
    items = [(i, torch.rand(4), torch.Generator().manual_seed(i), 1 + i) for i in range(2)]
    certs = dict(certify_many(smooth, items, 10, 100, 0.01, 20, [0.1]))
    assert certs[0].n == 0 and certs[1].n > 0 and certs[1].prediction == 2
    assert min(len(batch) for batch in model.inputs) > 0


def test_an_input_settled_at_a_look_lets_the_others_at_that_look_go_on():
    """Two inputs reach a look in one batch: the first settles there (pA near 1 proves the
    radius), the second (pA at the radius's threshold) draws its next segment at once: no input
    waits a batch, and the model never sees an empty batch."""
    model = Recorder(BernoulliModel(P_BASE, CENTER, SIGMA))
    smooth = Smooth(model, 2, SIGMA)
    radius = 0.1
    items = [
        (i, at(p_a), torch.Generator().manual_seed(i))
        for i, p_a in enumerate([0.99999, norm.cdf(radius / SIGMA)])
    ]
    certs = dict(certify_many(smooth, items, 10, 2000, 0.01, 100, [radius]))
    first_look = SequentialTest(2000, 0.01, SIGMA, [radius]).looks[0]
    assert certs[0].n == first_look < certs[1].n and certs[0].radius >= radius
    assert [len(batch) for batch in model.inputs[:2]] == [20, 2 * first_look]
    assert min(len(batch) for batch in model.inputs) > 0


def test_inputs_are_taken_only_as_needed():
    """A batch that one input's selection fills takes no second input."""
    taken = []

    def items():
        for i in range(3):
            taken.append(i)
            yield i, torch.rand(4), torch.Generator().manual_seed(i)

    taken_at_call = []

    class Probe(ConstantModel):
        def forward(self, x):
            taken_at_call.append(len(taken))
            return super().forward(x)

    smooth = Smooth(Probe(3, 0), 3, sigma=SIGMA)
    assert len(list(certify_many(smooth, items(), 20, 100, 0.01, 20, [0.1]))) == 3
    assert taken_at_call[0] == 1


class Watched(Recorder):
    """A Recorder that notes, for each batch, whether the pool's inputs had run out."""

    def __init__(self, inner):
        super().__init__(inner)
        self.exhausted, self.after_exhaustion = False, []

    def forward(self, x):
        self.after_exhaustion.append(self.exhausted)
        return super().forward(x)


def test_pool_feeds_full_batches_of_the_same_samples_as_single_runs(monkeypatch):
    """Batches are full while inputs remain; every input's noisy samples are its own stream's, so
    the pool sees exactly the samples of the single runs."""
    monkeypatch.setattr(core, "NOISE_CHUNK_ELEMENTS", 37 * 75)
    model = Watched(GroupMaxModel(5))
    smooth = Smooth(model, 5, sigma=0.5)
    images = [torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(i)) for i in range(60)]

    def items():
        yield from ((i, x, torch.Generator().manual_seed(i)) for i, x in enumerate(images))
        model.exhausted = True

    alone = {}
    for i, x, generator in items():
        alone[i] = smooth.certify_sequential(x, 50, 3000, 0.01, 256, [0.1, 0.2], generator)
    single_samples = model.seen()
    model.inputs.clear()
    model.exhausted, model.after_exhaustion = False, []
    pooled = dict(certify_many(smooth, items(), 50, 3000, 0.01, 256, [0.1, 0.2]))
    assert pooled == alone
    sizes = [
        len(b) for b, late in zip(model.inputs, model.after_exhaustion, strict=True) if not late
    ]
    assert len(sizes) > 10 and set(sizes) == {256}
    # the same multiset of noisy samples, each an exact copy
    pooled_samples = model.seen()
    assert len(pooled_samples) == len(single_samples) == sum(50 + c.n for c in alone.values())
    assert len({c.n for c in alone.values()}) > 2

    def multiset(samples):
        return torch.unique(samples.flatten(1), dim=0, return_counts=True)

    assert all(map(torch.equal, multiset(pooled_samples), multiset(single_samples)))


def test_certify_sequential_does_not_depend_on_batch_size(monkeypatch):
    monkeypatch.setattr(core, "NOISE_CHUNK_ELEMENTS", 37 * 75)
    x = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
    runs = []
    for batch_size in (1, 100, 999, 5000):
        model = Recorder(GroupMaxModel(5))
        cert = Smooth(model, 5, sigma=0.5).certify_sequential(
            x, 50, 3000, 0.01, batch_size, [0.1, 0.2], torch.Generator().manual_seed(3)
        )
        runs.append((model.seen(), cert))
    for samples, cert in runs[1:]:
        assert torch.equal(samples, runs[0][0]) and cert == runs[0][1]


def test_certify_many_rejects_shared_or_missing_generators_and_mixed_shapes():
    smooth = Smooth(ConstantModel(3, 0), 3, sigma=SIGMA)
    shared = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="shares its generator"):
        list(certify_many(smooth, [(0, X1, shared), (1, X1, shared)], 10, 100, 0.01, 1000, RADII))
    with pytest.raises(ValueError, match="its own generator"):
        list(certify_many(smooth, [(0, X1, None)], 10, 100, 0.01, 1000, RADII))
    items = [(0, X1, torch.Generator()), (1, torch.rand(2), torch.Generator())]
    with pytest.raises(ValueError, match=r"input 1 is \(2,\)"):
        list(certify_many(smooth, items, 10, 100, 0.01, 1000, RADII))
    with pytest.raises(ValueError, match="radii"):
        certify_many(smooth, [], 10, 100, 0.01, 1000, [])  # checked before any iteration
    # checked before any iteration, and named exactly
    with pytest.raises(ValueError, match=r"^n0 must be a positive integer, got 0$"):
        certify_many(smooth, [], 0, 100, 0.01, 1000, RADII)
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got 0$"):
        certify_many(smooth, [], 10, 100, 0.01, 0, RADII)


def test_pool_keeps_noise_float32_under_autocast():
    model = Recorder(GroupMaxModel(5))
    smooth = Smooth(model, 5, sigma=0.5, autocast_dtype=torch.bfloat16)
    items = [(i, torch.rand(3, 5, 5, dtype=torch.float64), torch.Generator()) for i in range(3)]
    assert len(list(certify_many(smooth, items, 20, 500, 0.01, 64, [0.1]))) == 3
    assert {batch.dtype for batch in model.inputs} == {torch.float32} and all(model.autocast)
