"""A folder of the user's own images as a data set, labelled by file name.

A file whose name (without its extension) matches the label pattern is labelled with the pattern's
``label`` group; every other image is unlabelled. The default pattern is the one the original
Chainer implementation promised, ``{label}_{anything}.png``::

    digits/
        3_0001.png        labelled "3"
        7_scan-12.jpg     labelled "7"
        holiday.png       unlabelled
        IMG_0042.PNG      unlabelled (the prefix is not a label: it is not made of digits)

Class names need not be digits (``--label-pattern '(?P<label>[a-z]+)-.*'``); they are mapped to
contiguous class indices in sorted order (numerically when every name is a number), and the names
are kept in the run's config so that predictions speak of them.

Every image is decoded with Pillow, converted to grey or RGB, resized to one size (by default the
most common size in the folder) and stored as uint8 rows of H*W*C values, the same layout as MNIST.
Problems are found before training starts: every file that cannot be used is listed with its reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import SsvaeError
from .splits import DataSplits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_LABEL_PATTERN = r"(?P<label>[0-9]+)_.+"
# Files at least this large on average (photographs) are decoded by several threads; small ones
# (28x28 PNGs of a few hundred bytes) decode faster in one: 5.2 s against 11 s for 50,000 on 2 cores.
THREADED_DECODE_BYTES = 32_768
# How many bad files a message lists before it only counts the rest.
LISTED_BAD_FILES = 20


@dataclass(frozen=True)
class FolderOptions:
    """How a folder is read; all of it is saved with a run, so that predict reads new images alike."""

    label_pattern: str = DEFAULT_LABEL_PATTERN
    channels: int = 1  # 1: grey, 3: RGB
    image_size: tuple[int, int] | None = None  # (width, height); None: the folder's most common size
    skip_bad: bool = False

    def __post_init__(self):
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))

    def validate(self) -> None:
        if self.channels not in (1, 3):
            raise SsvaeError(f"--channels {self.channels}: must be 1 (grey) or 3 (colour)")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise SsvaeError(f"--image-size {self.image_size}: must be two positive numbers, width and height")
        try:
            compiled = re.compile(self.label_pattern)
        except re.error as error:
            raise SsvaeError(f"--label-pattern {self.label_pattern!r}: not a regular expression ({error})") from None
        if "label" not in compiled.groupindex:
            raise SsvaeError(f"--label-pattern {self.label_pattern!r}: needs a named group (?P<label>...) "
                             f"that captures the class name")


@dataclass(frozen=True)
class BadFile:
    path: Path
    reason: str


def list_images(folder: Path) -> list[Path]:
    """Every file under ``folder`` (subfolders included) whose extension is an image format, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SsvaeError(f"{folder}: no such folder of images")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise SsvaeError(f"{folder}: holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                         f"put the images there or point --data at the folder that has them")
    return found


def label_of(path: Path, pattern: re.Pattern) -> str | None:
    """The class name in ``path``'s file name, or None if the name does not match ``pattern``."""
    match = pattern.fullmatch(path.stem)
    return match.group("label") if match else None


def class_names_in_order(names) -> list[str]:
    """Distinct class names, sorted numerically when all are whole numbers, else alphabetically."""
    distinct = set(names)
    if all(n.isdigit() for n in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def read_image(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """One image as a uint8 array of shape (height, width, channels); raises ValueError with a reason."""
    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits
                values = np.asarray(image, dtype=np.float64)
                top = values.max() if values.max() > 0 else 1.0
                image = Image.fromarray((values / top * 255).round().astype(np.uint8))
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None and image.size != tuple(size):
                image = image.resize(tuple(size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read (wrong extension or corrupt header)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"corrupt or truncated image ({error})") from None
    return array.reshape(array.shape[0], array.shape[1], channels)


def header_of(path: Path) -> tuple[tuple[int, int], str] | None:
    """((width, height), mode) from the file's header, or None if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except Exception:  # any failure is reported when the image is decoded
        return None


def describe_conversions(paths: list[Path], headers: list, size, channels: int) -> str | None:
    """A note naming the images that were resized or converted to the common size and mode."""
    target_mode = "L" if channels == 1 else "RGB"
    resized = [p for p, h in zip(paths, headers) if h is not None and size is not None and h[0] != tuple(size)]
    modes = Counter(h[1] for h in headers if h is not None and h[1] != target_mode)
    if not resized and not modes:
        return None
    parts = []
    if resized:
        shown = ", ".join(str(p) for p in resized[:5]) + (f" and {len(resized) - 5} more" if len(resized) > 5 else "")
        parts.append(f"resized {len(resized)} image(s) to {size[0]}x{size[1]} ({shown})")
    if modes:
        parts.append(f"converted to {'grey' if channels == 1 else 'RGB'}: "
                     + ", ".join(f"{n} from mode {m}" for m, n in sorted(modes.items())))
    return "; ".join(parts)


def describe_bad_files(bad: list[BadFile]) -> str:
    lines = [f"  {b.path}: {b.reason}" for b in bad[:LISTED_BAD_FILES]]
    if len(bad) > LISTED_BAD_FILES:
        lines.append(f"  ... and {len(bad) - LISTED_BAD_FILES} more")
    return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """The decoded images of a folder: uint8 rows (N, H*W*C), their paths and labels (-1: unlabelled)."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    class_names: list[str]
    image_shape: tuple[int, ...]  # (height, width) or (height, width, 3)
    skipped: list[BadFile]


def read_folder(folder: Path, options: FolderOptions = FolderOptions(), class_names: list[str] | None = None,
                log=print, threads: int | None = None) -> ImageFolder:
    """Decode every image under ``folder`` (see :func:`read_images`)."""
    return read_images(list_images(folder), options, class_names, log, threads, where=str(folder))


def read_images(paths: list[Path], options: FolderOptions = FolderOptions(), class_names: list[str] | None = None,
                log=print, threads: int | None = None, where: str = "the images given") -> ImageFolder:
    """Decode ``paths``; stop with one message naming every bad file unless ``options.skip_bad``.
    ``class_names`` fixes the classes (for predict): a label outside them is bad. Messages start
    with ``where``."""
    options.validate()
    pattern = re.compile(options.label_pattern)
    if threads is None:  # threads pay only where decoding (which frees the GIL) outweighs Python's share
        mean_bytes = sum(p.stat().st_size for p in paths) / len(paths)
        threads = min(32, os.cpu_count() or 1) if mean_bytes >= THREADED_DECODE_BYTES else 1
    headers = _parallel(header_of, paths, threads)
    size = options.image_size
    if size is None:  # the most common size among the files whose header can be read
        sizes = Counter(h[0] for h in headers if h is not None)
        size = sizes.most_common(1)[0][0] if sizes else None
    results = _parallel(lambda p: _read_or_reason(p, options.channels, size), paths, threads)
    note = describe_conversions([p for p, r in zip(paths, results) if not isinstance(r, str)],
                                [h for h, r in zip(headers, results) if not isinstance(r, str)], size,
                                options.channels)
    if note:
        log(f"{where}: {note}")
    bad = [BadFile(p, r) for p, r in zip(paths, results) if isinstance(r, str)]
    names = [label_of(p, pattern) for p in paths]
    known = set(class_names) if class_names is not None else None
    if known is not None:
        bad += [BadFile(p, f"label {n!r} is not one of the classes the model knows: {', '.join(class_names)}")
                for p, n, r in zip(paths, names, results) if n is not None and n not in known
                and not isinstance(r, str)]
    if bad:
        bad.sort(key=lambda b: b.path)
        if not options.skip_bad:
            raise SsvaeError(f"{where}: {len(bad)} of {len(paths)} image files cannot be used:\n"
                             f"{describe_bad_files(bad)}\nfix or remove them, or pass --skip-bad to leave them out")
        log(f"{where}: skipping {len(bad)} of {len(paths)} image files that cannot be used:\n"
            f"{describe_bad_files(bad)}")
    bad_paths = {b.path for b in bad}
    keep = [i for i, p in enumerate(paths) if p not in bad_paths]
    if not keep:
        raise SsvaeError(f"{where}: none of the {len(paths)} image files can be used")
    arrays = [results[i] for i in keep]
    if class_names is None:
        class_names = class_names_in_order(n for n in (names[i] for i in keep) if n is not None)
    index = {name: k for k, name in enumerate(class_names)}
    labels = np.array([index[names[i]] if names[i] is not None else -1 for i in keep], dtype=np.int64)
    shape = arrays[0].shape if options.channels == 3 else arrays[0].shape[:2]
    images = np.stack([a.reshape(-1) for a in arrays])
    return ImageFolder(images, labels, [paths[i] for i in keep], list(class_names), tuple(shape), bad)


def _read_or_reason(path: Path, channels: int, size) -> np.ndarray | str:
    try:
        return read_image(path, channels, size)
    except ValueError as error:
        return str(error)
    except OSError as error:  # unreadable: permissions, a file that vanished
        return f"cannot be read ({error.strerror or error})"


def _parallel(function, items, workers: int, chunk: int = 512):
    # Pillow releases the GIL while it decodes, so threads decode in parallel; each thread takes a
    # chunk of files at a time, since one image is too little work to hand out alone.
    if workers <= 1 or len(items) <= chunk:
        return [function(item) for item in items]
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [result for done in pool.map(lambda part: [function(item) for item in part], chunks)
                for result in done]


def folder_fingerprint(paths: list[Path], options: FolderOptions) -> str:
    """A digest of the file list, each file's size and modification time, and the reading options:
    a decoded cache is reused only while all of these are unchanged."""
    digest = hashlib.sha256(repr((options.label_pattern, options.channels, options.image_size,
                                  options.skip_bad)).encode())
    for p in paths:
        stat = p.stat()
        digest.update(f"{p}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


@dataclass(frozen=True, eq=False)
class FolderData(DataSplits):
    """A folder split for training, with the fields :class:`~ssvae.data.mnist.MnistData` has.

    ``train_labels`` is -1 for every unlabelled image: the labels are those the file names give,
    not a choice among known ones.
    """

    num_classes: int
    image_shape: tuple
    class_names: list
    likelihood: str  # the suggested p(x|...): "bernoulli" for near-binary images, else "gaussian"
    labels_from_files: bool = True


def suggest_likelihood(images: np.ndarray) -> str:
    """Bernoulli when nine pixels in ten are within 10% of black or white (scans of ink, MNIST),
    else a Gaussian with learned variance (photographs, whose grey levels are the data)."""
    sample = images[:: max(1, len(images) // 2000)]
    near_binary = np.mean((sample <= 25) | (sample >= 230))
    return "bernoulli" if near_binary >= 0.9 else "gaussian"


def stratified_split(labels: np.ndarray, class_names: list[str], fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the labelled indices into (kept, held out), holding out ``fraction`` of every class
    (at least one image), and keeping at least one image of every class for training; every class
    must have two or more."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for k in range(len(class_names)):
        members = rng.permutation(np.flatnonzero(labels == k))
        n_held = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def load_folder(folder: Path, options: FolderOptions = FolderOptions(), *, val_folder: Path | None = None,
                test_folder: Path | None = None, fraction: float = 0.1, seed: int = 0, cache_dir: Path | None = None,
                log=print) -> FolderData:
    """A folder of images as training, validation and test sets.

    Validation and test images are the ``val_folder`` and ``test_folder`` when given (every file in
    them labelled), else a stratified ``fraction`` of each class's labelled files each. The decoded
    images are cached (see :func:`folder_fingerprint`), so a folder is decoded once.
    """
    images = _read_cached(Path(folder), options, None, cache_dir, log)
    class_names = images.class_names
    if not class_names:
        raise SsvaeError(f"{folder}: no file name carries a label (pattern {options.label_pattern!r} on the name "
                         f"without its extension, e.g. 3_0001.png); label some images, or give --label-pattern")
    held = {}
    for what, extra in (("val", val_folder), ("test", test_folder)):
        if extra is None:
            continue
        same_size = replace(options, image_size=options.image_size or _size_of(images))
        other = _read_cached(Path(extra), same_size, class_names, cache_dir, log)
        unlabelled = [p for p, y in zip(other.paths, other.labels) if y < 0]
        if unlabelled:
            raise SsvaeError(f"--{what} {extra}: every image there needs a label in its name; "
                             f"{len(unlabelled)} have none, e.g. {unlabelled[0]}")
        held[what] = (other.images, other.labels)
    train_x, train_y = images.images, images.labels
    needed = 1 + sum(what not in held for what in ("val", "test"))
    counts = np.bincount(train_y[train_y >= 0], minlength=len(class_names))
    for name, count in zip(class_names, counts):
        if count < needed:
            uses = ", ".join(["one for training", *(f"one for {w}" for w in ("val", "test") if w not in held)])
            raise SsvaeError(f"{folder}: class {name!r} has {count} labelled image(s); at least {needed} are needed "
                             f"({uses}); label more images of it, or give --val and --test folders")
    for what in ("test", "val"):
        if what not in held:
            kept, out = stratified_split(train_y, class_names, fraction, seed)
            held[what] = (train_x[out], train_y[out])
            rest = np.setdiff1d(np.arange(len(train_y)), out)
            train_x, train_y = train_x[rest], train_y[rest]
    return FolderData(train_x, train_y, *held["val"], *held["test"], num_classes=len(class_names),
                      image_shape=images.image_shape, class_names=class_names,
                      likelihood=suggest_likelihood(train_x))


def _size_of(images: ImageFolder) -> tuple[int, int]:
    height, width = images.image_shape[:2]
    return width, height


def _read_cached(folder: Path, options: FolderOptions, class_names, cache_dir: Path | None, log) -> ImageFolder:
    from .mnist import default_cache_dir

    paths = list_images(folder)
    key = folder_fingerprint(paths, options) + ("" if class_names is None else
                                                hashlib.sha256("\0".join(class_names).encode()).hexdigest()[:8])
    cache = Path(cache_dir or default_cache_dir()) / "folders" / f"{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as saved:
                images = ImageFolder(saved["images"], saved["labels"], [Path(str(p)) for p in saved["paths"]],
                                     [str(n) for n in saved["class_names"]],
                                     tuple(int(v) for v in saved["image_shape"]),
                                     [BadFile(Path(str(p)), str(r))
                                      for p, r in zip(saved["bad_paths"], saved["bad_reasons"])])
            if images.skipped:
                log(f"{folder}: skipping {len(images.skipped)} image files that cannot be used (as before)")
            return images
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache is decoded again
    images = read_folder(folder, options, class_names, log)
    try:
        from ..checkpoint import atomic_write

        cache.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, images=images.images, labels=images.labels,
                 paths=np.array([str(p) for p in images.paths], dtype=str),
                 class_names=np.array(images.class_names, dtype=str), image_shape=np.array(images.image_shape),
                 bad_paths=np.array([str(b.path) for b in images.skipped], dtype=str),
                 bad_reasons=np.array([b.reason for b in images.skipped], dtype=str))
        atomic_write(cache, buffer.getvalue())
    except OSError as error:  # a cache that cannot be written only costs time
        log(f"note: could not cache the decoded images in {cache.parent} ({error})")
    return images
