"""One run from start to end: data -> label split -> batches -> model -> trainer -> test accuracy.

A run directory holds everything needed to understand and repeat it::

    config.json            the resolved, typed configuration (train and model)
    labelled_indices.json  which training images kept their label
    metrics.jsonl          one line per epoch: loss terms, validation accuracy, speed
    best.pt                weights with the best validation accuracy (the ones evaluated)
    last.pt                weights and optimiser state at the end of the last epoch
    result.json            best validation accuracy and the test accuracy of those weights
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

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
            raise SsvaeError(f"{run_dir} already holds a run; choose another --out or pass --overwrite")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(config: TrainConfig, run_dir: Path, overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """Train one model as ``config`` says, write the run directory, return the result dict."""
    config.validate()
    device = resolve_device(config.device)
    threads = set_threads(config.threads) if device.type == "cpu" else None
    data = load_data(config.data, log=log)
    labelled = balanced_label_split(data.train_labels, config.labels, data.num_classes, config.seed)
    model = build_model(config.model, input_dim=data.train_images.shape[1], num_classes=data.num_classes,
                        **config.model_options)
    run_dir = prepare_run_dir(run_dir, overwrite)
    save_config(run_dir / "config.json", config, model.config)
    (run_dir / "labelled_indices.json").write_text(json.dumps(labelled.tolist()) + "\n")

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
        bf16=use_bf16, compile=use_compile, progress=progress,
    )
    log(f"training {config.model} with {config.labels} labels (seed {config.seed}) on {device}"
        f"{f' with {threads} threads' if threads else ''}; bf16 {'on' if use_bf16 else 'off'}, "
        f"compile {'on' if use_compile else 'off'}; run directory {run_dir}")

    def validate(m):
        return {"val_accuracy": accuracy(m, data.val_images, data.val_labels, device)}

    fit = Trainer(model, batches, validate, run_dir, settings).fit()
    result = evaluate_model(run_dir, model, data, device)
    result.update(epochs=fit.epochs, steps=fit.steps, minutes=fit.minutes)
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate_model(run_dir: Path, model, data, device: torch.device) -> dict:
    """Validation and test accuracy of the run's best checkpoint."""
    best = run_dir / "best.pt"
    if not best.is_file():
        raise SsvaeError(f"{run_dir}: no best.pt; the run has not finished an epoch yet")
    try:
        state = torch.load(best, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
    except Exception as error:  # a truncated or foreign file: say which, never a traceback
        raise SsvaeError(f"{best}: cannot be loaded as an ssvae checkpoint ({error})") from None
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
