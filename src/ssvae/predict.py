"""Class probabilities for new images from a trained run, read exactly as its training images were.

    from ssvae.predict import predict
    predictions = predict("runs/m2-100labels-seed0", ["photos/", "one.png"])
    predictions.predicted        # class names, one per image
    predictions.probabilities    # (images, classes) array, rows sum to 1

``ssvae predict RUN IMAGES... --out preds.csv`` writes the same as CSV: ``path``, ``predicted`` and
one probability column per class.

Labels of new images serve only to report accuracy. They are read as training read its labels
(see :mod:`ssvae.data.folder`): with ``--layout names`` from file names, where a label the model
does not know is an error, as in training; with ``--layout auto`` each folder in the layout auto
finds in it; with class subfolders or a CSV from the subfolders of a folder in the subfolder
layout. Subfolders are read as labels only when all of them are classes the model knows (or the
unlabelled folder); otherwise, and for image files named directly to a run trained on subfolders or
a CSV, the images are unlabelled.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_text, load_checkpoint
from .config import load_config, load_data_facts
from .data.folder import (BadFile, file_name_labels, in_class_subfolder, list_images, read_images, resolve_layout,
                          subfolder_labels)
from .errors import SsvaeError
from .evaluation import class_probabilities
from .models import build_model
from .runtime import resolve_device


@dataclass
class Predictions:
    paths: list[Path]
    class_names: list[str]
    probabilities: np.ndarray  # (images, classes)
    true_labels: list[str | None]  # the class the file name or subfolder gives, where it gives one
    skipped: list[BadFile]
    label_sources: tuple[str, ...] = ("names",)  # where the true labels came from: "names", "subfolders"

    @property
    def labelled_by(self) -> str:
        """Where the known labels came from, as words: "names carry a label" and the like."""
        if tuple(self.label_sources) == ("subfolders",):
            return "subfolders name a class"
        if "subfolders" in self.label_sources:
            return "names or subfolders carry a label"
        return "names carry a label"

    @property
    def predicted(self) -> list[str]:
        return [self.class_names[k] for k in self.probabilities.argmax(axis=1)]

    def accuracy(self) -> float | None:
        """Share of the labelled files predicted as their label; None when no file carries one."""
        pairs = [(p, t) for p, t in zip(self.predicted, self.true_labels) if t is not None]
        return sum(p == t for p, t in pairs) / len(pairs) if pairs else None

    def to_csv(self, path: Path) -> None:
        rows = [["path", "predicted", *self.class_names]]
        rows += [[str(p), name, *(f"{v:.6f}" for v in probs)]
                 for p, name, probs in zip(self.paths, self.predicted, self.probabilities)]
        from io import StringIO

        text = StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        atomic_write_text(Path(path), text.getvalue())


def new_image_labels(inputs, config, class_names: list[str], log=print
                     ) -> tuple[list[Path], list[str | None], tuple[str, ...]]:
    """Every image in ``inputs`` (files, and every image under folders, in the order given), its
    label where it has one as the run ``config`` read labels (see the module's docstring), and where
    the labels came from ("names", "subfolders")."""
    trained = "csv" if config.labels_csv else config.layout
    paths, labels, sources = [], [], set()
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_images(item)
            if trained == "auto":  # read the folder in the layout training would have found in it
                layout, _ = resolve_layout(item, found, replace(config.folder_options(), labels_csv=None))
            elif trained == "names":
                layout = "names"
            else:  # a file name means nothing to a run trained on subfolders or a CSV
                layout = "subfolders" if all(in_class_subfolder(item, p) for p in found) else None
            if layout == "names":
                found_labels = file_name_labels(found, config.label_pattern)
            elif layout == "subfolders":
                found_labels = _known_subfolder_labels(item, found, config.unlabelled_folder, class_names, log)
            else:
                found_labels = [None] * len(found)
        elif item.is_file():
            found = [item]
            found_labels = file_name_labels(found, config.label_pattern) if trained in ("auto", "names") else [None]
            layout = "names"
        else:
            raise SsvaeError(f"{item}: no such file or folder")
        if any(label is not None for label in found_labels):
            sources.add(layout)
        paths += found
        labels += found_labels
    if not paths:
        raise SsvaeError("no images given: name image files or folders that hold them")
    return paths, labels, tuple(sorted(sources))


def _known_subfolder_labels(folder: Path, paths: list[Path], unlabelled_folder: str, class_names: list[str],
                            log) -> list[str | None]:
    # A subfolder that is no class (a batch, a date) says nothing of the images' classes: the
    # folder is then read as unlabelled, not refused.
    labels = subfolder_labels(folder, paths, unlabelled_folder)
    unknown = sorted({label for label in labels if label is not None} - set(class_names))
    if unknown:
        log(f"{folder}: its subfolders {', '.join(unknown)} are not classes the model knows "
            f"({', '.join(class_names)}), so its images are read without labels")
        return [None] * len(paths)
    return labels


def load_classifier(run_dir: Path, device: torch.device):
    """The run's model with its best weights, and the facts of the data it was trained on."""
    run_dir = Path(run_dir)
    config, model_config = load_config(run_dir / "config.json")
    if config.model == "m1":
        raise SsvaeError(f"{run_dir}: an M1 run has no classifier; predict with an m2, m1m2, adgm or sdgm run")
    model = build_model(config.model, **model_config)
    best = run_dir / "best.pt"
    if not best.is_file():
        raise SsvaeError(f"{run_dir}: no best.pt; the run has not finished an epoch yet")
    model.load_state_dict(load_checkpoint(best, map_location=device)["model"])
    return model.to(device).eval(), config, load_data_facts(run_dir / "config.json")


@torch.no_grad()
def predict(run_dir, inputs, device: str = "auto", skip_bad: bool = False, batch_size: int = 1000,
            log=print) -> Predictions:
    """Class probabilities for every image in ``inputs`` (files or folders): q(y|x), fused with the model's
    own posterior p(y|x) where it has one (ADGM, SDGM; see ``class_probabilities``)."""
    dev = resolve_device(device)
    model, config, facts = load_classifier(Path(run_dir), dev)
    class_names, shape = facts["class_names"], facts["image_shape"]
    channels = facts.get("channels", 1)
    size = (shape[1], shape[0])  # Pillow speaks of (width, height)
    options = replace(config.folder_options(), channels=channels, image_size=size, skip_bad=skip_bad)
    paths, labels, sources = new_image_labels(inputs, config, class_names, log)
    read = read_images(paths, options, class_names, log, labels=labels)
    probabilities = class_probabilities(model, read.images, dev, batch_size)
    return Predictions(read.paths, list(class_names), probabilities.cpu().numpy(),
                       [class_names[k] if k >= 0 else None for k in read.labels], read.skipped,
                       sources or ("names",))
