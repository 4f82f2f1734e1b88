"""Typed run configuration, validated at the edge and saved as ``config.json`` in every run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .checkpoint import atomic_write_json
from .data.folder import DEFAULT_LABEL_PATTERN, DEFAULT_UNLABELLED_FOLDER, FolderOptions
from .errors import SsvaeError
from .models import REGISTRY
from .models.likelihoods import NAMES as LIKELIHOOD_NAMES

MODELS = tuple(REGISTRY)

# Adam's learning rate when none is given. M2 (on pixels or on M1's features) learns fastest with
# 4e-3 and small steps; M1 at that rate lets most of its latent dimensions collapse onto the prior
# (7 of 50 active after 10 minutes, against 27 after 3 minutes at 1e-3), which starves M1+M2.
# ADGM and SDGM at M2's 4e-3 lead for ten minutes, then diverge (ADGM, seed 0: validation 0.939
# after 14 minutes of a 60-minute run, then 0.10 at 16, its bounds at 6e7); 2e-3 stays stable.
DEFAULT_LEARNING_RATES = {"m1": 1e-3, "m2": 4e-3, "m1m2": 4e-3, "adgm": 2e-3, "sdgm": 2e-3}


@dataclass
class TrainConfig:
    """Everything that decides what a training run does (the model's own shape lives in ``model``)."""

    model: str = "m2"
    data: str = "mnist"  # "mnist", or a directory holding the MNIST files to read instead of fetching
    labels: int = 100
    seed: int = 0
    epochs: int | None = None  # budget: stop after this many epochs ...
    minutes: float | None = 10.0  # ... or after this many minutes, whichever comes first
    # Small batches and a high learning rate: M2 learns more per minute from many noisy steps than
    # from few exact ones; the weight average and the cosine decay take the noise back out.
    # One labelled image per step: the 100 labels are then seen 10 times per epoch instead of 500,
    # and the classifier stays less sure of itself on the unlabelled images (10 epochs, seed 0:
    # validation 0.900 with 1, 0.894 with 5, 0.842 with 50).
    labelled_batch_size: int = 1
    unlabelled_batch_size: int = 50
    learning_rate: float | None = None  # None: the model family's own (DEFAULT_LEARNING_RATES)
    max_unlabelled: int | None = None  # use only the first N unlabelled images (quick trials and tests)
    # Pixels as grey levels in [0, 1], scored by the Bernoulli likelihood as they are. Dynamic
    # binarisation (pixels redrawn as Bernoulli samples every batch) learns more slowly with 100
    # labels: 0.874 against 0.900 validation accuracy after 10 epochs (seed 0, one label per step).
    binarize: bool = False
    device: str = "auto"
    threads: int | None = None  # torch threads on CPU; default one per available core
    bf16: str = "auto"  # bf16 autocast: "auto" (where the hardware has native bf16), "on" or "off"
    compile: str = "auto"  # torch.compile the training loss: "auto" (for runs longer than a few minutes), "on", "off"
    checkpoint_minutes: float | None = 2.0  # last.pt at least this often within an epoch ...
    checkpoint_each_epoch: bool = True  # ... and at every epoch end
    # M1+M2: a trained M1 run to reuse, else the share of the minutes given to training M1 first;
    # z1 dimensions whose q-means vary less than active_threshold (std over the data) are dropped.
    m1_run: str | None = None
    m1_share: float = 0.5
    active_threshold: float = 0.1
    model_options: dict = field(default_factory=dict)  # overrides of the model's config (alpha, sizes)
    # p(x|...) of every family (M1+M2: of its M1), one of models/likelihoods.py, or "auto": the one
    # that served classification best where it was measured (see experiment.resolve_likelihood).
    likelihood: str = "auto"
    # A folder of the user's own images (--data DIR): how its files are read and split. Labels come
    # from the layout: file names that match label_pattern (a regular expression with a group
    # "label"), one subfolder per class, or a file,label CSV; "auto" picks one (see data/folder.py).
    layout: str = "auto"
    label_pattern: str = DEFAULT_LABEL_PATTERN
    unlabelled_folder: str = DEFAULT_UNLABELLED_FOLDER  # the subfolder of unlabelled images
    labels_csv: str | None = None  # the file,label CSV of the csv layout
    channels: int = 1
    image_size: tuple[int, int] | None = None  # (width, height); None: the folder's most common size
    skip_bad: bool = False  # leave out unusable files (and say so) instead of stopping
    val_data: str | None = None  # folders of labelled images for validation and test; by default a
    test_data: str | None = None  # stratified share (holdout) of the labelled files each
    # The share of each class's labelled files held out of training for validation, and again for
    # test, where no --val / --test folder is given. 0 trains on every label: nothing is chosen on
    # validation then (the last averaged weights are kept) and accuracy is measured only on --test.
    holdout: float = 0.1
    report: bool = True  # write report.html (every picture, embedded) at the end of the run

    def __post_init__(self):
        if self.image_size is not None:  # a JSON round trip gives a list
            self.image_size = tuple(self.image_size)

    def folder_options(self):
        """How an image folder is read, as :class:`~ssvae.data.folder.FolderOptions`."""
        return FolderOptions(self.label_pattern, self.channels, self.image_size, self.skip_bad, layout=self.layout,
                             unlabelled_folder=self.unlabelled_folder, labels_csv=self.labels_csv)

    @property
    def lr(self) -> float:
        """The learning rate to use: the one given, else the model family's default."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.model]

    def validate(self) -> None:
        if self.model not in MODELS:
            raise SsvaeError(f"--model {self.model}: unknown model; choose one of {', '.join(MODELS)}")
        if self.epochs is None and self.minutes is None:
            raise SsvaeError("give a budget: --epochs N or --minutes M")
        if self.epochs is not None and self.epochs < 1:
            raise SsvaeError(f"--epochs {self.epochs}: must be at least 1")
        if self.minutes is not None and not self.minutes > 0:
            raise SsvaeError(f"--minutes {self.minutes}: must be positive")
        for name in ("labels", "labelled_batch_size", "unlabelled_batch_size"):
            if getattr(self, name) < 1:
                raise SsvaeError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.max_unlabelled is not None and self.max_unlabelled < self.unlabelled_batch_size:
            raise SsvaeError(f"--max-unlabelled {self.max_unlabelled}: must be at least --unlabelled-batch "
                             f"({self.unlabelled_batch_size})")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise SsvaeError(f"--lr {self.learning_rate}: must be positive")
        if self.m1_run is not None and self.model != "m1m2":
            raise SsvaeError(f"--m1 {self.m1_run}: only --model m1m2 builds on a trained M1")
        if not self.active_threshold >= 0:
            raise SsvaeError(f"--active-threshold {self.active_threshold}: must be zero or more")
        if not 0 < self.m1_share < 1:
            raise SsvaeError(f"--m1-share {self.m1_share}: must be between 0 and 1")
        if self.checkpoint_minutes is not None and not self.checkpoint_minutes > 0:
            raise SsvaeError(f"--checkpoint-minutes {self.checkpoint_minutes}: must be positive")
        if not 0 <= self.holdout < 0.5:
            raise SsvaeError(f"--holdout {self.holdout}: must be at least 0 and below 0.5 (it is held out twice, "
                             f"for validation and for test)")
        if self.threads is not None and self.threads < 1:
            raise SsvaeError(f"--threads {self.threads}: must be at least 1")
        if self.likelihood not in ("auto", *LIKELIHOOD_NAMES):
            raise SsvaeError(f"--likelihood {self.likelihood}: choose auto, {', '.join(LIKELIHOOD_NAMES)}")
        self.folder_options().validate()
        for name in ("bf16", "compile"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise SsvaeError(f"--{name} {getattr(self, name)}: choose auto, on or off")


def save_config(path: Path, train: TrainConfig, model_config, data_facts: dict | None = None) -> None:
    """Write config.json; ``data_facts`` (class names, image shape) let a run read new images alike."""
    payload = {"format": 1, "train": asdict(train), "model": asdict(model_config)}
    if data_facts is not None:
        payload["data"] = data_facts
    atomic_write_json(path, payload)


def load_data_facts(path: Path) -> dict:
    """The class names and image shape a run was trained on (MNIST's for runs that predate them)."""
    payload = json.loads(Path(path).read_text())
    return payload.get("data") or {"class_names": [str(k) for k in range(10)], "image_shape": [28, 28],
                                   "channels": 1}


def load_config(path: Path) -> tuple[TrainConfig, dict]:
    """The run's :class:`TrainConfig` and its model config as a plain dict."""
    if not path.is_file():
        raise SsvaeError(f"{path}: no config.json here; is this a run directory written by `ssvae train`?")
    try:
        payload = json.loads(path.read_text())
        known = {f.name for f in fields(TrainConfig)}
        train = TrainConfig(**{k: v for k, v in payload["train"].items() if k in known})
        return train, payload["model"]
    except (ValueError, KeyError, TypeError) as error:
        raise SsvaeError(f"{path}: not a readable ssvae config ({error})") from None
