"""A trainer that knows nothing about any model family.

It needs a model whose ``loss(batch)`` returns a dataclass with a ``loss`` field (to minimise) and
any other scalar terms (to log), an iterable of batches whose length is one epoch (and, for the
images/s figure, an ``images_per_step`` attribute), and a
``validate(model) -> dict`` whose ``selection_metric`` picks the best checkpoint. Validation runs
on the validation split only: the test split never influences which weights are kept.
"""

from __future__ import annotations

import copy
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
    # Validate and keep an exponential moving average of the weights (Polyak averaging) rather
    # than the last iterate, whose accuracy jitters from step to step with small batches; 0 = off.
    weight_average_decay: float = 0.999
    # "cosine": the learning rate falls from its initial value to zero over the budget (epochs or
    # minutes, whichever runs out first), so the last minutes refine rather than wander.
    lr_schedule: str = "cosine"
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
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, fused=True)
        self.averaged = copy.deepcopy(self.model).requires_grad_(False) if settings.weight_average_decay > 0 else None
        self.averaged_steps = 0
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
        if self.averaged is not None:
            self._update_average()
        return terms

    @torch.no_grad()
    def _update_average(self) -> None:
        # The decay ramps up as (1 + n) / (10 + n) so that short runs average over their own steps
        # rather than staying close to the initial weights.
        self.averaged_steps += 1
        n = self.averaged_steps
        decay = min(self.settings.weight_average_decay, (1 + n) / (10 + n))
        for kept, live in zip(self.averaged.parameters(), self.model.parameters()):
            kept.lerp_(live, 1.0 - decay)
        for kept, live in zip(self.averaged.buffers(), self.model.buffers()):
            kept.copy_(live)

    @property
    def evaluated_model(self) -> nn.Module:
        """The weights that are validated and kept: the running average when there is one."""
        return self.averaged if self.averaged is not None else self.model

    def _progress(self, start: float, epoch: int, step_in_epoch: int) -> float:
        """Fraction of the budget used so far, in [0, 1]."""
        s = self.settings
        used = 0.0
        if s.minutes is not None:
            used = max(used, (time.perf_counter() - start) / 60 / s.minutes)
        if s.epochs is not None:
            used = max(used, (epoch - 1 + step_in_epoch / max(len(self.batches), 1)) / s.epochs)
        return min(used, 1.0)

    def _set_learning_rate(self, progress: float) -> None:
        if self.settings.lr_schedule == "cosine":
            lr = self.settings.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
            for group in self.optimizer.param_groups:
                group["lr"] = lr

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
            epoch_start, epoch_steps = time.perf_counter(), 0
            bar = tqdm(self.batches, desc=f"epoch {epoch}", leave=False, disable=not s.progress,
                       mininterval=1.0, dynamic_ncols=True)
            for batch in bar:
                self._set_learning_rate(self._progress(start, epoch, epoch_steps))
                terms = self.step(batch)
                # Accumulate on the device: no host sync inside the epoch but the progress bar's.
                for f in fields(terms):
                    value = getattr(terms, f.name).detach().float()
                    sums[f.name] = sums[f.name] + value if f.name in sums else value
                epoch_steps += 1
                steps += 1
                if s.progress and epoch_steps % 50 == 0:
                    bar.set_postfix(loss=f"{sums['loss'].item() / epoch_steps:.1f}")
                if self._out_of_time(start):
                    break
            bar.close()
            seconds = time.perf_counter() - epoch_start
            images = epoch_steps * getattr(self.batches, "images_per_step", 0)
            self.evaluated_model.eval()
            with torch.no_grad():
                metrics = self.validate(self.evaluated_model)
            record = {
                "epoch": epoch,
                "steps": steps,
                "minutes": (time.perf_counter() - start) / 60,
                "epoch_seconds": seconds,
                "images_per_second": images / seconds if seconds > 0 else 0.0,
                **{name: (value / max(epoch_steps, 1)).item() for name, value in sums.items()},
                **metrics,
            }
            history.append(record)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if metrics[s.selection_metric] > best:
                best, best_epoch, best_metrics = metrics[s.selection_metric], epoch, dict(metrics)
                torch.save({"model": self.evaluated_model.state_dict(), "epoch": epoch, "metrics": metrics},
                           self.run_dir / "best.pt")
            self.save_last(epoch, steps)
            if s.progress:
                tqdm.write(
                    f"epoch {epoch:4d}  {record['minutes']:6.2f} min  loss {record['loss']:8.2f}  "
                    f"{s.selection_metric} {metrics[s.selection_metric]:.4f}  (best {best:.4f} @ {best_epoch})  "
                    f"{record['images_per_second']:.0f} img/s"
                )
            if self._out_of_time(start):
                break
        return TrainResult(epoch, steps, (time.perf_counter() - start) / 60, best_epoch, best_metrics, history)

    def save_last(self, epoch: int, steps: int) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "epoch": epoch, "steps": steps}
        if self.averaged is not None:
            state["averaged_model"] = self.averaged.state_dict()
        torch.save(state, self.run_dir / "last.pt")
