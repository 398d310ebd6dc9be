"""CERTIFY / PREDICT on classifiers whose smoothed probabilities are known in closed form.

Statistical tests are seeded and their tolerances come from the binomial distribution: a
correct implementation fails each of them with probability below 1e-4 (then, being seeded,
it passes deterministically); a broken bound fails them with near certainty.
"""

import math

import pytest
import torch
from scipy.stats import binom, norm

from bench import Smooth
from bench.certify import stats
from bench.contract import DatasetInfo
from bench.errors import ModelError
from methods.dummy import ConstantClassifier, LinearClassifier, linear_direction

INFO = DatasetInfo("toy", (1, 8, 8), 10, (0.5,), (0.25,))


def linear_at_distance(distance: float, sigma: float):
    """A pixel-direction linear classifier and an image at a given signed distance from it."""
    u, t = linear_direction(INFO, "pixel", 5, 0.5)
    f = LinearClassifier(u, t, lo=2, hi=7, num_classes=10)
    x = torch.full(INFO.shape, 0.3)
    x.view(-1)[5] = t + distance
    assert f.distance(x) == pytest.approx(abs(distance))
    return f, x


def test_constant_classifier_radius_is_exact():
    sigma, n, alpha = 0.5, 10_000, 0.001
    smooth = Smooth(ConstantClassifier(4, 10), 10, sigma)
    label, radius = smooth.certify(torch.rand(INFO.shape), 100, n, alpha, 1000)
    assert label == 4
    assert radius == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)), rel=1e-12)


def test_certified_radius_exceeds_truth_no_more_often_than_alpha():
    """Coverage: P(reported radius > true radius) <= alpha for every image.

    Two classes at p_A = 0.9, so selection is never wrong here: the class-selection rule is
    covered by tests/test_soundness.py (ten tied classes)."""
    sigma, alpha, n0, n, trials = 0.25, 0.05, 20, 200, 1000
    true_radius = sigma * norm.ppf(0.9)  # p_A = 0.9
    f, x = linear_at_distance(true_radius, sigma)
    smooth = Smooth(f, 10, sigma)
    exceed = naive_exceed = 0
    for i in range(trials):
        cert = smooth.certify_record(x, n0, n, alpha, 500, seed=123, index=i)
        assert cert.top_class == 7
        exceed += cert.radius > true_radius
        naive = sigma * norm.ppf(min(cert.count / n, 1 - 1e-12))  # point estimate, no bound
        naive_exceed += naive > true_radius
    # Largest count a valid bound produces with probability >= 1 - 1e-4.
    limit = binom.ppf(1 - 1e-4, trials, alpha)
    assert exceed <= limit, f"{exceed} of {trials} radii exceed the truth (limit {limit})"
    assert naive_exceed > limit  # the test has power: an invalid certificate fails it


def test_radius_approaches_truth_as_n_grows():
    sigma, alpha = 0.25, 0.001
    p = 0.95
    true_radius = sigma * norm.ppf(p)
    f, x = linear_at_distance(-true_radius, sigma)  # below the hyperplane: class 2
    smooth = Smooth(f, 10, sigma)
    means = []
    for n in (100, 1_000, 10_000, 100_000):
        radii = [smooth.certify_record(x, 100, n, alpha, 10_000, seed=7, index=i).radius
                 for i in range(5)]
        assert max(radii) <= true_radius
        # p_lower >= p - (z_alpha + 4.5) * sd except with probability < 1e-5 per image.
        sd = math.sqrt(p * (1 - p) / n)
        floor = sigma * norm.ppf(max(p - (norm.isf(alpha) + 4.5) * sd, 0.5))
        assert min(radii) >= floor
        means.append(sum(radii) / len(radii))
    assert means == sorted(means)
    assert true_radius - means[-1] < 0.02 * true_radius


