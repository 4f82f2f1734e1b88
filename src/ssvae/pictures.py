"""Pictures of a trained run: analogies, class-conditional samples, interpolations, reconstructions,
the latent space, learning curves and the confusion matrix.

Every picture comes in two layers. The first computes arrays from the run's best weights
(:func:`analogies`, :func:`class_samples`, :func:`interpolation`, :func:`reconstructions`,
:func:`latent_embedding`, :func:`confusion_matrix`), for users who draw their own. The second turns
them into an image array or a matplotlib figure (:func:`image_grid`, :func:`latent_figure`,
:func:`curves_figure`, :func:`confusion_figure`), which :func:`save_png` and :func:`save_figure`
write to disk. The ``draw_*`` functions do both for the command line and the report.

Images are decoded as the mean of p(x|...) (pixel probabilities for a Bernoulli decoder), not as
random draws, which would add salt-and-pepper noise and show nothing more.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint
from .config import TrainConfig, load_config, load_data_facts
from .data.batches import to_inputs
from .data.loading import load_data
from .errors import SsvaeError
from .evaluation import class_probabilities
from .models import build_model
from .runtime import resolve_device

# One colour per class that stays distinguishable for 10 classes and repeats beyond.
CLASS_COLOURS = "tab10"
# Frame drawn around the cell of the class the classifier gives an analogy's source image.
HIGHLIGHT = np.array([0.85, 0.2, 0.1])


@dataclass
class Run:
    """A finished (or stopped) run opened for drawing: its config, data facts, and best weights."""

    run_dir: Path
    config: TrainConfig
    model: nn.Module  # best weights, eval mode, on ``device``
    facts: dict  # class_names, image_shape, channels
    device: torch.device
    _data: object = field(default=None, repr=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.facts["class_names"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.facts["image_shape"])

    @property
    def has_classes(self) -> bool:
        return hasattr(self.model, "classify")

    @property
    def data(self):
        """The run's data splits, read (from the cache) on first use."""
        if self._data is None:

            self._data = load_data(self.config.data, log=lambda *a, **k: None, config=self.config)
        return self._data

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images (N, D) -> model inputs in [0, 1] on the run's device."""
        return to_inputs(torch.as_tensor(np.asarray(images), device=self.device), binarize=False)

    def as_images(self, rows: torch.Tensor) -> np.ndarray:
        """Model-space rows (..., D) -> images (..., H, W) or (..., H, W, 3), floats in [0, 1]."""
        array = rows.detach().float().clamp(0, 1).cpu().numpy()
        return array.reshape(*array.shape[:-1], *self.image_shape)

    def histories(self) -> dict[str, list[dict]]:
        """metrics.jsonl of each stage, by stage name: {"M1": ..., "M2": ...} for M1+M2."""
        stages = {"M1": self.run_dir / "m1"} if self.config.model == "m1m2" and self.config.m1_run is None else {}
        stages[self.config.model.upper().replace("M1M2", "M2")] = self.run_dir
        return {name: read_metrics(folder / "metrics.jsonl") for name, folder in stages.items()}


def read_metrics(path: Path) -> list[dict]:
    """One dict per finished epoch; an unreadable last line (a run killed mid-write) is left out."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def open_run(run_dir, device: str = "auto", data=None) -> Run:
    """Open ``run_dir`` for drawing: its model with the best weights. ``data``, if given, saves reading it."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise SsvaeError(f"{run_dir}: not a run directory (no config.json); give a folder written by `ssvae train`")
    config, model_config = load_config(run_dir / "config.json")
    best = run_dir / "best.pt"
    if not best.is_file():
        raise SsvaeError(f"{run_dir}: no best.pt; the run has not finished an epoch yet")
    dev = resolve_device(device)
    model = build_model(config.model, **model_config)
    model.load_state_dict(load_checkpoint(best, map_location=dev)["model"])
    facts = load_data_facts(run_dir / "config.json") or {}
    if "image_shape" not in facts:  # runs written before the data facts were saved: MNIST
        facts = {"class_names": [str(k) for k in range(10)], "image_shape": [28, 28], "channels": 1}
    return Run(run_dir, config, model.to(dev).eval(), facts, dev, data)


def _need_classes(run: Run, what: str) -> None:
    if not run.has_classes:
        raise SsvaeError(f"{run.run_dir}: an M1 run has no classes, so it has no {what}; "
                         f"use an m2, m1m2, adgm or sdgm run")


