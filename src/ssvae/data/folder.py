"""A folder of the user's own images as a data set, labelled in one of three layouts.

``--layout names``: a file whose name (without its extension) matches the label pattern is
labelled with the pattern's ``label`` group; every other image is unlabelled. The default pattern
is the one the original Chainer implementation promised, ``{label}_{anything}.png``::

    digits/
        3_0001.png        labelled "3"
        7_scan-12.jpg     labelled "7"
        holiday.png       unlabelled
        IMG_0042.PNG      unlabelled (the prefix is not a label: it is not made of digits)

``--layout subfolders``: one subfolder per class, as torchvision's ImageFolder and Keras'
``image_dataset_from_directory`` read it; the subfolder named by ``--unlabelled-folder`` holds the
unlabelled images::

    pets/
        cat/0001.png      labelled "cat"
        dog/0002.jpg      labelled "dog"
        unlabelled/x.png  unlabelled

``--layout csv``: a CSV (``--labels-csv``, as labelling tools export) with the columns ``file``
(relative to the folder, or absolute) and ``label``; an empty label, or a file the CSV does not
list, is unlabelled.

``--layout auto`` (the default) reads the CSV when one is given, else the subfolders when every
image sits one subfolder down and no file name matches the label pattern, else the file names.

Class names need not be digits (``--label-pattern '(?P<label>[a-z]+)-.*'``); they are mapped to
contiguous class indices in sorted order (numerically when every name is a number), and the names
are kept in the run's config so that predictions speak of them.

Every image is decoded with Pillow, converted to grey or RGB, resized to one size (by default the
most common size in the folder) and stored as uint8 rows of H*W*C values, the same layout as MNIST.
Problems are found before training starts: every file that cannot be used is listed with its reason.
"""

from __future__ import annotations

import csv
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
LAYOUTS = ("auto", "names", "subfolders", "csv")
DEFAULT_UNLABELLED_FOLDER = "unlabelled"
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
    layout: str = "auto"  # one of LAYOUTS; see the module's docstring
    unlabelled_folder: str = DEFAULT_UNLABELLED_FOLDER  # subfolders layout: the subfolder without a class
    labels_csv: str | None = None  # csv layout: the file,label CSV

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
        if self.layout not in LAYOUTS:
            raise SsvaeError(f"--layout {self.layout}: choose one of {', '.join(LAYOUTS)}")
        if self.layout == "csv" and not self.labels_csv:
            raise SsvaeError("--layout csv: give the CSV of file,label rows with --labels-csv PATH")
        if self.labels_csv and self.layout not in ("auto", "csv"):
            raise SsvaeError(f"--labels-csv {self.labels_csv}: labels come from the CSV only with --layout csv "
                             f"(or auto), not with --layout {self.layout}; drop one of the two")
        name = self.unlabelled_folder
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise SsvaeError(f"--unlabelled-folder {name!r}: must be the name of one subfolder, e.g. unlabelled")

    def for_held_out_folders(self) -> FolderOptions:
        """The options for the --val and --test folders: the same, except that a CSV labels only the
        training folder, so those folders are read by their subfolders or file names."""
        if self.layout == "csv" or self.labels_csv:
            return replace(self, layout="auto", labels_csv=None)
        return self


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


def in_class_subfolder(folder: Path, path: Path) -> bool:
    """Whether ``path`` sits exactly one subfolder below ``folder`` (``folder/cat/1.png``)."""
    return len(path.relative_to(folder).parts) == 2


def resolve_layout(folder: Path, paths: list[Path], options: FolderOptions) -> tuple[str, str]:
    """The layout ``folder`` (whose images are ``paths``) is read in, and why, as words for the log:
    ``options.layout`` unless it is ``auto``; then ``csv`` when a CSV is given, else ``subfolders``
    when every image sits one subfolder down and no file name matches the label pattern, else ``names``."""
    folder = Path(folder)
    if options.layout != "auto":
        return options.layout, f"--layout {options.layout} was given"
    if options.labels_csv:
        return "csv", "--labels-csv was given"
    at_top = [p for p in paths if len(p.relative_to(folder).parts) == 1]
    if at_top:
        return "names", f"images sit in the folder itself (e.g. {at_top[0].name}), not in class subfolders"
    deeper = [p for p in paths if not in_class_subfolder(folder, p)]
    if deeper:
        return "names", f"images sit more than one subfolder down (e.g. {deeper[0].relative_to(folder)})"
    pattern = re.compile(options.label_pattern)
    named = next((p for p in paths if label_of(p, pattern) is not None), None)
    if named is not None:
        return "names", f"file names match --label-pattern (e.g. {named.relative_to(folder)})"
    return "subfolders", "every image sits one subfolder down and no file name matches --label-pattern"


