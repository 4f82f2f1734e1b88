"""Class probabilities for new images from a trained run, read exactly as its training images were.

    from ssvae.predict import predict
    predictions = predict("runs/m2-100labels-seed0", ["photos/", "one.png"])
    predictions.predicted        # class names, one per image
    predictions.probabilities    # (images, classes) array, rows sum to 1

``ssvae predict RUN IMAGES... --out preds.csv`` writes the same as CSV: ``path``, ``predicted`` and
one probability column per class.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_text, load_checkpoint
from .config import load_config, load_data_facts
from .data.folder import BadFile, FolderOptions, list_images, read_images
from .errors import SsvaeError
from .experiment import class_probabilities
from .models import build_model
from .runtime import resolve_device


@dataclass
class Predictions:
    paths: list[Path]
    class_names: list[str]
    probabilities: np.ndarray  # (images, classes)
    true_labels: list[str | None]  # the class the file name gives, where it gives one
    skipped: list[BadFile]

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


def image_files(inputs) -> list[Path]:
    """Files named directly, and every image under the folders named, in the order given."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += list_images(item)
        elif item.is_file():
            files.append(item)
        else:
            raise SsvaeError(f"{item}: no such file or folder")
    if not files:
        raise SsvaeError("no images given: name image files or folders that hold them")
    return files


def load_classifier(run_dir: Path, device: torch.device):
    """The run's model with its best weights, and the facts of the data it was trained on."""
    run_dir = Path(run_dir)
    config, model_config = load_config(run_dir / "config.json")
    if config.model == "m1":
        raise SsvaeError(f"{run_dir}: an M1 run has no classifier; predict with an m2 or m1m2 run")
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
    options = FolderOptions(config.label_pattern, channels, size, skip_bad)
    read = read_images(image_files(inputs), options, class_names, log)
    probabilities = class_probabilities(model, read.images, dev, batch_size)
    return Predictions(read.paths, list(class_names), probabilities.cpu().numpy(),
                       [class_names[k] if k >= 0 else None for k in read.labels], read.skipped)
