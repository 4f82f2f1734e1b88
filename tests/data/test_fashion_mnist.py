"""Fashion-MNIST as a built-in data set: the installed Debian copy, the cache, folders, and failures."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ssvae.cli import main
from ssvae.data import mnist as data_module
from ssvae.data.mnist import FASHION_SYSTEM_DIRS, identify_idx_folder, load_fashion_mnist
from ssvae.errors import SsvaeError

INSTALLED = Path(FASHION_SYSTEM_DIRS[0])
needs_installed_copy = pytest.mark.skipif(
    not INSTALLED.is_dir(), reason=f"Fashion-MNIST is not installed in {INSTALLED} (Debian: apt-get install "
    "dataset-fashion-mnist) and the tests fetch nothing from the network")


@pytest.fixture
def closed_mirrors(monkeypatch):
    """Fashion-MNIST's mirrors point at a closed local port: only local sources can answer."""
    spec = dataclasses.replace(data_module.FASHION_MNIST, mirrors=("http://127.0.0.1:9/",))
    monkeypatch.setitem(data_module.DATASETS, "fashion-mnist", spec)
    return spec


@pytest.fixture(scope="module")
def fashion_cache(tmp_path_factory):
    """A cache filled from the installed copy, mirrors closed, shared by this module's tests."""
    if not INSTALLED.is_dir():
        pytest.skip(f"Fashion-MNIST is not installed in {INSTALLED} (Debian: apt-get install dataset-fashion-mnist)")
    cache_dir = tmp_path_factory.mktemp("fashion-cache")
    patch = pytest.MonkeyPatch()
    patch.setitem(data_module.DATASETS, "fashion-mnist",
                  dataclasses.replace(data_module.FASHION_MNIST, mirrors=("http://127.0.0.1:9/",)))
    lines = []
    try:
        data = load_fashion_mnist(cache_dir=cache_dir, log=lines.append)
    finally:
        patch.undo()
    return cache_dir, data, lines


@needs_installed_copy
def test_the_installed_copy_is_found_after_the_mirrors_fail_and_is_cached(fashion_cache):
    cache_dir, data, lines = fashion_cache
    assert [line.split(" failed")[0] for line in lines[:1]] == ["fashion-mnist: mirror http://127.0.0.1:9/"]
    assert lines[-1] == ("fashion-mnist: fetched from the installed copy in /usr/share/datasets/fashion-mnist, "
                         f"checked against its sha256 sums, cached at {cache_dir / 'fashion-mnist.npz'}")
    for split, n in {"train": 50000, "val": 10000, "test": 10000}.items():
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        assert images.shape == (n, 784) and images.dtype == np.uint8 and labels.dtype == np.int64
    # The known first labels (an ankle boot, then two T-shirts) and a balanced test set.
    assert data.train_labels[:5].tolist() == [9, 0, 0, 3, 0]
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    # The next load is the cache's alone, silent.
    again = []
    assert np.array_equal(load_fashion_mnist(cache_dir=cache_dir, log=again.append).test_images, data.test_images)
    assert again == []


@needs_installed_copy
def test_a_folder_of_its_idx_files_is_read_as_fashion_mnist(tmp_path, closed_mirrors):
    from ssvae.data.loading import is_image_folder, load_data

    folder = tmp_path / "idx"
    shutil.copytree(INSTALLED, folder)
    assert identify_idx_folder(folder) == "fashion-mnist" and not is_image_folder(str(folder))
    data = load_data(str(folder), log=lambda *a: None)
    assert data.name == "fashion-mnist" and data.train_labels[:3].tolist() == [9, 0, 0]


@needs_installed_copy
def test_a_wrong_file_in_a_named_folder_is_an_error_that_names_it(tmp_path, closed_mirrors):
    folder = tmp_path / "idx"
    shutil.copytree(INSTALLED, folder)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(SsvaeError) as info:
        load_fashion_mnist(folder, cache_dir=tmp_path / "cache", log=lambda line: None)
    assert "t10k-labels-idx1-ubyte.gz" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_every_source_failing_says_how_to_get_it(tmp_path, closed_mirrors, monkeypatch):
    spec = dataclasses.replace(closed_mirrors, system_dirs=(str(tmp_path / "not-installed"),))
    monkeypatch.setitem(data_module.DATASETS, "fashion-mnist", spec)
    lines = []
    with pytest.raises(SsvaeError) as info:
        load_fashion_mnist(cache_dir=tmp_path / "cache", log=lines.append)
    message = str(info.value)
    for expected in ("could not get Fashion-MNIST", "127.0.0.1:9", "not-installed", "fashion-mnist.npz",
                     "ssvae data fetch fashion-mnist --from", "apt-get install dataset-fashion-mnist"):
        assert expected in message
    assert len([line for line in lines if "failed" in line]) == 2


def test_an_unknown_data_set_name_is_refused_with_the_choices():
    with pytest.raises(SsvaeError, match="mnist, fashion-mnist"):
        data_module.load_mnist(name="kmnist", log=lambda line: None)


@needs_installed_copy
def test_a_short_run_on_fashion_mnist_beats_chance_and_speaks_of_its_classes(fashion_cache, tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.setenv("SSVAE_DATA", str(fashion_cache[0]))
    run = tmp_path / "run"
    assert main(["train", "--data", "fashion-mnist", "--model", "m2", "--epochs", "2", "--max-unlabelled", "2000",
                 "--labelled-batch", "10", "--device", "cpu", "--compile", "off", "--bf16", "off", "--no-report",
                 "--quiet", "--out", str(run)]) == 0
    result = json.loads((run / "result.json").read_text())
    # 100 labels and 2,000 unlabelled images for two epochs: well above chance (0.1), on all 10,000 test images.
    assert result["test_accuracy"] > 0.4 and result["test_images"] == 10000 and result["skipped_steps"] == 0
    low, high = result["test_interval"]
    assert low < result["test_accuracy"] < high and high - low < 0.02
    assert json.loads((run / "config.json").read_text())["data"]["class_names"][9] == "Ankle boot"
    printed = capsys.readouterr().out
    assert "of 10000 images; 95% interval" in printed