def pick_images(run: Run, split: str = "test", n: int = 10, indices=None, seed: int = 0):
    """Images of a split, by index or ``n`` at random with ``seed``: (uint8 images (n, D), labels, indices)."""
    if split not in ("train", "val", "test"):
        raise SsvaeError(f"split must be train, val or test, got {split}")
    images, labels = getattr(run.data, f"{split}_images"), getattr(run.data, f"{split}_labels")
    if indices is None:
        if n < 1:
            raise SsvaeError(f"--n must be at least 1, got {n}")
        indices = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    indices = np.asarray(indices, dtype=np.int64)
    bad = [int(i) for i in indices if not 0 <= i < len(images)]
    if bad:
        raise SsvaeError(f"image index {bad[0]} is outside the {split} split (0..{len(images) - 1})")
    return images[indices], labels[indices], indices


# -- arrays ---------------------------------------------------------------------------------------

@dataclass
class Analogies:
    """The paper's analogies: each source image's style drawn as every class."""

    originals: np.ndarray  # (N, H, W[, 3]) in [0, 1]
    predicted: np.ndarray  # (N,) the classifier's class for each source, whose style was inferred with it
    grid: np.ndarray  # (N, K, H, W[, 3]) in [0, 1]: row i, column k is source i's style as class k


@torch.no_grad()
def analogies(run: Run, images: np.ndarray) -> Analogies:
    """Infer z from q(z|x,y) with y from the classifier, then decode that z with every class."""
    _need_classes(run, "analogies")
    x = run.inputs(images)
    k = len(run.class_names)
    predicted = run.model.classify(x).argmax(-1)
    style = run.model.style(x, predicted)
    every_class = torch.arange(k, device=run.device).repeat(len(x))
    decoded = run.model.generate(style.repeat_interleave(k, dim=0), every_class)
    return Analogies(run.as_images(x), predicted.cpu().numpy(), run.as_images(decoded.unflatten(0, (len(x), k))))


@torch.no_grad()
def class_samples(run: Run, per_class: int = 10, seed: int = 0) -> np.ndarray:
    """Images from the model with z drawn from the prior: (K, per_class, H, W[, 3]), one row per class;
    an M1 run, which has no classes, gives one row block of (1, per_class, ...)."""
    generator = torch.Generator(device=run.device).manual_seed(seed)
    model = run.model
    if not run.has_classes:
        z = torch.randn(per_class, model.config.latent_dim, generator=generator, device=run.device)
        return run.as_images(model.generate(z))[None]
    k = len(run.class_names)
    latent_dim = model.m2.config.latent_dim if hasattr(model, "m2") else model.config.latent_dim
    # The same styles in every row, so that the rows differ by class alone.
    z = torch.randn(per_class, latent_dim, generator=generator, device=run.device).repeat(k, 1)
    y = torch.arange(k, device=run.device).repeat_interleave(per_class)
    return run.as_images(model.generate(z, y)).reshape(k, per_class, *run.image_shape)


@torch.no_grad()
def interpolation(run: Run, first: np.ndarray, second: np.ndarray, steps: int = 10) -> np.ndarray:
    """The straight line between two images' latent codes, decoded at fixed class: (K, steps, H, W[, 3]),
    one row per class (one row for M1). Each image's code is inferred at the class the classifier gives it."""
    if steps < 2:
        raise SsvaeError(f"--steps must be at least 2, got {steps}")
    x = run.inputs(np.stack([first, second]))
    weights = torch.linspace(0, 1, steps, device=run.device)[:, None]
    model = run.model
    if not run.has_classes:
        ends = model.latent(x)
        return run.as_images(model.generate(torch.lerp(ends[0], ends[1], weights)))[None]
    ends = model.style(x, model.classify(x).argmax(-1))
    line = torch.lerp(ends[0], ends[1], weights)  # (steps, latent)
    k = len(run.class_names)
    y = torch.arange(k, device=run.device).repeat_interleave(steps)
    return run.as_images(model.generate(line.repeat(k, 1), y)).reshape(k, steps, *run.image_shape)


@torch.no_grad()
def reconstructions(run: Run, images: np.ndarray) -> np.ndarray:
    """Each image encoded and decoded (at the classifier's class for M2 and M1+M2): (N, H, W[, 3])."""
    x = run.inputs(images)
    model = run.model
    if not run.has_classes:
        return run.as_images(model.generate(model.latent(x)))
    predicted = model.classify(x).argmax(-1)
    return run.as_images(model.generate(model.style(x, predicted), predicted))


