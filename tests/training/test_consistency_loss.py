"""Consistency regularization (Jeong & Shin 2020) and the noisy classification loss factory."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import beta, kstest
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from dmae_pipeline.training import consistency_loss, noisy_classification_loss


@pytest.mark.parametrize(
    ("lam", "eta"), [(2.0, 0.5), (2.0, 0.0), (1.0, 0.0), (0.0, 0.5), (0.0, 1.0)]
)
def test_hand_computed_case(lam, eta):
    """Each term counts on its own: one weight at 0 drops only its term."""
    # One sample, two classes, two copies: p_1 = (1/2, 1/2), p_2 = (3/4, 1/4), label 0.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0])
    p_hat = (0.625, 0.375)
    ce = (-math.log(0.5) - math.log(0.75)) / 2
    kl_1 = p_hat[0] * math.log(0.625 / 0.5) + p_hat[1] * math.log(0.375 / 0.5)
    kl_2 = p_hat[0] * math.log(0.625 / 0.75) + p_hat[1] * math.log(0.375 / 0.25)
    entropy = -(p_hat[0] * math.log(p_hat[0]) + p_hat[1] * math.log(p_hat[1]))
    expected = ce + lam * (kl_1 + kl_2) / 2 + eta * entropy
    got = consistency_loss(logits, labels, m=2, lam=lam, eta=eta)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def _per_sample_reference(logits, labels, m, lam, eta):
    """The formula sample by sample, with copy i of sample b taken from row i*B + b."""
    b = len(labels)
    total = 0.0
    for s in range(b):
        rows = logits[[i * b + s for i in range(m)]].double()
        p = rows.softmax(-1)
        p_hat = p.mean(0)
        ce = -rows.log_softmax(-1)[:, labels[s]].mean()
        kl = (p_hat * (p_hat.log() - p.log())).sum(-1).mean()
        entropy = -(p_hat * p_hat.log()).sum()
        total += ce + lam * kl + eta * entropy
    return total / b


def test_block_layout_matches_the_per_sample_formula():
    g = torch.Generator().manual_seed(0)
    m, b, k = 3, 4, 5
    logits = torch.randn(m * b, k, generator=g) * 3
    labels = torch.randint(k, (b,), generator=g)
    got = consistency_loss(logits, labels, m=m, lam=2.0, eta=0.1)
    assert got.item() == pytest.approx(_per_sample_reference(logits, labels, m, 2.0, 0.1).item())
    # the interleaved layout (sample-major) would give another value
    interleaved = logits.view(m, b, k).transpose(0, 1).reshape(m * b, k)
    assert consistency_loss(interleaved, labels, m=m, lam=2.0, eta=0.1).item() != pytest.approx(
        got.item()
    )


def test_identical_copies_have_zero_kl():
    g = torch.Generator().manual_seed(1)
    one = torch.randn(4, 6, generator=g)
    labels = torch.randint(6, (4,), generator=g)
    logits = one.repeat(3, 1)
    ce = F.cross_entropy(one, labels)
    assert consistency_loss(logits, labels, m=3, lam=5.0, eta=0.0).item() == pytest.approx(
        ce.item()
    )
    entropy = -(one.softmax(-1) * one.log_softmax(-1)).sum(-1).mean()
    with_entropy = consistency_loss(logits, labels, m=3, lam=5.0, eta=0.5)
    assert with_entropy.item() == pytest.approx((ce + 0.5 * entropy).item())


def test_reduces_to_cross_entropy_with_one_copy_or_no_weights():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 5, generator=g)
    labels = torch.randint(5, (8,), generator=g)
    ce = F.cross_entropy(logits, labels)
    assert consistency_loss(logits, labels, m=1, lam=2.0, eta=0.5).item() == pytest.approx(
        ce.item()
    )
    assert consistency_loss(logits, labels[:4], m=2, lam=0.0, eta=0.0).item() == pytest.approx(
        F.cross_entropy(logits, labels[:4].repeat(2)).item()
    )


def test_label_smoothing_and_soft_targets_match_timm():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 5, generator=g)
    labels = torch.randint(5, (8,), generator=g)
    smoothed = consistency_loss(logits, labels, m=1, lam=0, eta=0, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(LabelSmoothingCrossEntropy(0.1)(logits, labels).item())
    soft = torch.rand(8, 5, generator=g).softmax(-1)
    got = consistency_loss(logits, soft, m=1, lam=0, eta=0)
    assert got.item() == pytest.approx(SoftTargetCrossEntropy()(logits, soft).item())


def test_numerically_safe_for_extreme_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    loss = consistency_loss(logits, torch.tensor([0]), m=2, lam=2.0, eta=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss.item() > 1e3  # one copy is confidently wrong


def test_bf16_logits_are_scored_in_float32():
    logits = torch.randn(6, 4).to(torch.bfloat16)
    loss = consistency_loss(logits, torch.tensor([0, 1, 2]), m=2, lam=2.0, eta=0.5)
    assert loss.dtype == torch.float32


def _detached_mean_reference(logits, labels, m, lam, eta):
    """A wrong variant of the reference: no gradient flows through p_hat."""
    b, k = len(labels), logits.shape[1]
    log_p = logits.double().log_softmax(-1).view(m, b, k)
    p_hat = log_p.exp().mean(0).detach()
    ce = F.cross_entropy(logits.double(), labels.repeat(m))
    kl = (p_hat * (p_hat.log() - log_p)).sum(-1).mean(0)
    entropy = -(p_hat * p_hat.log()).sum(-1)
    return ce + (lam * kl + eta * entropy).mean()


def _grad(loss_of, logits):
    logits = logits.clone().requires_grad_(True)
    loss_of(logits).backward()
    return logits.grad


def test_gradient_matches_a_float64_reference():
    """The gradient flows through p_hat too: checked against the plain per-sample formula in
    float64; a reference with p_hat detached is far off."""
    g = torch.Generator().manual_seed(5)
    m, b, k = 2, 3, 4
    logits = torch.randn(m * b, k, generator=g) * 2
    labels = torch.randint(k, (b,), generator=g)
    got = _grad(lambda x: consistency_loss(x, labels, m, lam=2.0, eta=0.5), logits)
    exact = _grad(lambda x: _per_sample_reference(x, labels, m, 2.0, 0.5), logits.double())
    torch.testing.assert_close(got.double(), exact, atol=1e-6, rtol=1e-5)
    detached = _grad(lambda x: _detached_mean_reference(x, labels, m, 2.0, 0.5), logits.double())
    torch.testing.assert_close(
        _detached_mean_reference(logits, labels, m, 2.0, 0.5),
        _per_sample_reference(logits, labels, m, 2.0, 0.5),
    )  # same value, other gradient
    assert (detached - exact).abs().max() > 1e-2


def test_shape_mismatches_are_refused():
    with pytest.raises(ValueError, match="logits: expected shape"):
        consistency_loss(torch.zeros(8, 3), torch.zeros(4, dtype=torch.long), m=5, lam=1, eta=0)
    with pytest.raises(ValueError, match="labels: expected shape"):
        consistency_loss(torch.zeros(8, 3), torch.zeros(8, dtype=torch.long), m=2, lam=1, eta=0)


class Recorder(torch.nn.Module):
    """A linear classifier that remembers its last input."""

    def __init__(self, dim=12, classes=4):
        super().__init__()
        self.fc = torch.nn.Linear(dim, classes)
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.fc(x.flatten(1))


def _batch(b=6):
    g = torch.Generator().manual_seed(4)
    return torch.rand(b, 3, 2, 2, generator=g), torch.randint(4, (b,), generator=g)


def test_noisy_loss_repeats_each_image_and_adds_noise_from_the_generator():
    model, (images, labels) = Recorder(), _batch()
    loss_fn = noisy_classification_loss(sigma=0.5, num_classes=4, m=2, lam=2.0, eta=0.5)
    torch_state = torch.get_rng_state()
    loss = loss_fn(model, (images, labels), torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), torch_state)  # no global draws
    x = model.seen
    assert x.shape == (12, 3, 2, 2) and x.dtype == torch.float32
    noise = x - images.repeat(2, 1, 1, 1)
    expected = 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(noise, expected, atol=1e-6)
    assert loss.item() == pytest.approx(
        consistency_loss(model.fc(x.flatten(1)), labels, 2, 2.0, 0.5).item()
    )


def test_noisy_loss_without_noise_or_consistency_is_plain_cross_entropy():
    model, (images, labels) = Recorder(), _batch()
    loss_fn = noisy_classification_loss(sigma=0.0, num_classes=4, label_smoothing=0.1)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    loss = loss_fn(model, (images, labels), generator)
    assert torch.equal(generator.get_state(), state)  # sigma 0 draws no noise
    expected = F.cross_entropy(model.fc(images.flatten(1)), labels, label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item())


def test_noisy_loss_defaults_to_cross_entropy_over_the_copies():
    """Without lam and eta, m copies are plain noise augmentation: no consistency terms."""
    model, (images, labels) = Recorder(), _batch()
    loss = noisy_classification_loss(sigma=0.5, num_classes=4, m=2)(
        model, (images, labels), torch.Generator().manual_seed(0)
    )
    expected = F.cross_entropy(model.fc(model.seen.flatten(1)), labels.repeat(2))
    assert loss.item() == pytest.approx(expected.item())


def test_noise_is_float32_whatever_the_default_dtype():
    model, (images, labels) = Recorder(), _batch()
    loss_fn = noisy_classification_loss(sigma=0.5, num_classes=4, m=2)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        loss_fn(model, (images, labels), torch.Generator().manual_seed(0))
    finally:
        torch.set_default_dtype(default)
    assert model.seen.dtype == torch.float32


def test_mixup_is_seeded_by_the_generator_and_leaves_global_rngs_alone():
    loss_fn = noisy_classification_loss(
        sigma=0.25, num_classes=4, m=2, lam=2.0, eta=0.5, label_smoothing=0.1,
        mixup=0.8, cutmix=1.0,
    )  # fmt: skip
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    model, runs = Recorder(), []
    for _ in range(2):
        images, labels = _batch()
        loss = loss_fn(model, (images, labels), torch.Generator().manual_seed(7))
        assert torch.equal(images, _batch()[0])  # the caller's batch is not mixed in place
        runs.append((loss.item(), model.seen))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    images, labels = _batch()
    mixed = 0  # some batches are mixed (a cutmix box on a 2x2 image may be empty)
    for seed in range(5):
        loss_fn(model, (images, labels), torch.Generator().manual_seed(seed))
        noise = 0.25 * torch.randn((12, 3, 2, 2), generator=torch.Generator().manual_seed(seed))
        mixed += not torch.allclose(model.seen, images.repeat(2, 1, 1, 1) + noise, atol=1e-4)
    assert mixed > 0


@pytest.mark.parametrize("smoothing", [0.1, 0.0])
def test_mixup_mixes_the_noisy_copies_as_the_public_code(smoothing):
    """Copies first, noise next, mixup last: row r of the m*B noisy copies y is mixed with row
    m*B - 1 - r, so a mixed image carries two independent noises, and the m copies of a sample
    share the soft target lam * y_b + (1 - lam) * y_(B-1-b)."""
    m, b, k, sigma = 2, 6, 4, 0.5
    loss_fn = noisy_classification_loss(
        sigma=sigma, num_classes=k, m=m, lam=2.0, eta=0.5, label_smoothing=smoothing, mixup=1.0
    )
    model, (images, labels) = Recorder(), _batch(b)
    loss = loss_fn(model, (images, labels), torch.Generator().manual_seed(3))
    noise = sigma * torch.randn((m * b, 3, 2, 2), generator=torch.Generator().manual_seed(3))
    noisy = images.repeat(m, 1, 1, 1) + noise
    partner = noisy.flip(0)
    # lam by least squares from what the model saw
    lam = ((model.seen - partner) * (noisy - partner)).sum() / ((noisy - partner) ** 2).sum()
    assert 0.05 < lam < 0.95
    torch.testing.assert_close(model.seen, lam * noisy + (1 - lam) * partner)
    one_hot = F.one_hot(labels, k) * (1 - smoothing) + smoothing / k
    targets = lam * one_hot + (1 - lam) * one_hot.flip(0)  # one [B, K] target for all m copies
    expected = consistency_loss(model.fc(model.seen.flatten(1)), targets, m, 2.0, 0.5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mixup_needs_an_even_number_of_noisy_copies():
    images, labels = _batch(5)
    one_copy = noisy_classification_loss(sigma=0.25, num_classes=4, mixup=0.8)
    with pytest.raises(ValueError, match=r"even number of them: m \* batch size = 1 \* 5"):
        one_copy(Recorder(), (images, labels), torch.Generator())
    two_copies = noisy_classification_loss(sigma=0.25, num_classes=4, m=2, mixup=0.8)
    assert torch.isfinite(two_copies(Recorder(), (images, labels), torch.Generator()))


def _mixed(loss_fn, seed, b=6, m=2, sigma=0.5):
    """How one batch of 8x8 images was mixed: ("none" | "cutmix" | "mixup", lam). Cutmix copies
    a box of the partner row (every pixel is the noisy copy's or its partner's); mixup blends
    every pixel, lam * y + (1 - lam) * partner (lam by least squares)."""
    g = torch.Generator().manual_seed(100 + seed)
    images, labels = torch.rand(b, 3, 8, 8, generator=g), torch.randint(4, (b,), generator=g)
    model = Recorder(dim=3 * 8 * 8)
    loss_fn(model, (images, labels), torch.Generator().manual_seed(seed))
    noise = sigma * torch.randn((m * b, 3, 8, 8), generator=torch.Generator().manual_seed(seed))
    noisy = images.repeat(m, 1, 1, 1) + noise
    partner = noisy.flip(0)
    if torch.equal(model.seen, noisy):
        return "none", 1.0
    if ((model.seen == noisy) | (model.seen == partner)).all():
        return "cutmix", None
    lam = ((model.seen - partner) * (noisy - partner)).sum() / ((noisy - partner) ** 2).sum()
    torch.testing.assert_close(model.seen, lam * noisy + (1 - lam) * partner)
    return "mixup", lam.item()


@pytest.mark.parametrize(
    ("switch", "kinds"), [(None, {"mixup", "cutmix"}), (0.0, {"mixup"}), (1.0, {"cutmix"})]
)
def test_mixup_and_cutmix_alternate_by_the_switch_probability(switch, kinds):
    """Both on: each batch is mixed by cutmix with the switch probability (default 1/2), else by
    mixup."""
    extra = {} if switch is None else {"mixup_switch_prob": switch}
    loss_fn = noisy_classification_loss(
        sigma=0.5, num_classes=4, m=2, mixup=0.8, cutmix=1.0, **extra
    )
    assert {_mixed(loss_fn, seed)[0] for seed in range(12)} == kinds


def test_cutmix_alone_cuts_every_batch_and_mixup_prob_zero_mixes_none():
    cut_only = noisy_classification_loss(sigma=0.5, num_classes=4, m=2, cutmix=1.0)
    assert {_mixed(cut_only, seed)[0] for seed in range(12)} == {"cutmix"}
    never = noisy_classification_loss(sigma=0.5, num_classes=4, m=2, mixup=0.8, mixup_prob=0.0)
    assert {_mixed(never, seed)[0] for seed in range(4)} == {"none"}


def test_mixup_weights_follow_beta_alpha_alpha():
    """lam ~ Beta(mixup, mixup): at mixup = 0.2 most batches lean to one of the two images, which
    a uniform lam (Beta(1, 1)) does not."""
    alpha, trials = 0.2, 150
    loss_fn = noisy_classification_loss(sigma=0.5, num_classes=4, m=2, mixup=alpha)
    lams = [_mixed(loss_fn, seed)[1] for seed in range(trials)]
    assert kstest(lams, beta(alpha, alpha).cdf).pvalue > 1e-3
    assert kstest(lams, "uniform").pvalue < 1e-3  # the test can tell the two apart
