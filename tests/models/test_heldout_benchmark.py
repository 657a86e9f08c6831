"""benchmarks/heldout.py: the two-level bootstrap of a mean difference over fits, against a loop."""

import numpy as np
import pytest
from benchmark_script import load_benchmark

heldout = load_benchmark("heldout")


def test_the_pooled_mean_resamples_the_fits_and_shares_each_sample_resample_against_a_loop():
    rng = np.random.default_rng(3)
    diffs = rng.normal(0.02, 0.01, size=(5, 41))  # 5 fits; column 0 the split, then 40 sample resamples
    got = heldout.pooled(diffs, seed=7)
    fits = np.random.default_rng(7).integers(0, 5, size=(40, 5))
    both, fit_only = [], []
    for r in range(40):
        both.append(sum(diffs[fits[r, j], r + 1] for j in range(5)) / 5)  # these fits, on sample resample r
        fit_only.append(sum(diffs[fits[r, j], 0] for j in range(5)) / 5)
    samples = [sum(diffs[j, r + 1] for j in range(5)) / 5 for r in range(40)]
    assert got["difference"] == pytest.approx(diffs[:, 0].mean(), abs=5e-5)
    assert got["interval"] == pytest.approx(list(np.percentile(both, [2.5, 97.5])), abs=5e-5)
    assert got["fits_interval"] == pytest.approx(list(np.percentile(fit_only, [2.5, 97.5])), abs=5e-5)
    assert got["samples_interval"] == pytest.approx(list(np.percentile(samples, [2.5, 97.5])), abs=5e-5)
    assert got["ahead"] == np.mean(np.array(both) > 0) and got["fits"] == 5


def test_identical_fits_leave_only_the_samples_spread():
    row = np.linspace(-0.01, 0.03, 101)
    got = heldout.pooled(np.tile(row, (3, 1)))
    assert got["fits_interval"] == [round(row[0], 4)] * 2
    assert got["interval"] == got["samples_interval"]