@torch.no_grad()
def latent_embedding(run: Run, images: np.ndarray, method: str = "pca", seed: int = 0,
                     batch_size: int = 2000) -> tuple[np.ndarray, tuple[str, str]]:
    """Each image's latent q-mean in two dimensions, and the axes' names. A 2-D latent is shown as
    it is; a larger one through PCA (fast, linear) or t-SNE (slower, keeps neighbourhoods)."""
    x = run.inputs(images)
    codes = torch.cat([run.model.latent(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    codes = codes.float().cpu().numpy()
    if codes.shape[1] == 1:
        return np.concatenate([codes, np.zeros_like(codes)], axis=1), ("z[0]", "")
    if codes.shape[1] == 2:
        return codes, ("z[0]", "z[1]")
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(codes)
        share = pca.explained_variance_ratio_
        return pca.transform(codes), (f"PCA 1 ({share[0]:.0%} of variance)", f"PCA 2 ({share[1]:.0%})")
    if method == "tsne":
        from sklearn.manifold import TSNE

        points = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, len(codes) - 1))
        return points.fit_transform(codes), ("t-SNE 1", "t-SNE 2")
    raise SsvaeError(f"latent method must be pca or tsne, got {method}")


@torch.no_grad()
def confusion_matrix(run: Run, split: str = "test") -> np.ndarray:
    """Counts (K, K): row = true class, column = the classifier's class, over a whole split."""

    _need_classes(run, "confusion matrix")
    images, labels = getattr(run.data, f"{split}_images"), getattr(run.data, f"{split}_labels")
    predicted = class_probabilities(run.model, images, run.device).argmax(-1).cpu().numpy()
    k = len(run.class_names)
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


# -- rendering --------------------------------------------------------------------------------------

def image_grid(cells: np.ndarray, scale: int | None = None, gap: int = 2,
               highlight: dict[tuple[int, int], np.ndarray] | None = None) -> np.ndarray:
    """Tile ``cells`` (rows, columns, H, W[, 3]) in [0, 1] into one RGB uint8 image.

    Cells are enlarged by ``scale`` (nearest neighbour; by default so that a cell is at least 56
    pixels high) and set on a grey background ``gap`` pixels apart; ``highlight`` maps (row, column)
    to the RGB colour of a frame drawn in the gap around that cell."""
    cells = np.asarray(cells, dtype=np.float32)
    if cells.ndim == 4:  # grey -> RGB
        cells = np.repeat(cells[..., None], 3, axis=-1)
    rows, columns, height, width, _ = cells.shape
    scale = scale or max(1, math.ceil(56 / height))
    h, w = height * scale, width * scale
    canvas = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), 0.5, dtype=np.float32)
    for (r, c), colour in (highlight or {}).items():
        canvas[r * (h + gap):(r + 1) * (h + gap) + gap, c * (w + gap):(c + 1) * (w + gap) + gap] = colour
    enlarged = cells.repeat(scale, axis=2).repeat(scale, axis=3)
    for r in range(rows):
        for c in range(columns):
            top, left = gap + r * (h + gap), gap + c * (w + gap)
            canvas[top:top + h, left:left + w] = enlarged[r, c]
    return (canvas * 255).round().astype(np.uint8)


