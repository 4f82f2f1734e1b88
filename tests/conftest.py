"""Fixtures shared by the whole test suite."""

import random

import numpy as np
import pytest
import torch
from hypothesis import settings

from ssvae.data.mnist import load_mnist
from ssvae.errors import SsvaeError

# Property tests draw the same examples on every run, so that a failure is a fact, not a roll of the dice.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.load_profile("repeatable")


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST (50,000 / 10,000 / 10,000) through the normal cached path.

    The first run on a machine downloads it (about 20 MB) into the cache; later runs read the
    cache. Set ``SSVAE_DATA`` to use another cache directory. Offline with no cache, the tests that
    need it are skipped with the reason.
    """
    try:
        return load_mnist()
    except SsvaeError as error:
        pytest.skip(f"MNIST is not cached and could not be fetched: {error}")


@pytest.fixture(autouse=True)
def torch_left_as_found():
    """Training in-process (``main([...])``) sets torch's threads and seeds every random source; each
    test gets them back as it found them, so that no test depends on which ran before it."""
    threads, torch_state = torch.get_num_threads(), torch.random.get_rng_state()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    yield
    torch.set_num_threads(threads)
    torch.random.set_rng_state(torch_state)
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def pytest_collection_modifyitems(items):
    # Every test that reads real MNIST may have to fetch it first.
    for item in items:
        if "mnist" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.network)
