"""The vectorised bootstrap against scipy.stats.bootstrap and np.percentile."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lens_core.stats.bootstrap import bootstrap_means, bootstrap_percentiles, count_chunks, mean_ci, percentile_ci


def test_counts_are_resamples():
    for _, counts in count_chunks(37, 500, seed=3):
        assert counts.shape[1] == 37
        assert np.all(counts.sum(axis=1) == 37)


def test_mean_ci_agrees_with_scipy_within_mc_error():
    rng = np.random.default_rng(0)
    x = rng.beta(2, 5, size=300)
    _, lo, hi = mean_ci(x, b=4000, seed=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=2)
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert abs(lo[0] - ref.confidence_interval.low) < 0.08 * width
    assert abs(hi[0] - ref.confidence_interval.high) < 0.08 * width


def test_paired_delta_ci_agrees_with_scipy_paired():
    rng = np.random.default_rng(1)
    base = rng.random(250)
    a = np.clip(base + rng.normal(0, 0.1, 250), 0, 1)
    b = np.clip(base + 0.03 + rng.normal(0, 0.1, 250), 0, 1)
    dist = bootstrap_means(np.vstack([a, b]), b=4000, seed=5)  # shared resamples = paired
    lo, hi = percentile_ci(dist[1] - dist[0])
    ref = stats.bootstrap(
        (a, b), lambda x, y: np.mean(y - x), paired=True, n_resamples=4000, method="percentile", random_state=7
    ).confidence_interval
    width = ref.high - ref.low
    assert abs(lo - ref.low) < 0.08 * width and abs(hi - ref.high) < 0.08 * width
    # pairing matters: the unpaired CI of the delta would be much wider
    assert width < 0.6 * (np.std(a) + np.std(b)) / np.sqrt(250) * 2 * 1.96


@pytest.mark.parametrize("n", [1, 2, 7, 150])
def test_percentiles_from_counts_equal_numpy_on_resample(n):
    rng = np.random.default_rng(n)
    x = rng.lognormal(3, 1, size=n)
    qs = (50, 95, 99)
    got = bootstrap_percentiles(x, qs, b=64, seed=11)
    # Rebuild the same resamples explicitly from the same counts.
    for sl, counts in count_chunks(n, 64, seed=11):
        for r in range(counts.shape[0]):
            sample = np.repeat(x, counts[r].astype(int))
            np.testing.assert_allclose(got[:, sl.start + r], np.percentile(sample, qs), rtol=0, atol=1e-9)


def test_zero_queries_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one query"):
        bootstrap_means(np.zeros((1, 0)))


def test_bootstrap_means_use_the_counts_of_count_chunks():
    """Threaded, centred float32 product: the same resamples as count_chunks; means agree
    to ~1e-6 of the spread (far below the Monte-Carlo error); constant rows are exact."""
    rng = np.random.default_rng(3)
    v = np.vstack([rng.random(5000), rng.lognormal(3, 1, 5000), (rng.random(5000) < 0.3) * 1.0])
    got = bootstrap_means(v, b=2000, seed=9)
    want = np.empty_like(got)
    for sl, counts in count_chunks(5000, 2000, seed=9):
        want[:, sl] = (counts @ v.T).T / 5000
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * v.std(axis=1).max())
    const = bootstrap_means(np.vstack([np.full(5000, 0.25), v[0]]), b=50, seed=9)
    assert (const[0] == 0.25).all()
    assert np.array_equal(got, bootstrap_means(v, b=2000, seed=9))  # deterministic


def test_resampled_means_stay_in_the_data_range():
    """Metrics bounded by 1 on small slices (mostly ones): no resampled mean lands above 1
    by rounding (the scores checks refuse CI ends outside [0, 1] beyond 1e-9; a float32
    product without the clip to the data range did, by ~1e-8)."""
    for n in (7, 30, 90, 91, 270):
        for k in (1, 2, 3):
            x = np.ones(n)
            x[:k], x[k : 2 * k] = 0.0, 1 / 3
            dist = bootstrap_means(x, b=2000, seed=1)
            assert dist.max() <= 1 + 1e-12 and dist.min() >= -1e-12