def describe_layout(options: FolderOptions) -> str:
    """Where the labels of ``options.layout`` (resolved, not auto) come from, in words for the log."""
    if options.layout == "subfolders":
        return f"one subfolder per class, unlabelled images in {options.unlabelled_folder}/"
    if options.layout == "csv":
        return f"labels from the file,label rows of {options.labels_csv}"
    return f"labels from the file names that match {options.label_pattern!r}"


def file_name_labels(paths: list[Path], label_pattern: str) -> list[str | None]:
    """The class name each file name gives through ``label_pattern`` (None where it does not match)."""
    pattern = re.compile(label_pattern)
    return [label_of(p, pattern) for p in paths]


def subfolder_labels(folder: Path, paths: list[Path], unlabelled_folder: str = DEFAULT_UNLABELLED_FOLDER
                     ) -> list[str | None]:
    """The class of each image under ``folder``: the name of the subfolder of ``folder`` it sits in
    (however deep); None for the images in ``unlabelled_folder`` or in ``folder`` itself."""
    labels = []
    for path in paths:
        parts = Path(path).relative_to(folder).parts
        labels.append(parts[0] if len(parts) > 1 and parts[0] != unlabelled_folder else None)
    return labels


def folder_labels(folder: Path, paths: list[Path], options: FolderOptions, log=print) -> list[str | None]:
    """The class name of each of ``paths`` (the images of ``folder``; None: unlabelled), read in the
    layout ``options`` give (``auto`` resolved first, see :func:`resolve_layout`)."""
    folder = Path(folder)
    layout, _ = resolve_layout(folder, paths, options)
    if layout == "names":
        return file_name_labels(paths, options.label_pattern)
    if layout == "subfolders":
        loose = [p for p in paths if len(p.relative_to(folder).parts) == 1]
        if loose:
            shown = ", ".join(p.name for p in loose[:5]) + (f" and {len(loose) - 5} more" if len(loose) > 5 else "")
            raise SsvaeError(f"{folder}: in the subfolder layout every image sits in a class subfolder, but "
                             f"{len(loose)} sit in the folder itself ({shown}); move them into the subfolder of "
                             f"their class, or into {options.unlabelled_folder}/ if they have none")
        return subfolder_labels(folder, paths, options.unlabelled_folder)
    return csv_labels(folder, paths, options, log)


def _read_csv_rows(csv_path: Path) -> list[tuple[int, str, str]]:
    """(line number, file, label) of every row of a ``file,label`` CSV; an SsvaeError names what is wrong."""
    what = f"--labels-csv {csv_path}"
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:  # -sig: the BOM spreadsheets write
            reader = csv.DictReader(handle, strict=True)  # strict: a stray quote is an error, not a label
            header = [(name or "").strip() for name in (reader.fieldnames or [])]
            if not header:
                raise SsvaeError(f"{what}: is empty; its first row must be the header file,label")
            missing = [column for column in ("file", "label") if column not in header]
            if missing:
                raise SsvaeError(f"{what}: needs columns named 'file' and 'label' in its header row, but has "
                                 f"{', '.join(repr(n) for n in header)} (no {' or '.join(repr(m) for m in missing)}); "
                                 f"name the column of image paths 'file' and the column of classes 'label'")
            reader.fieldnames = header
            rows = []
            for row in reader:
                file, label = (row.get("file") or "").strip(), (row.get("label") or "").strip()
                if file or label:  # a row of empty cells is a spreadsheet's padding
                    rows.append((reader.line_num, file, label))
    except FileNotFoundError:
        raise SsvaeError(f"{what}: no such file; give the CSV of file,label rows that labels the images") from None
    except UnicodeDecodeError as error:
        raise SsvaeError(f"{what}: not UTF-8 text ({error.reason} at byte {error.start}); "
                         f"save it as CSV UTF-8") from None
    except csv.Error as error:
        raise SsvaeError(f"{what}: not a readable CSV (line {reader.line_num}: {error})") from None
    except OSError as error:
        raise SsvaeError(f"{what}: cannot be read ({error.strerror or error})") from None
    return rows


