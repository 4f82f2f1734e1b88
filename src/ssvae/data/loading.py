"""The data set a run names with ``--data``: built in, a folder of a built-in data set's files, or
a folder of the user's own images; and what a run keeps of it to read new images alike."""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..errors import SsvaeError
from .folder import load_folder
from .mnist import DATASETS, holds_idx_files, identify_idx_folder, load_mnist


def load_data(spec: str, log=print, config: TrainConfig | None = None):
    """The data set named by ``--data``: a built-in one (``mnist``, ``fashion-mnist``: fetched and
    cached), a folder with a built-in data set's files, or a folder of the user's own images, read
    as ``config`` says (see :mod:`ssvae.data.folder`)."""
    if spec in DATASETS:
        return load_mnist(None, log=log, name=spec)
    if not Path(spec).is_dir():
        raise SsvaeError(f"--data {spec}: no such folder; give {' or '.join(repr(n) for n in DATASETS)}, a folder "
                         f"of your own images, or a folder holding a built-in data set's IDX files")
    if holds_idx_files(Path(spec)):
        return load_mnist(spec, log=log, name=identify_idx_folder(Path(spec)))
    folder = Path(spec)
    config = config or TrainConfig(data=spec)
    return load_folder(folder, config.folder_options(), val_folder=config.val_data, test_folder=config.test_data,
                       fraction=config.holdout, seed=config.seed, log=log)


def is_image_folder(spec: str) -> bool:
    """Whether ``--data`` names a folder of the user's own images (not a built-in data set or its files)."""
    folder = Path(spec)
    if spec in DATASETS or not folder.is_dir():
        return False
    return not holds_idx_files(folder)


def data_facts(data) -> dict:
    """What a run must remember of its data to read new images alike: class names, shape, channels."""
    names = getattr(data, "class_names", None) or [str(k) for k in range(data.num_classes)]
    shape = list(data.image_shape)
    return {"class_names": list(names), "image_shape": shape, "channels": 3 if len(shape) == 3 else 1}
