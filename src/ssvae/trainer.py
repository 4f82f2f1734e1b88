"""A trainer that knows nothing about any model family.

It needs a model whose ``loss(batch)`` returns a dataclass with a ``loss`` field (to minimise) and
any other scalar terms (to log), an iterable of batches whose length is one epoch, and a
``validate(model) -> dict`` whose ``selection_metric`` picks the best checkpoint. Validation runs
on the validation split only: the test split never influences which weights are kept.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from .runtime import autocast


@dataclass
class TrainerSettings:
    epochs: int | None
    minutes: float | None
    learning_rate: float
    device: torch.device
    bf16: bool
    compile: bool
    selection_metric: str = "val_accuracy"
    progress: bool = True


@dataclass
class TrainResult:
    epochs: int
    steps: int
    minutes: float
    best_epoch: int
    best_metrics: dict
    history: list


class Trainer:
    def __init__(self, model: nn.Module, batches: Iterable, validate: Callable[[nn.Module], dict],
                 run_dir: Path, settings: TrainerSettings):
        self.model = model.to(settings.device)
        self.batches = batches
        self.validate = validate
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, foreach=True)
        # Compiling the loss fuses the many small element-wise ops around the matrix multiplies
        # (softplus, sampling, the Bernoulli log-likelihood) and their backward; it costs ~20-40 s
        # once, so it is only worth it for runs of a few minutes or more.
        self.loss_fn = torch.compile(model.loss) if settings.compile else model.loss

    def step(self, batch):
        """One optimiser step on ``batch``; returns the loss terms (tensors on the device)."""
        with autocast(self.settings.device, self.settings.bf16):
            terms = self.loss_fn(batch)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        self.optimizer.step()
        return terms

    def _out_of_time(self, start: float) -> bool:
        return self.settings.minutes is not None and (time.perf_counter() - start) / 60 >= self.settings.minutes

    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        s = self.settings
        start = time.perf_counter()
        history, best, best_epoch, steps, epoch = [], -math.inf, 0, 0, 0
        best_metrics: dict = {}
        while s.epochs is None or epoch < s.epochs:
            epoch += 1
            self.model.train()
            sums: dict[str, torch.Tensor] = {}
            epoch_start, epoch_steps, images = time.perf_counter(), 0, 0
            bar = tqdm(self.batches, desc=f"epoch {epoch}", leave=False, disable=not s.progress,
                       mininterval=1.0, dynamic_ncols=True)
            for batch in bar:
                terms = self.step(batch)
                # Accumulate on the device: no host sync inside the epoch but the progress bar's.
                for f in fields(terms):
                    value = getattr(terms, f.name).detach().float()
                    sums[f.name] = sums[f.name] + value if f.name in sums else value
                epoch_steps += 1
                steps += 1
                images += len(getattr(batch, "unlabelled_x", ()))
                if s.progress and epoch_steps % 50 == 0:
                    bar.set_postfix(loss=f"{sums['loss'].item() / epoch_steps:.1f}")
                if self._out_of_time(start):
                    break
            bar.close()
            seconds = time.perf_counter() - epoch_start
            self.model.eval()
            with torch.no_grad():
                metrics = self.validate(self.model)
            record = {
                "epoch": epoch,
                "steps": steps,
                "minutes": (time.perf_counter() - start) / 60,
                "epoch_seconds": seconds,
                "unlabelled_images_per_second": images / seconds if seconds > 0 else 0.0,
                **{name: (value / max(epoch_steps, 1)).item() for name, value in sums.items()},
                **metrics,
            }
            history.append(record)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if metrics[s.selection_metric] > best:
                best, best_epoch, best_metrics = metrics[s.selection_metric], epoch, dict(metrics)
                torch.save({"model": self.model.state_dict(), "epoch": epoch, "metrics": metrics},
                           self.run_dir / "best.pt")
            self.save_last(epoch, steps)
            if s.progress:
                tqdm.write(
                    f"epoch {epoch:4d}  {record['minutes']:6.2f} min  loss {record['loss']:8.2f}  "
                    f"{s.selection_metric} {metrics[s.selection_metric]:.4f}  (best {best:.4f} @ {best_epoch})  "
                    f"{record['unlabelled_images_per_second']:.0f} img/s"
                )
            if self._out_of_time(start):
                break
        return TrainResult(epoch, steps, (time.perf_counter() - start) / 60, best_epoch, best_metrics, history)

    def save_last(self, epoch: int, steps: int) -> None:
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "epoch": epoch, "steps": steps}, self.run_dir / "last.pt")