def csv_labels(folder: Path, paths: list[Path], options: FolderOptions, log=print) -> list[str | None]:
    """The class name of each of ``paths`` (the images of ``folder``) as the ``file,label`` CSV
    ``options.labels_csv`` gives it: None for an empty label or a file the CSV does not list.

    Every row must name an image of ``folder`` (rows that do not are listed; ``skip_bad`` ignores
    them), and no file may be given two different labels."""
    folder, csv_path = Path(folder), Path(options.labels_csv)
    rows = _read_csv_rows(csv_path)

    def key(path) -> str:  # one spelling per file: "./a/../b.png" and "b.png" are the same image
        return os.path.abspath(path)

    images = {key(p) for p in paths}
    root = key(folder)
    labels: dict[str, tuple[str, int]] = {}
    unusable: list[str] = []  # "line N: file: reason"
    conflicts: dict[str, list[tuple[str, int]]] = {}
    for line, file, label in rows:
        if not file:
            unusable.append(f"line {line}: no file given (label {label!r})")
            continue
        path = key(folder / file)
        if path not in images:
            if not os.path.exists(path):
                reason = f"no such file in {folder}"
            elif os.path.commonpath([root, path]) != root:
                reason = f"not inside {folder}; the CSV labels only the images of that folder"
            else:
                reason = f"not an image file this reads ({', '.join(IMAGE_SUFFIXES)})"
            unusable.append(f"line {line}: {file}: {reason}")
            continue
        if path in labels and labels[path][0] != label:
            conflicts.setdefault(path, [(labels[path][0], labels[path][1])]).append((label, line))
            continue
        labels.setdefault(path, (label, line))
    problems = []  # both kinds in one message, so that one round of fixes suffices
    if conflicts:
        listing = indented_listing([f"{os.path.relpath(path, root)}: "
                                    + ", ".join(f"{label!r} (line {line})" for label, line in seen)
                                    for path, seen in conflicts.items()])
        problems.append(f"{len(conflicts)} file(s) are listed more than once with different labels:\n{listing}\n"
                        f"keep one row, with one label, per file")
    if unusable:
        listing = indented_listing(unusable)
        if options.skip_bad:
            log(f"--labels-csv {csv_path}: ignoring {len(unusable)} of {len(rows)} rows that do not name an image "
                f"of {folder}:\n{listing}")
        else:
            problems.append(f"{len(unusable)} of {len(rows)} rows do not name an image of {folder}:\n{listing}\n"
                            f"file paths are relative to {folder} (or absolute); fix or remove those rows, or pass "
                            f"--skip-bad to ignore them")
    if problems:
        raise SsvaeError(f"--labels-csv {csv_path}: " + "\n".join(problems))
    return [(labels.get(key(p), ("", 0))[0] or None) for p in paths]


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
    """The bad files, one indented line each with its reason; past LISTED_BAD_FILES only a count."""
    return indented_listing([f"{b.path}: {b.reason}" for b in bad])


def indented_listing(lines: list[str]) -> str:
    """The first LISTED_BAD_FILES of ``lines``, indented, and a count of the rest."""
    shown = [f"  {line}" for line in lines[:LISTED_BAD_FILES]]
    if len(lines) > LISTED_BAD_FILES:
        shown.append(f"  ... and {len(lines) - LISTED_BAD_FILES} more")
    return "\n".join(shown)


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
    """Decode every image under ``folder``, labelled as ``options.layout`` says (see :func:`read_images`)."""
    return _read_folder_images(Path(folder), list_images(folder), options, class_names, log, threads)


