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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_json, atomic_write_text, load_checkpoint
from .config import TrainConfig, load_config, save_config
from .data.batches import SemiSupervisedBatches, to_inputs
from .data.labels import balanced_label_split, partial_labels
from .errors import SsvaeError
from .models import build_model
from .runtime import bf16_supported, resolve_device, seed_everything, set_threads
from .trainer import Trainer, TrainerSettings


def load_data(spec: str, log=print):
    """The data set named by ``--data``: ``mnist`` (fetched and cached) or a folder with MNIST files."""
    from .data.mnist import load_mnist

    return load_mnist(None if spec == "mnist" else spec, log=log)


@torch.no_grad()
def accuracy(model, images: np.ndarray, labels: np.ndarray, device: torch.device, batch_size: int = 2000) -> float:
    """Fraction of ``images`` (uint8) whose most probable class under q(y|x) is the true one.

    Test inputs are grey levels, the expectation of the binary samples seen in training.
    """
    was_training = model.training
    model.eval()
    correct = 0
    x_all = torch.as_tensor(images, device=device)
    y_all = torch.as_tensor(labels, device=device)
    for start in range(0, len(x_all), batch_size):
        x = to_inputs(x_all[start:start + batch_size], binarize=False)
        correct += (model.classify(x).argmax(-1) == y_all[start:start + batch_size]).sum()
    model.train(was_training)
    return float(correct) / len(labels)


def prepare_run_dir(run_dir: Path, overwrite: bool) -> Path:
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise SsvaeError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                             f"or choose another --out, or pass --overwrite to replace it")
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
    device = resolve_device(config.device)
    threads = set_threads(config.threads) if device.type == "cpu" else None
    data = load_data(config.data, log=log)
    if not resume:
        labelled = balanced_label_split(data.train_labels, config.labels, data.num_classes, config.seed)
    model = build_model(config.model, input_dim=data.train_images.shape[1], num_classes=data.num_classes,
                        **config.model_options)
    if not resume:
        run_dir = prepare_run_dir(run_dir, overwrite)
        save_config(run_dir / "config.json", config, model.config)
        atomic_write_text(run_dir / "labelled_indices.json", json.dumps(labelled.tolist()) + "\n")

    seed_everything(config.seed)
    # Re-create the model after seeding so the initial weights depend on the seed alone.
    model = build_model(config.model, **asdict(model.config))
    train_images, train_labels = data.train_images, partial_labels(data.train_labels, labelled)
    if config.max_unlabelled is not None:  # the labelled images and the first max_unlabelled others
        keep = np.sort(np.concatenate([labelled, np.flatnonzero(train_labels < 0)[:config.max_unlabelled]]))
        train_images, train_labels = train_images[keep], train_labels[keep]
    batches = SemiSupervisedBatches(
        train_images, train_labels,
        config.labelled_batch_size, config.unlabelled_batch_size, config.binarize, device, config.seed,
    )
    use_bf16 = config.bf16 == "on" or (config.bf16 == "auto" and bf16_supported(device))
    budget_minutes = config.minutes if config.minutes is not None else float("inf")
    use_compile = config.compile == "on" or (config.compile == "auto" and budget_minutes >= 3)
    settings = TrainerSettings(
        epochs=config.epochs, minutes=config.minutes, learning_rate=config.learning_rate, device=device,
        bf16=use_bf16, compile=use_compile, progress=progress, checkpoint_minutes=config.checkpoint_minutes,
        checkpoint_each_epoch=config.checkpoint_each_epoch,
    )

    def validate(m):
        return {"val_accuracy": accuracy(m, data.val_images, data.val_labels, device)}

    trainer = Trainer(model, batches, validate, run_dir, settings)
    if resume and (run_dir / "last.pt").is_file():
        trainer.resume()
        if trainer.finished():
            log(f"{run_dir} has used its whole budget; evaluating it again")
        else:
            log(f"resuming {run_dir} at epoch {trainer.epochs_done + 1}, step {trainer.steps} "
                f"({trainer.elapsed_seconds / 60:.1f} min trained)")
    elif resume:
        log(f"{run_dir} has no checkpoint yet: starting it from the beginning")
        for stale in ("metrics.jsonl", "best.pt", "result.json"):
            (run_dir / stale).unlink(missing_ok=True)
    log(f"training {config.model} with {config.labels} labels (seed {config.seed}) on {device}"
        f"{f' with {threads} threads' if threads else ''}; bf16 {'on' if use_bf16 else 'off'}, "
        f"compile {'on' if use_compile else 'off'}; run directory {run_dir}")
    fit = trainer.fit()
    result = evaluate_model(run_dir, model, data, device)
    result.update(epochs=fit.epochs, steps=fit.steps, minutes=fit.minutes, skipped_steps=trainer.skipped_steps)
    atomic_write_json(run_dir / "result.json", result)
    return result


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


def evaluate_model(run_dir: Path, model, data, device: torch.device) -> dict:
    """Validation and test accuracy of the run's best checkpoint."""
    best = run_dir / "best.pt"
    if not best.is_file():
        raise SsvaeError(f"{run_dir}: no best.pt; the run has not finished an epoch yet")
    state = load_checkpoint(best, map_location=device)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as error:  # weights of another model or shape
        raise SsvaeError(f"{best}: does not fit the model in {run_dir / 'config.json'} ({error})") from None
    model.to(device)
    return {
        "val_accuracy": accuracy(model, data.val_images, data.val_labels, device),
        "test_accuracy": accuracy(model, data.test_images, data.test_labels, device),
        "checkpoint_epoch": state.get("epoch"),
    }


def evaluate_run(run_dir: Path, device: str = "auto", data_spec: str | None = None, log=print) -> dict:
    """Rebuild a run's model from its config, load its best weights, measure validation and test accuracy."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SsvaeError(f"{run_dir}: no such run directory")
    config, model_config = load_config(run_dir / "config.json")
    dev = resolve_device(device)
    data = load_data(data_spec or config.data, log=log)
    model = build_model(config.model, **model_config)
    return evaluate_model(run_dir, model, data, dev)
