"""One run from start to end: data -> label split -> batches -> model -> trainer -> test accuracy.

A run directory holds everything needed to understand and repeat it::

    config.json            the resolved, typed configuration (train and model)
    labelled_indices.json  which training images kept their label
    metrics.jsonl          one line per epoch: loss terms, validation accuracy, speed
    best.pt                weights with the best validation accuracy (the ones evaluated)
    last.pt                everything needed to resume exactly: weights, optimiser, position, generators
    checkpoints.json       which checkpoint is current, and where it stands
    result.json            best validation accuracy and the test accuracy of those weights

Every one of them is written atomically (see :mod:`ssvae.checkpoint`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_json, atomic_write_text, load_checkpoint
from .config import TrainConfig, load_config, save_config
from .data.batches import SemiSupervisedBatches, to_inputs
from .data.loading import data_facts, load_data
from .data.labels import balanced_label_split, partial_labels
from .errors import SsvaeError
from .evaluation import accuracy, correct_predictions
from .intervals import accuracy_figures
from .models.likelihoods import bits_per_dimension
from .models import CLASSIFIERS, build_model
from .runtime import (Processes, barrier, bf16_supported, processes_from_env, resolve_device, seed_everything,
                      set_threads, start_processes, stop_processes, threads_per_process)
from .trainer import Trainer, TrainerSettings


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to train into a directory that holds a run, unless asked to replace it; refuse to
    replace a non-empty directory that holds no run (a mistyped --out must not delete a user's files)."""
    run_dir = Path(run_dir)
    if not (run_dir.exists() and any(run_dir.iterdir())):
        return
    if not (run_dir / "config.json").is_file():
        raise SsvaeError(f"{run_dir} is not empty and holds no ssvae run (no config.json); "
                         f"--overwrite replaces only a run directory: choose another --out")
    if not overwrite:
        raise SsvaeError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                         f"or choose another --out, or pass --overwrite to replace it")


def prepare_run_dir(run_dir: Path, overwrite: bool) -> Path:
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite)
    if run_dir.exists() and any(run_dir.iterdir()):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(config: TrainConfig, run_dir: Path, overwrite: bool = False, progress: bool = True, log=print,
          resume: bool = False) -> dict:
    """Train one model as ``config`` says, write the run directory, return the result dict.

    With ``resume``, ``config`` is ignored but for where and how to compute (device, threads): the
    run's own config.json, label split and last checkpoint decide everything else.
    """
    run_dir = Path(run_dir)
    if resume:
        config, labelled = _resumable_run(run_dir, config)
    config.validate()
    # Started by torchrun: one model trained by several processes, of which rank 0 alone logs,
    # validates and writes; the others train and stay silent.
    processes = processes_from_env()
    if not processes.is_main:
        log, progress = (lambda *args, **kwargs: None), False
    device = start_processes(processes, resolve_device(config.device))
    result = _train(config, run_dir, overwrite, progress, log, resume, labelled if resume else None,
                    processes, device)
    stop_processes(processes)
    return result


def _train(config: TrainConfig, run_dir: Path, overwrite: bool, progress: bool, log, resume: bool,
           labelled: np.ndarray | None, processes: Processes, device: torch.device) -> dict:
    if device.type == "cpu":
        threads = set_threads(config.threads or (threads_per_process(processes) if processes.distributed else None))
    else:
        threads = None
    if not resume:  # refuse an existing run on every process before rank 0 touches anything
        check_run_dir(run_dir, overwrite)
    if not processes.is_main:  # rank 0 fetches and caches the data first; the others then read the cache
        barrier(processes)
    data = load_data(config.data, log=log, config=config)
    if processes.is_main:
        barrier(processes)
    from_files = getattr(data, "labels_from_files", False)
    if from_files and config.layout == "auto":  # so that predict reads new folders as this one was read
        config.layout = data.layout
    if config.model == "m1":
        labelled = np.zeros(0, dtype=np.int64)  # M1 learns without labels
    elif from_files and not resume:  # a folder: its file names say which images are labelled
        labelled = np.flatnonzero(data.train_labels >= 0).astype(np.int64)
        config.labels = len(labelled)
    elif not resume:
        labelled = balanced_label_split(data.train_labels, config.labels, data.num_classes, config.seed)
    if resume and config.model in CLASSIFIERS:
        model_config = resumed_model_config(run_dir, config.model)
    else:
        model_config = initial_model_config(config, data)
    if not resume and processes.is_main:
        run_dir = prepare_run_dir(run_dir, overwrite)
        save_config(run_dir / "config.json", config, model_config, data_facts(data))
        atomic_write_text(run_dir / "labelled_indices.json", json.dumps(labelled.tolist()) + "\n")
    together = f", {processes.world} processes (DDP)" if processes.distributed else ""
    log(f"training {config.model}{'' if config.model == 'm1' else f' with {config.labels} labels'} "
        f"(seed {config.seed}) on {device}{f' with {threads} threads' if threads else ''}{together}; "
        f"run directory {run_dir}")
    stage = Stage(config, data, labelled, device, progress, log, resume, processes)
    if config.model == "m1":
        result = stage.train_m1(run_dir, model_config)
    elif config.model in CLASSIFIERS:
        result = stage.train_classifier(run_dir, build_model(config.model, **asdict(model_config)), config.minutes)
    else:
        result = stage.train_m1m2(run_dir, model_config)
    if not processes.is_main:
        return {}
    atomic_write_json(run_dir / "result.json", result)
    if config.report:
        _write_report(run_dir, data, device, log)
    return result