def _read_folder_images(folder: Path, paths: list[Path], options: FolderOptions, class_names, log,
                        threads: int | None = None) -> ImageFolder:
    options.validate()
    labels = folder_labels(folder, paths, options, log)
    return read_images(paths, options, class_names, log, threads, where=str(folder), labels=labels)


def read_images(paths: list[Path], options: FolderOptions = FolderOptions(), class_names: list[str] | None = None,
                log=print, threads: int | None = None, where: str = "the images given",
                labels: list[str | None] | None = None) -> ImageFolder:
    """Decode ``paths``; stop with one message naming every bad file unless ``options.skip_bad``.
    ``labels`` are the class names of the images (None: unlabelled), by default those their file
    names give through ``options.label_pattern``. ``class_names`` fixes the classes (for predict):
    a label outside them is bad. Messages start with ``where``."""
    options.validate()
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
    names = file_name_labels(paths, options.label_pattern) if labels is None else list(labels)
    known = set(class_names) if class_names is not None else None
    if known is not None:
        names = [name_of_class_number(n, class_names) for n in names]
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
    indices = np.array([index[names[i]] if names[i] is not None else -1 for i in keep], dtype=np.int64)
    shape = arrays[0].shape if options.channels == 3 else arrays[0].shape[:2]
    images = np.stack([a.reshape(-1) for a in arrays])
    return ImageFolder(images, indices, [paths[i] for i in keep], list(class_names), tuple(shape), bad)


