import numpy as np
import pytest

from ssvae.data.labels import balanced_label_split, partial_labels
from ssvae.errors import SsvaeError


def test_split_is_balanced_and_repeatable(mnist):
    first = balanced_label_split(mnist.train_labels, 100, 10, seed=3)
    again = balanced_label_split(mnist.train_labels, 100, 10, seed=3)
    other = balanced_label_split(mnist.train_labels, 100, 10, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len(np.unique(first)) == 100
    assert np.bincount(mnist.train_labels[first], minlength=10).tolist() == [10] * 10


def test_unlabelled_examples_carry_minus_one(mnist):
    chosen = balanced_label_split(mnist.train_labels, 20, 10, seed=0)
    partial = partial_labels(mnist.train_labels, chosen)
    assert (partial >= 0).sum() == 20
    assert set(np.unique(partial)) <= set(range(-1, 10))
    np.testing.assert_array_equal(partial[chosen], mnist.train_labels[chosen])


@pytest.mark.parametrize("n, reason", [(105, "multiple of the 10 classes"), (5, "multiple of the 10 classes"),
                                       (60_000, "only 50000")])
def test_impossible_label_counts_say_why(mnist, n, reason):
    with pytest.raises(SsvaeError, match=reason):
        balanced_label_split(mnist.train_labels, n, 10, seed=0)