def _write_report(run_dir: Path, data, device: torch.device, log) -> None:
    """report.html at the end of a run. The run itself is done and saved by now, so a picture that
    cannot be drawn costs a warning, not the run."""
    from .report import write_report

    try:
        log(f"report: {write_report(run_dir, device=str(device), data=data)}")
    except Exception as error:  # noqa: BLE001 - any failure here must leave the finished run intact
        log(f"report not written ({type(error).__name__}: {error}); draw it with `ssvae report {run_dir}`")


def initial_model_config(config: TrainConfig, data):
    """The model's config from the run's options and the data's shape. For M1+M2 the active
    dimensions of z1 are not known until M1 is trained; they are filled in then."""
    from .models.auxiliary import AuxiliaryConfig
    from .models.m1 import M1Config
    from .models.m1m2 import STACKED_M2_DEFAULTS, M1M2Config
    from .models.m2 import M2Config

    facts = {"input_dim": data.train_images.shape[1], "num_classes": data.num_classes}
    options = dict(config.model_options)
    if config.model in ("m1", "adgm", "sdgm") and ({"hidden_dim", "hidden_layers"} & set(options)):
        # One width for every hidden layer; what is not given stays the model's default.
        default = (M1Config if config.model == "m1" else AuxiliaryConfig)().hidden_dims
        width, layers = options.pop("hidden_dim", default[0]), options.pop("hidden_layers", len(default))
        options["hidden_dims"] = (width,) * layers
    likelihood = resolve_likelihood(config.likelihood)
    try:
        if config.model == "m1":
            model_config = M1Config(**{**facts, "likelihood": likelihood, **options})
        elif config.model in CLASSIFIERS:
            if config.model == "m2":
                model_config = M2Config(**{**facts, "likelihood": likelihood, **options})
            else:
                model_config = AuxiliaryConfig(**{**facts, "likelihood": likelihood, "skip": config.model == "sdgm",
                                                  **options})
        else:
            m1_config = M1Config(**{**facts, "likelihood": likelihood, **options.pop("m1", {})})
            m2_config = M2Config(**{**STACKED_M2_DEFAULTS, "input_dim": m1_config.latent_dim,
                                    "num_classes": data.num_classes, **options})
            model_config = M1M2Config(m1=m1_config, m2=m2_config)
            m1_config.validate()
            m2_config.validate()
            return model_config
    except TypeError as error:
        raise SsvaeError(f"model {config.model}: {error}") from None
    model_config.validate()
    return model_config


def resolve_likelihood(requested: str) -> str:
    """The likelihood p(x|...) of the images: the one asked for, or for ``auto`` the Bernoulli. On
    Fashion-MNIST it classified as well as the discretised logistic in M2 and better in SDGM, at half
    the cost per step, while the logistic's far larger bound swamped the label term and the continuous
    Bernoulli's ran away on black pixels (docs/fashion-mnist.md); on MNIST it was always the choice."""
    return requested if requested != "auto" else "bernoulli"


def resumed_model_config(run_dir: Path, model: str):
    """The model config a run was started with, as its config.json records it, so that a run resumed
    after a default changed goes on as it began. Options the file lacks predate it: they take the
    values that reproduce what the code then did (``DEFAULTS_BEFORE_THEY_WERE_OPTIONS``)."""
    from .models import REGISTRY

    _, saved = load_config(Path(run_dir) / "config.json")
    config_class = REGISTRY[model][1]
    earlier = getattr(config_class, "DEFAULTS_BEFORE_THEY_WERE_OPTIONS", {})
    try:
        model_config = config_class(**{**earlier, **saved})
    except TypeError as error:
        raise SsvaeError(f"{run_dir}/config.json: model {model}: {error}") from None
    model_config.validate()
    return model_config