def test_identical_for_any_batch_size_and_prefix_stable():
    f, x = linear_at_distance(0.1, 0.5)
    smooth = Smooth(f, 10, 0.5)
    records = [smooth.certify_record(x, 100, 3000, 0.001, b, seed=3, index=11)
               for b in (1, 7, 256, 1000, 5000)]
    assert all(r.counts_estimate == records[0].counts_estimate for r in records)
    assert all(r.radius == records[0].radius for r in records)


def test_selection_and_estimation_are_independent_streams():
    f, x = linear_at_distance(0.05, 0.5)
    seen = []

    def recording(batch):  # keeps every noisy copy f is asked about
        seen.append(batch.clone())
        return f(batch)

    Smooth(recording, 10, 0.5).certify_record(x, 50, 300, 0.001, 64, seed=1, index=0)
    select, estimate = torch.cat(seen)[:50].flatten(1), torch.cat(seen)[50:].flatten(1)
    assert estimate.shape[0] == 300
    # Disjoint noise: no estimation sample equals any selection sample.
    assert not (select[:, None, :] == estimate[None, :, :]).all(-1).any()
    smooth = Smooth(f, 10, 0.5)
    a = smooth.certify_record(x, 10, 2000, 0.001, 100, seed=1, index=0)
    b = smooth.certify_record(x, 400, 2000, 0.001, 100, seed=1, index=0)
    assert a.counts_estimate == b.counts_estimate  # estimation never reuses selection samples
    assert sum(a.counts_select) == 10 and sum(b.counts_select) == 400
    other = smooth.certify_record(x, 10, 2000, 0.001, 100, seed=1, index=1)
    assert other.counts_estimate != a.counts_estimate  # each image has its own noise


def test_noise_has_the_right_scale():
    """p(f = hi) for a point on the hyperplane's positive side matches Phi(d / sigma)."""
    sigma, d, n = 0.5, 0.2, 200_000
    f, x = linear_at_distance(d, sigma)
    counts = Smooth(f, 10, sigma).sample_counts(x, n, 10_000, seed=0, index=0, phase=1)
    p = norm.cdf(d / sigma)
    assert abs(int(counts[7]) / n - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_predict():
    f, x = linear_at_distance(0.5, 0.25)
    smooth = Smooth(f, 10, 0.25)
    assert smooth.predict(x, 1000, 0.001, 500) == 7
    f0, x0 = linear_at_distance(0.0, 0.25)  # on the hyperplane: a coin flip
    assert Smooth(f0, 10, 0.25).predict(x0, 1000, 0.001, 500) == Smooth.ABSTAIN


def test_generator_argument_and_logit_networks():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    smooth = Smooth(net, 10, 0.25)
    x = torch.rand(INFO.shape)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert smooth.certify(x, 10, 100, 0.001, 50, generator=g1) == smooth.certify(
        x, 10, 100, 0.001, 50, generator=g2)


def test_nan_outputs_raise_model_error():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.nn.init.constant_(net[1].weight, float("nan"))
    with pytest.raises(ModelError, match="NaN"):
        Smooth(net, 10, 0.25).certify(torch.rand(INFO.shape), 10, 100, 0.001, 50)


def test_max_radius_agrees_with_constant_certificate():
    smooth = Smooth(ConstantClassifier(0, 10), 10, 1.0)
    _, radius = smooth.certify(torch.rand(INFO.shape), 1, 1000, 0.001, 1000)
    assert radius == pytest.approx(stats.max_radius(1.0, 1000, 0.001), rel=1e-12)


@pytest.mark.parametrize("bad,needle", [
    (torch.rand(1, 8, 8) * 2 - 1, "put any normalization inside the base classifier"),
    ((torch.rand(1, 8, 8) * 255).to(torch.uint8), "divide by 255"),
    (torch.rand(2, 2, 1, 8, 8), "expected one image"),
    (torch.rand(1, 8, 8).index_fill_(1, torch.tensor([3]), float("nan")),
     "the image has NaN values"),
])
def test_rejects_inputs_outside_the_pixel_contract(bad, needle):
    with pytest.raises(ValueError, match=needle):
        Smooth(ConstantClassifier(0, 10), 10, 0.25).certify(bad, 10, 100, 0.001, 50)


def test_a_nan_image_of_a_batch_is_named():
    x = torch.rand(3, 1, 8, 8)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="image 1 of the batch has NaN values"):
        Smooth(ConstantClassifier(0, 10), 10, 0.25).certify_batch(x, 10, 100, 0.001, 50)