def name_of_class_number(label: str | None, class_names: list[str]) -> str | None:
    """A label as the model knows it: a class name, or where the classes are named by words (Fashion-MNIST's
    "T-shirt/top", which no file name can hold) a class's number, 0 for the first, as its data set numbers it."""
    if label is None or label in class_names or not label.isdigit() or all(n.isdigit() for n in class_names):
        return label
    return class_names[int(label)] if int(label) < len(class_names) else label


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
    """A digest of the file list, each file's size and modification time, and the reading options
    (the layout as resolved, and the content of a labels CSV): a decoded cache is reused only while
    all of these are unchanged."""
    digest = hashlib.sha256(repr((options.label_pattern, options.channels, options.image_size,
                                  options.skip_bad)).encode())
    if options.layout != "names":  # the names layout keeps the keys that caches written before layouts have
        digest.update(repr((options.layout, options.unlabelled_folder)).encode())
        if options.labels_csv:
            digest.update(_content_digest(Path(options.labels_csv)).encode())
    for p in paths:
        stat = p.stat()
        digest.update(f"{p}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _content_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:  # reading the folder then stops with the CSV's own message
        return "unreadable"


@dataclass(frozen=True, eq=False)
class FolderData(DataSplits):
    """A folder split for training, with the fields :class:`~ssvae.data.mnist.MnistData` has.

    ``train_labels`` is -1 for every unlabelled image: the labels are those the file names give,
    not a choice among known ones.
    """

    num_classes: int
    image_shape: tuple
    class_names: list
    labels_from_files: bool = True
    layout: str = "names"  # the layout the training folder was read in, "auto" resolved


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
    them labelled; a CSV labels only ``folder``, see :meth:`FolderOptions.for_held_out_folders`), else
    a stratified ``fraction`` of each class's labelled files each. The decoded images are cached (see
    :func:`folder_fingerprint`), so a folder is decoded once.
    """
    folder = Path(folder)
    images, options = _read_cached(folder, options, None, cache_dir, log)
    class_names = images.class_names
    if not class_names:
        if options.layout == "subfolders":
            raise SsvaeError(f"{folder}: no image sits in a class subfolder (only in {options.unlabelled_folder}/); "
                             f"put the labelled images in one subfolder per class, e.g. {folder / 'cat' / '1.png'}")
        if options.layout == "csv":
            raise SsvaeError(f"--labels-csv {options.labels_csv}: no row gives a label to an image of {folder}; "
                             f"fill in the label column of some rows")
        raise SsvaeError(f"{folder}: no file name carries a label (pattern {options.label_pattern!r} on the name "
                         f"without its extension, e.g. 3_0001.png); label some images, or give --label-pattern")
    held = {}
    for what, extra in (("val", val_folder), ("test", test_folder)):
        if extra is None:
            continue
        same_size = replace(options.for_held_out_folders(), image_size=options.image_size or _size_of(images))
        other, other_options = _read_cached(Path(extra), same_size, class_names, cache_dir, log)
        unlabelled = [p for p, y in zip(other.paths, other.labels) if y < 0]
        if unlabelled:
            needs = (f"a class subfolder (not {other_options.unlabelled_folder}/)"
                     if other_options.layout == "subfolders" else "a label in its name")
            raise SsvaeError(f"--{what} {extra}: every image there needs {needs}; "
                             f"{len(unlabelled)} have none, e.g. {unlabelled[0]}")
        held[what] = (other.images, other.labels)
    train_x, train_y = images.images, images.labels
    holding_out = fraction > 0
    needed = 1 + (sum(what not in held for what in ("val", "test")) if holding_out else 0)
    counts = np.bincount(train_y[train_y >= 0], minlength=len(class_names))
    for name, count in zip(class_names, counts):
        if count < needed:
            uses = ", ".join(["one for training", *(f"one for {w}" for w in ("val", "test") if w not in held)])
            where, remedy = "", "label more images of it"
            if options.layout == "subfolders":
                where, remedy = f" (in {folder / name})", "add more images to that subfolder"
            elif options.layout == "csv":
                where = f" (in --labels-csv {options.labels_csv})"
            raise SsvaeError(f"{folder}: class {name!r} has {count} labelled image(s){where}; at least {needed} are "
                             f"needed ({uses}); {remedy}, give --val and --test folders, or train on all of them "
                             f"with --holdout 0")
    labelled_files = int((train_y >= 0).sum())
    for what in ("test", "val"):
        if what in held:
            continue
        if not holding_out:  # nothing withheld: an empty set, which the run then does without
            held[what] = (train_x[:0], train_y[:0])
            continue
        kept, out = stratified_split(train_y, class_names, fraction, seed)
        held[what] = (train_x[out], train_y[out])
        rest = np.setdiff1d(np.arange(len(train_y)), out)
        train_x, train_y = train_x[rest], train_y[rest]
    log(describe_label_use(labelled_files, int((train_y >= 0).sum()), len(held["val"][1]), len(held["test"][1]),
                           val_folder, test_folder, fraction))
    return FolderData(train_x, train_y, *held["val"], *held["test"], num_classes=len(class_names),
                      image_shape=images.image_shape, class_names=class_names, layout=options.layout)


def describe_label_use(labelled: int, training: int, validation: int, test: int, val_folder, test_folder,
                       fraction: float) -> str:
    """One line saying where the user's labelled files went, and why: a user must never find some of
    their labels quietly withheld."""
    withheld = [what for what, folder in (("validation", val_folder), ("test", test_folder)) if folder is None]
    if not withheld:
        why = "validation and test images come from --val and --test"
    elif fraction > 0:
        why = (f"no {' or '.join('--' + w.removesuffix('idation') for w in withheld)} folder was given, so a "
               f"stratified {fraction:.0%} of each class's labelled files is held out for "
               f"{' and again for '.join(withheld)}; --holdout 0 trains on all of them")
    else:
        why = (f"--holdout 0: none held out, so no {' or '.join(withheld)} accuracy is measured and the run keeps its "
               f"last (averaged) weights instead of choosing them on validation")
    return (f"labelled files: {labelled}, of which {training} train the model; validation {validation} images, "
            f"test {test} images ({why})")


def _size_of(images: ImageFolder) -> tuple[int, int]:
    height, width = images.image_shape[:2]
    return width, height


def _read_cached(folder: Path, options: FolderOptions, class_names, cache_dir: Path | None,
                 log) -> tuple[ImageFolder, FolderOptions]:
    """The decoded images of ``folder`` and the options they were read with, the layout resolved."""
    from .mnist import default_cache_dir

    options.validate()
    paths = list_images(folder)
    layout, why = resolve_layout(folder, paths, options)
    options = replace(options, layout=layout)
    log(f"{folder}: read in layout {layout!r} ({describe_layout(options)}) as {why}")
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
            return images, options
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache is decoded again
    images = _read_folder_images(folder, paths, options, class_names, log)
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
    return images, options
