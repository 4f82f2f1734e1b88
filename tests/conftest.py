"""Fixtures shared by the whole test suite."""

import pytest
from hypothesis import settings

from ssvae.data.mnist import load_mnist

# Property tests draw the same examples on every run, so that a failure is a fact, not a roll of the dice.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.load_profile("repeatable")


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST (50,000 / 10,000 / 10,000) through the normal cached path.

    The first run on a machine downloads it (about 20 MB) into the cache; later runs read the
    cache. Set ``SSVAE_DATA`` to use another cache directory.
    """
    return load_mnist()