class Stage:
    """Trains the stages of one run: M1, a classifier (M2 on pixels or on M1's features), or both."""

    def __init__(self, config: TrainConfig, data, labelled: np.ndarray, device: torch.device, progress: bool,
                 log, resume: bool, processes: Processes = Processes()):
        self.config, self.data, self.labelled, self.device = config, data, labelled, device
        self.progress, self.log, self.resume, self.processes = progress, log, resume, processes

    def settings(self, minutes: float | None, selection_metric: str | None) -> TrainerSettings:
        c = self.config
        use_bf16 = c.bf16 == "on" or (c.bf16 == "auto" and bf16_supported(self.device))
        budget = minutes if minutes is not None else float("inf")
        use_compile = c.compile == "on" or (c.compile == "auto" and budget >= 3)
        return TrainerSettings(
            epochs=c.epochs, minutes=minutes, learning_rate=c.lr, device=self.device, bf16=use_bf16,
            compile=use_compile, progress=self.progress, selection_metric=selection_metric,
            checkpoint_minutes=c.checkpoint_minutes, checkpoint_each_epoch=c.checkpoint_each_epoch,
            processes=self.processes,
        )

    def batches(self, labelled_batch_size: int, noise_width: int) -> SemiSupervisedBatches:
        """Training batches, with ``noise_width`` standard normals per image for the model; with no
        labelled batch (M1), every training image counts as unlabelled. With several processes,
        this one's share of every batch."""
        c, data = self.config, self.data
        labelled = self.labelled if labelled_batch_size > 0 else np.zeros(0, dtype=np.int64)
        train_images, train_labels = data.train_images, partial_labels(data.train_labels, labelled)
        if c.max_unlabelled is not None:  # the labelled images and the first max_unlabelled others
            keep = np.sort(np.concatenate([labelled, np.flatnonzero(train_labels < 0)[:c.max_unlabelled]]))
            train_images, train_labels = train_images[keep], train_labels[keep]
        return SemiSupervisedBatches(train_images, train_labels, labelled_batch_size, c.unlabelled_batch_size,
                                     c.binarize, self.device, c.seed, noise_width,
                                     (self.processes.rank, self.processes.world))

    def fit(self, model, batches, validate, run_dir: Path, settings: TrainerSettings):
        self.log(f"{type(model).__name__}: bf16 {'on' if settings.bf16 else 'off'}, "
                 f"compile {'on' if settings.compile else 'off'}")
        trainer = Trainer(model, batches, validate, run_dir, settings)
        if self.resume and (run_dir / "last.pt").is_file():
            trainer.resume()
            if trainer.finished():
                self.log(f"{run_dir} has used its whole budget; evaluating it again")
            else:
                self.log(f"resuming {run_dir} at epoch {trainer.epochs_done + 1}, step {trainer.steps} "
                         f"({trainer.elapsed_seconds / 60:.1f} min trained)")
        elif self.resume:
            self.log(f"{run_dir} has no checkpoint yet: starting it from the beginning")
            for stale in ("metrics.jsonl", "best.pt", "result.json"):
                if self.processes.is_main:
                    (run_dir / stale).unlink(missing_ok=True)
        return trainer, trainer.fit()

    def train_classifier(self, run_dir: Path, model, minutes: float | None) -> dict:
        """M2, on pixels or (inside M1+M2) on M1's features: best weights chosen on validation accuracy."""
        seed_everything(self.config.seed)
        # Re-create the model after seeding so the initial weights depend on the seed alone.
        model = _fresh_copy(model)
        data, device = self.data, self.device

        def validate(m):
            if not len(data.val_labels):
                return {}
            return {"val_accuracy": accuracy(m, data.val_images, data.val_labels, device, thorough=False)}

        # With --holdout 0, or no validation image at all, nothing is chosen on validation.
        choose = "val_accuracy" if self.config.holdout > 0 and len(data.val_labels) else None
        trainer, fit = self.fit(model, self.batches(self.config.labelled_batch_size, model.noise_width), validate,
                                run_dir, self.settings(minutes, choose))
        if not self.processes.is_main:
            return {}
        result = evaluate_model(run_dir, model, data, device)
        result.update(epochs=fit.epochs, steps=fit.steps, minutes=fit.minutes, skipped_steps=trainer.skipped_steps)
        return result

    def train_m1(self, run_dir: Path, model_config) -> dict:
        """M1 on every training image, labels unused: best weights chosen on the validation ELBO."""
        from .models.m1 import M1

        seed_everything(self.config.seed)
        model = M1(model_config)
        data, device, binarize = self.data, self.device, self.config.binarize

        def validate(m):
            return {"val_elbo": -mean_negative_elbo(m, data.val_images, device, binarize)}

        trainer, fit = self.fit(model, self.batches(0, model.noise_width), validate, run_dir,
                                self.settings(self.config.minutes, "val_elbo"))
        if not self.processes.is_main:
            return {}
        result = evaluate_model(run_dir, model, data, device, binarize=binarize)
        result.update(epochs=fit.epochs, steps=fit.steps, minutes=fit.minutes, skipped_steps=trainer.skipped_steps)
        return result

    def train_m1m2(self, run_dir: Path, model_config) -> dict:
        """M1 first (or a trained one reused), then M2 on its active latent dimensions."""
        from .models.m1m2 import M1M2, M1M2Config, active_dimensions

        c = self.config
        if c.m1_run is not None:
            m1, m1_minutes = load_m1(Path(c.m1_run), self.device), 0.0
            self.log(f"stage 1: M1 from {c.m1_run}")
        else:
            m1_dir = run_dir / "m1"
            main = self.processes.is_main
            if not (m1_dir / "result.json").is_file():
                m1_budget = c.minutes * c.m1_share if c.minutes is not None else None
                self.log(f"stage 1: M1 in {m1_dir}" + (f", {m1_budget:.1f} minutes" if m1_budget else ""))
                m1_config = TrainConfig(**{**asdict(c), "model": "m1", "minutes": m1_budget, "m1_run": None,
                                           "learning_rate": None, "model_options": {}})
                if main:
                    m1_dir.mkdir(exist_ok=True)
                    save_config(m1_dir / "config.json", m1_config, model_config.m1, data_facts(self.data))
                    atomic_write_text(m1_dir / "labelled_indices.json", "[]\n")
                m1_result = Stage(m1_config, self.data, self.labelled, self.device, self.progress, self.log,
                                  self.resume, self.processes).train_m1(m1_dir, model_config.m1)
                if main:
                    atomic_write_json(m1_dir / "result.json", m1_result)
                barrier(self.processes)  # every process goes on with the M1 that rank 0 kept
            m1_minutes = json.loads((m1_dir / "result.json").read_text())["minutes"]
            m1 = load_m1(m1_dir, self.device)
        images = to_inputs(torch.as_tensor(self.data.train_images, device=self.device), binarize=False)
        active = active_dimensions(m1, images, c.active_threshold)
        full = M1M2Config(m1=m1.config, m2=replace(model_config.m2, input_dim=len(active)), active_dims=active)
        full.validate()
        if self.processes.is_main:
            save_config(run_dir / "config.json", c, full, data_facts(self.data))
        self.log(f"stage 2: M2 on {len(active)} active dimensions of M1's z (of {m1.config.latent_dim})")
        model = M1M2(full)
        model.m1.load_state_dict(m1.state_dict())
        minutes = None if c.minutes is None else max(c.minutes - m1_minutes, 0.01)
        result = self.train_classifier(run_dir, model, minutes)
        if not self.processes.is_main:
            return {}
        result.update(m1_minutes=m1_minutes, active_dims=len(active))
        if c.minutes is not None:
            result["minutes"] += m1_minutes
        return result


