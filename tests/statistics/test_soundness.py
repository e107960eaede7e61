"""Statistical soundness of certification (../shared/STATISTICS.md, "How to test soundness").

Base classifier: a half-space on one pixel, label "A" iff the noisy pixel is below t. Under
Gaussian noise its smoothed classifier at an image with pixel x < t is "A" with exact
certified radius t − x (clipping to [0, 1] does not change which side of t a value is on).
Certifying it K times with fresh seeds, the number of false certificates (a label other
than "A", or a radius above t − x) must stay within the binomial(K, α) upper quantile.
A negative control shows the harness catches an unsound bound.
"""

import numpy as np
import pytest
from scipy.stats import binom, norm

import robust_api
from robust_api import ABSTAIN, RobustAPI

THRESHOLD = 0.5
NOISE_SD = 0.25
ALPHA = 0.05
K = 4000
N0, N = 10, 100
# false-alarm probability of the test itself: 1e-4 per configuration
LIMIT = int(binom.ppf(1 - 1e-4, K, ALPHA))


def halfspace(batch):
    return np.where(batch[:, 0, 0, 0] < THRESHOLD, "A", "B").tolist()


def _is_false(label, radius, true_radius):
    return label is not ABSTAIN and (label != "A" or radius > true_radius)


def _run(pixel, seed_base):
    api = RobustAPI(halfspace, log=False)
    image = np.full((1, 1, 1), pixel, dtype=np.float32)
    return [api.certify(image, noise_sd=NOISE_SD, N0=N0, N=N, alpha=ALPHA, seed=seed_base + k) for k in range(K)]


@pytest.mark.parametrize("pixel", [0.30, 0.40, 0.48])
def test_cohen_certify_is_sound(pixel):
    true_radius = THRESHOLD - pixel
    certificates = _run(pixel, seed_base=int(pixel * 1e6))
    false_count = sum(_is_false(c.label, c.radius, true_radius) for c in certificates)
    assert false_count <= LIMIT, f"{false_count} false certificates out of {K} at alpha={ALPHA} (limit {LIMIT})"
    # the harness has power: the bound is not vacuous, most runs certify something when p_A is large
    certified = sum(c.label == "A" for c in certificates)
    p_a = norm.cdf(true_radius / NOISE_SD)
    if p_a > 0.75:
        assert certified > 0.9 * K
    # offline re-certification with fewer samples and another alpha is sound too
    offline_alpha = 0.1
    offline = [robust_api.RobustAPI("halfspace", online=False).certify(c.logs, N=50, alpha=offline_alpha) for c in certificates]
    offline_false = sum(_is_false(c.label, c.radius, true_radius) for c in offline)
    assert offline_false <= int(binom.ppf(1 - 1e-4, K, offline_alpha))


def test_predict_is_sound():
    # PREDICT returns a label other than g(x) = "A" with probability <= alpha
    api = RobustAPI(halfspace, log=False)
    image = np.full((1, 1, 1), 0.45, dtype=np.float32)  # p_A = Phi(0.2) ~ 0.58: many abstentions
    wrong = sum(api.predict(image, N=100, noise_sd=NOISE_SD, alpha=ALPHA, seed=k).label == "B" for k in range(K))
    assert wrong <= LIMIT


def test_negative_control_point_estimate_is_caught():
    """A radius from the point estimate p̂ = n_A / n (no confidence bound) must fail the same check."""
    true_radius = THRESHOLD - 0.40
    certificates = _run(0.40, seed_base=777)
    false_count = 0
    for c in certificates:
        p_hat = c.counts.get("A", 0) / c.n
        radius = NOISE_SD * norm.ppf(p_hat) if p_hat > 0.5 else 0.0
        false_count += radius > true_radius
    assert false_count > LIMIT
