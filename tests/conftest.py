"""Fixtures shared by the whole test suite."""

import pytest

from ssvae.data.mnist import load_mnist


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST (50,000 / 10,000 / 10,000) through the normal cached path.

    The first run on a machine downloads it (about 20 MB) into the cache; later runs read the
    cache. Set ``SSVAE_DATA`` to use another cache directory.
    """
    return load_mnist()
