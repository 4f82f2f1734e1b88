"""The interval beside every accuracy: Wilson's, against values worked out by hand and by simulation."""

import numpy as np
import pytest

from ssvae.intervals import SMALL_TEST_SET, accuracy_figures, describe_accuracy, wilson_interval


def test_wilson_interval_matches_the_formula_worked_by_hand():
    # 8 of 10: p = 0.8, z = 1.96; centre (0.8 + 0.19208) / 1.38416, half-width 1.96 sqrt(0.016 + 0.0096) / 1.38416
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_stays_inside_zero_and_one_at_the_extremes():
    assert wilson_interval(0, 10)[0] == 0.0 and 0.25 < wilson_interval(0, 10)[1] < 0.35
    assert wilson_interval(10, 10)[1] == 1.0 and 0.65 < wilson_interval(10, 10)[0] < 0.75
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_covers_the_true_accuracy_about_95_times_in_100():
    rng = np.random.default_rng(0)
    for n, p in [(20, 0.8), (100, 0.7), (2000, 0.93)]:
        draws = rng.binomial(n, p, size=4000)
        covered = np.mean([lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in draws)])
        assert 0.92 <= covered <= 0.98, (n, p, covered)


def test_a_small_test_set_is_called_small_with_its_count():
    result = accuracy_figures("test", 8, 10)
    text = describe_accuracy(result, "test")
    assert text.startswith("0.8000 (8 of 10 images; 95% interval 0.490-0.943")
    assert "a small test set" in text
    large = accuracy_figures("test", 9000, 10000)
    assert "small" not in describe_accuracy(large, "test") and SMALL_TEST_SET <= 10000


def test_results_written_before_counts_were_kept_print_the_bare_figure():
    assert describe_accuracy({"test_accuracy": 0.91}, "test") == "0.9100"