def _fresh_copy(model):
    """A new instance of ``model``'s class and config, keeping any frozen part it already holds."""
    from .models.m1m2 import M1M2

    fresh = type(model)(model.config)
    if isinstance(model, M1M2):
        fresh.m1.load_state_dict(model.m1.state_dict())
    return fresh


def load_m1(run_dir: Path, device: torch.device):
    """The best M1 of a finished (or stopped) M1 run, for reuse as M1+M2's first stage."""
    from .models.m1 import M1, M1Config

    config, model_config = load_config(Path(run_dir) / "config.json")
    if config.model != "m1":
        raise SsvaeError(f"--m1 {run_dir}: that run trained {config.model}, not m1")
    model = M1(M1Config(**model_config))
    state = load_checkpoint(Path(run_dir) / "best.pt", map_location=device)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


@torch.no_grad()
def mean_negative_elbo(model, images: np.ndarray, device: torch.device, binarize: bool,
                       batch_size: int = 2000) -> float:
    """M1's mean -ELBO over ``images`` in nats, with one fixed-seed sample of z (and of the pixels,
    when binarised) per image, so that epochs are compared on the same noise."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(0)
    total = 0.0
    x_all = torch.as_tensor(images, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for start in range(0, len(x_all), batch_size):
            x = to_inputs(x_all[start:start + batch_size], binarize, generator)
            total += float(model.negative_elbo(x).sum())
    model.train(was_training)
    return total / len(x_all)


def _resumable_run(run_dir: Path, requested: TrainConfig) -> tuple[TrainConfig, np.ndarray]:
    """The config and label split of the run in ``run_dir``, with the requested device and threads."""
    if not run_dir.is_dir():
        raise SsvaeError(f"--resume {run_dir}: no such run directory")
    config, _ = load_config(run_dir / "config.json")
    indices = run_dir / "labelled_indices.json"
    try:
        labelled = np.array(json.loads(indices.read_text()), dtype=np.int64)
    except (OSError, ValueError) as error:
        raise SsvaeError(f"{indices}: missing or unreadable ({error}); this run cannot be resumed") from None
    # Where to compute may change (another machine, a free GPU); bit-exact continuation on CPU needs
    # the same number of threads, so the run's own are kept unless others are asked for.
    if requested.device != "auto":
        config.device = requested.device
    if requested.threads is not None:
        config.threads = requested.threads
    return config, labelled


def evaluate_model(run_dir: Path, model, data, device: torch.device, binarize: bool = False) -> dict:
    """The run's best checkpoint on validation and test: accuracy for classifiers, the ELBO for M1."""
    best = run_dir / "best.pt"
    if not best.is_file():
        raise SsvaeError(f"{run_dir}: no best.pt; the run has not finished an epoch yet")
    state = load_checkpoint(best, map_location=device)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as error:  # weights of another model or shape
        raise SsvaeError(f"{best}: does not fit the model in {run_dir / 'config.json'} ({error})") from None
    model.to(device)
    if not hasattr(model, "classify"):
        test_negative_elbo = mean_negative_elbo(model, data.test_images, device, binarize)
        return {
            "val_elbo": -mean_negative_elbo(model, data.val_images, device, binarize),
            "test_elbo": -test_negative_elbo,
            **bound_figures("test", test_negative_elbo, model),
            "checkpoint_epoch": state.get("epoch"),
        }
    result = {"checkpoint_epoch": state.get("epoch")}
    for split in ("val", "test"):  # a split with no image (--holdout 0 and no folder for it) is left out
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if len(labels):
            result.update(accuracy_figures(split, correct_predictions(model, images, labels, device), len(labels)))
    if hasattr(model, "unlabelled_bound") and len(data.test_labels):  # a bound on the pixels (not M1+M2's features)
        result.update(bound_figures("test", mean_unlabelled_bound(model, data.test_images, device), model))
    return result