class ViewNet(torch.nn.Module):
    """Cohen-era code: a convolution, then ``view`` to flatten (needs a contiguous activation);
    records the strides of every batch it gets."""

    def __init__(self, channels: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 64, 10)
        self.strides: set[tuple[int, ...]] = set()

    def forward(self, x):
        self.strides.add(x.stride())
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


@pytest.mark.parametrize("channels", [1, 3])
def test_a_permuted_image_reaches_the_model_as_a_plain_nchw_batch(channels):
    """A channels-last tensor (an HWC array permuted, or a one-channel ``ToTensor`` output with
    strides (1, W, 1)) certifies as its contiguous copy, and the model sees row-major batches."""
    torch.manual_seed(1)
    hwc = torch.rand(8, 8, channels)
    permuted = hwc.permute(2, 0, 1)
    net = ViewNet(channels)
    smooth = Smooth(net, 10, 0.25)
    plain = smooth.certify_record(permuted.contiguous(), 10, 200, 0.001, 64, index=0)
    for x in (permuted, permuted[None], hwc[None].permute(0, 3, 1, 2)):
        cert = smooth.certify_record(x, 10, 200, 0.001, 64, index=0)
        assert cert.counts_estimate == plain.counts_estimate
    batch = torch.stack([hwc, hwc]).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last strides
    labels, _ = smooth.certify_batch(batch, 10, 200, 0.001, 64, index=0)
    assert labels.tolist() == [plain.prediction] * 2
    assert net.strides == {(channels * 64, 64, 8, 1)}


def test_float64_tensors_and_lists_are_images_too():
    """numpy float64 was converted; a torch float64 image and a nested list are as well."""
    net = ViewNet(1)  # float32 weights: a float64 batch would not run
    smooth = Smooth(net, 10, 0.25)
    x = torch.rand(1, 8, 8)
    ref = smooth.certify_record(x, 10, 100, 0.001, 50, index=3)
    for same in (x.double(), x.numpy().astype("float64"), x.tolist()):
        cert = smooth.certify_record(same, 10, 100, 0.001, 50, index=3)
        assert cert.counts_estimate == ref.counts_estimate
    with pytest.raises(TypeError, match="torch tensor, numpy array or list"):
        smooth.certify("not an image", 10, 100, 0.001, 50)


def test_without_index_every_call_draws_fresh_noise_and_index_pins_it():
    """Cohen's interface: calls without ``index=`` never share a stream (a loop over images
    would otherwise correlate their noise); ``torch.manual_seed`` reproduces them; ``seed=``
    with ``index=`` is reproducible whatever ran before."""
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, z):
            seen.append(z.clone())
            return torch.zeros(z.shape[0], 10)

    smooth = Smooth(Spy(), 10, 0.25)
    x = torch.full(INFO.shape, 0.5)

    def draws(**kw):
        seen.clear()
        smooth.certify(x, 5, 20, 0.001, 25, **kw)
        return torch.cat(seen)

    torch.manual_seed(0)
    a, b = draws(), draws()
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    assert torch.equal(draws(), a)
    assert torch.equal(draws(seed=3, index=7), draws(seed=3, index=7))
    assert not torch.equal(draws(seed=3, index=7), draws(seed=3, index=8))
    assert smooth.certify_record(x, 5, 20, 0.001, 25).idx == -1