def save_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def latent_figure(points: np.ndarray, labels: np.ndarray, class_names: list[str], axes: tuple[str, str],
                  title: str):
    """Scatter of 2-D latent points coloured by (true) class, with a legend of class names."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    colours = plt.get_cmap(CLASS_COLOURS)
    for k, name in enumerate(class_names):
        chosen = labels == k
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.6, color=colours(k % 10), label=name)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=10)
    ax.legend(markerscale=3, fontsize=8, loc="best", frameon=False, ncol=2 if len(class_names) > 10 else 1)
    figure.tight_layout()
    return figure


# What each metric is called on a plot; the trainer writes them per epoch in metrics.jsonl.
METRIC_LABELS = {
    "val_accuracy": "validation accuracy", "val_elbo": "validation ELBO (nats)", "loss": "training loss J",
    "labelled_bound": "labelled bound L (nats)", "unlabelled_bound": "unlabelled bound U (nats)",
    "classification": "cross-entropy -log q(y|x)", "classifier_entropy": "entropy H(q(y|x))",
    "reconstruction": "reconstruction -log p(x|z)", "kl": "KL(q(z|x) || p(z))",
}


def curves_figure(histories: dict[str, list[dict]]):
    """Every logged metric of every stage against epochs (left) and minutes of training (right).

    For M1+M2 the M2 stage's minutes start where M1's ended, so the right column reads as wall time."""
    plt = _pyplot()
    panels, offset = [], 0.0
    for stage, rows in histories.items():
        if not rows:
            continue
        for key in METRIC_LABELS:
            if key in rows[0]:
                panels.append((stage, key, rows, offset))
        offset += rows[-1].get("minutes", 0.0)
    if not panels:
        raise SsvaeError("no finished epoch in metrics.jsonl: nothing to plot yet")
    figure, axes = plt.subplots(len(panels), 2, figsize=(9, 2.0 * len(panels)), dpi=100, squeeze=False)
    for (stage, key, rows, start), (by_epoch, by_minute) in zip(panels, axes):
        values = [row[key] for row in rows]
        epochs = [row["epoch"] for row in rows]
        minutes = [start + row["minutes"] for row in rows]
        colour = "tab:orange" if key.startswith("val_") else "tab:blue"
        by_epoch.plot(epochs, values, color=colour, marker="." if len(rows) < 30 else None)
        by_minute.plot(minutes, values, color=colour, marker="." if len(rows) < 30 else None)
        label = f"{stage}: {METRIC_LABELS[key]}" if len(histories) > 1 else METRIC_LABELS[key]
        by_epoch.set_ylabel(label, fontsize=8)
        for ax in (by_epoch, by_minute):
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("epoch")
    axes[-1, 1].set_xlabel("minutes of training")
    figure.tight_layout()
    return figure


def confusion_figure(matrix: np.ndarray, class_names: list[str], title: str):
    """The confusion matrix as a heat map of row shares, each cell labelled with its count."""
    plt = _pyplot()
    k = len(class_names)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.8, 0.5 * k + 1.5)
    figure, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, fontsize=8, rotation=90 if k > 10 else 0)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    figure.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class")
    figure.tight_layout()
    return figure


def save_figure(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    _pyplot().close(figure)
    return path


# -- the pictures the command line draws ------------------------------------------------------------

def draw_analogy(run: Run, path: Path, n: int = 10, indices=None, seed: int = 0, split: str = "test") -> Path:
    """The analogy grid: one row per source image, the original first, then its style as every class.
    The cell of the class the classifier gives the source is framed."""
    images, _, _ = pick_images(run, split, n, indices, seed)
    result = analogies(run, images)
    cells = np.concatenate([result.originals[:, None], result.grid], axis=1)
    frames = {(row, 1 + int(k)): HIGHLIGHT for row, k in enumerate(result.predicted)}
    return save_png(image_grid(cells, highlight=frames), path)


def draw_samples(run: Run, path: Path, per_class: int = 10, seed: int = 0) -> Path:
    return save_png(image_grid(class_samples(run, per_class, seed)), path)


def draw_interpolation(run: Run, path: Path, first: int, second: int, steps: int = 10,
                       split: str = "test") -> Path:
    """Rows of classes, columns from the first image's style to the second's; the two originals
    stand at the ends of the top row's frame, in an extra first and last column."""
    images, _, _ = pick_images(run, split, indices=[first, second])
    line = interpolation(run, images[0], images[1], steps)
    originals = run.as_images(run.inputs(images))
    blank = np.full_like(originals[0], 0.5)
    left = np.stack([originals[0]] + [blank] * (len(line) - 1))[:, None]
    right = np.stack([originals[1]] + [blank] * (len(line) - 1))[:, None]
    return save_png(image_grid(np.concatenate([left, line, right], axis=1)), path)


def draw_reconstructions(run: Run, path: Path, n: int = 10, seed: int = 0, split: str = "test") -> Path:
    """Two rows: originals above their reconstructions."""
    images, _, _ = pick_images(run, split, n, seed=seed)
    cells = np.stack([run.as_images(run.inputs(images)), reconstructions(run, images)])
    return save_png(image_grid(cells), path)


def draw_latent(run: Run, path: Path, method: str = "pca", n: int = 5000, seed: int = 0,
                split: str = "test") -> Path:
    images, labels, _ = pick_images(run, split, n, seed=seed)
    points, axes = latent_embedding(run, images, method, seed)
    title = f"{run.model.latent_name}, {len(images)} {split} images coloured by true class"
    return save_figure(latent_figure(points, labels, run.class_names, axes, title), path)


def draw_curves(run: Run, path: Path) -> Path:
    return save_figure(curves_figure(run.histories()), path)


def draw_confusion(run: Run, path: Path, split: str = "test") -> Path:
    matrix = confusion_matrix(run, split)
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    title = f"{split} set: {matrix.sum()} images, accuracy {accuracy:.4f}"
    return save_figure(confusion_figure(matrix, run.class_names, title), path)


def draw_plots(run: Run, folder: Path, method: str = "pca", seed: int = 0) -> list[Path]:
    """What `ssvae plot` draws: the latent space, reconstructions, learning curves, and (for
    classifiers) the test confusion matrix."""
    folder = Path(folder)
    written = [draw_latent(run, folder / "latent.png", method, seed=seed),
               draw_reconstructions(run, folder / "reconstructions.png", seed=seed),
               draw_curves(run, folder / "curves.png")]
    if run.has_classes:
        written.append(draw_confusion(run, folder / "confusion.png"))
    return written