def bound_figures(prefix: str, negative_bound: float, model) -> dict:
    """A mean negative bound in nats per image, and in bits per dimension where the likelihood is a
    probability over the 256 levels of each input (elsewhere bits would not be comparable)."""
    figures = {f"{prefix}_bound_nats": negative_bound}
    observation = getattr(model, "observation", None)
    if observation is not None and observation.discrete:
        figures[f"{prefix}_bits_per_dim"] = bits_per_dimension(negative_bound, model.config.input_dim)
    return figures


@torch.no_grad()
def mean_unlabelled_bound(model, images: np.ndarray, device: torch.device, batch_size: int = 500) -> float:
    """The mean of U(x), the negative bound with y summed out, in nats per image (lower is better), at
    one fixed-seed draw of the latent variables per image."""
    was_training = model.training
    model.eval()
    total = 0.0
    x_all = torch.as_tensor(images, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for start in range(0, len(x_all), batch_size):
            total += float(model.unlabelled_bound(to_inputs(x_all[start:start + batch_size], binarize=False))[0].sum())
    model.train(was_training)
    return total / len(x_all)


def evaluate_run(run_dir: Path, device: str = "auto", data_spec: str | None = None, log=print,
                 generative_weight: float | None = None) -> dict:
    """Rebuild a run's model from its config, load its best weights, measure validation and test
    accuracy; ADGM and SDGM with another ``generative_weight`` where given (0: q alone)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SsvaeError(f"{run_dir}: no such run directory")
    config, model_config = load_config(run_dir / "config.json")
    if generative_weight is not None:
        if config.model not in ("adgm", "sdgm"):
            raise SsvaeError(f"--generative-weight reads adgm and sdgm runs; {run_dir} trained {config.model}")
        model_config = {**model_config, "generative_weight": generative_weight}
    dev = resolve_device(device)
    data = load_data(data_spec or config.data, log=log, config=config)
    model = build_model(config.model, **model_config)
    return evaluate_model(run_dir, model, data, dev, binarize=config.binarize)
