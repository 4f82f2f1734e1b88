"""A trainer that knows nothing about any model family.

It needs a model whose ``loss(batch)`` returns a dataclass with a ``loss`` field (to minimise) and
any other scalar terms (to log), an iterable of batches whose length is one epoch (and, for the
images/s figure, an ``images_per_step`` attribute), and a
``validate(model) -> dict`` whose ``selection_metric`` picks the best checkpoint. A model with an
``at_step(step, progress)`` method is told, before every step, the step count and the share of the
budget used, for schedules of its own. Validation runs on the validation split only: the test
split never influences which weights are kept.

Nothing is lost when a run is killed. ``last.pt`` holds everything the run depends on: weights,
optimiser, weight average, where it stands in the budget and in the epoch, the running sums of the
epoch's metrics, and the state of every random generator (Python, numpy, torch, and the batches'
own, when they have ``state_dict``/``load_state_dict``). It is written atomically at the end of
every epoch and every few minutes within one, so a run resumed with :meth:`Trainer.resume` goes on
exactly as if it had never stopped: on CPU, the same weights and metrics to the last bit.
Ctrl-C or SIGTERM (a cluster's pre-emption notice) finish the step in progress, checkpoint, and stop.

A step whose loss or gradient is not finite is skipped (no update) and counted; ``max_bad_steps``
of them in a row stop the run with :class:`TrainingDiverged`, leaving the last good checkpoint.
"""

from __future__ import annotations

import copy
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from .errors import Interrupted, TrainingDiverged
from .runtime import Processes, autocast

# The running average of the weights moves every this many steps rather than after each one: a
# pass over every weight costs about as much at M2's default 1 + 50 batch as a small kernel of
# the step, and the average spans a thousand steps, so moving it every fourth step changes it by
# nothing that shows (validation accuracy within 0.0002 of the every-step average on M2).
AVERAGE_EVERY = 4


@dataclass
class TrainerSettings:
    epochs: int | None
    minutes: float | None
    learning_rate: float
    device: torch.device
    bf16: bool
    compile: bool
    # The validation figure that picks the kept weights (higher is better); None keeps the last
    # epoch's (averaged) weights, for runs with no validation set to choose on.
    selection_metric: str | None = "val_accuracy"
    # Validate and keep an exponential moving average of the weights (Polyak averaging) rather
    # than the last iterate, whose accuracy jitters from step to step with small batches; 0 = off.
    weight_average_decay: float = 0.999
    # "cosine": the learning rate falls from its initial value to zero over the budget (epochs or
    # minutes, whichever runs out first), so the last minutes refine rather than wander.
    lr_schedule: str = "cosine"
    progress: bool = True
    # last.pt is rewritten at every epoch end and, within an epoch, at least this often (None: only
    # at epoch ends), so a kill loses at most this much work.
    checkpoint_minutes: float | None = 2.0
    checkpoint_each_epoch: bool = True
    # Consecutive steps with a non-finite loss or gradient before the run is declared diverged.
    max_bad_steps: int = 20
    # The processes training this model together (torchrun); one by default.
    processes: Processes = Processes()
    # With several processes, how often (in steps) they agree on the time used and on whether to
    # stop: an all-reduce of two numbers, rare enough to cost nothing, and it is the only host sync
    # the step loop adds on a GPU.
    agree_every_steps: int = 10


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
        # Only what is trained: a frozen part (M1 inside M1+M2) has no gradient and no optimiser state.
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.trained, lr=settings.learning_rate, fused=True)
        self.averaged = copy.deepcopy(self.model).requires_grad_(False) if settings.weight_average_decay > 0 else None
        if self.averaged is not None:  # the averaged twins of the trained parameters, in the same order
            self._averaged_trained = [kept for kept, live in zip(self.averaged.parameters(), self.model.parameters())
                                      if live.requires_grad]
        self.averaged_steps = 0  # steps folded into the average; those since are self.steps - averaged_steps
        # Compiling the loss fuses the many small element-wise ops around the matrix multiplies
        # (softplus, sampling, the Bernoulli log-likelihood) and their backward; it costs ~20-40 s
        # once, so it is only worth it for runs of a few minutes or more.
        if settings.compile:
            # Draw the reparameterisation noise with torch's own generator instead of the compiler's:
            # its per-element random kernel cost a fifth of the compiled step on CPU, and the
            # compiled step then draws the same numbers as the eager one.
            from torch._inductor import config as inductor_config

            inductor_config.fallback_random = True
        self.processes = settings.processes
        if self.processes.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # DDP averages the gradients over the processes during backward; it hooks in through the
            # module's forward, which is the model's training loss. Buffers (M1's KL weight) follow
            # the step count on every process alike, so there is nothing to send at each step; a
            # buffer that follows the batch (ADGM/SDGM's class frequencies) is averaged over the
            # processes by the model itself.
            device = settings.device
            self.replicated = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)
            objective = self.replicated
        else:
            objective = model.loss
        self.loss_fn = torch.compile(objective) if settings.compile else objective
        self._at_step = getattr(model, "at_step", None)  # a model's own schedule, e.g. M1's KL warm-up
        # Where the run stands; all of it goes into last.pt.
        self.epochs_done = 0
        self.step_in_epoch = 0  # steps taken in the epoch after epochs_done
        self.steps = 0
        self.sums: dict[str, torch.Tensor] = {}  # per-term sums over the epoch's good steps
        # Counts kept on the device (no host sync per step): good steps in this epoch, skipped steps
        # over the run, the current and the longest run of skipped steps in a row.
        device = settings.device
        self.good_steps_in_epoch = torch.zeros((), dtype=torch.long, device=device)
        self._skipped = torch.zeros((), dtype=torch.long, device=device)
        self._bad_in_a_row = torch.zeros((), dtype=torch.long, device=device)
        self._longest_bad = torch.zeros((), dtype=torch.long, device=device)
        self.elapsed_seconds = 0.0  # training time of earlier sessions of this run
        self._agreed_elapsed = 0.0  # with several processes: the time they last agreed on
        self._session_start: float | None = None  # when fit() began in this process
        self.history: list[dict] = []
        self.best_value, self.best_epoch, self.best_metrics = -math.inf, 0, {}
        self._stop_signal: str | None = None

    # -- one step --------------------------------------------------------------------------------

    def step(self, batch):
        """One optimiser step on ``batch``. Returns the loss terms and a boolean tensor that says
        whether the step was taken: a step whose loss or gradient is not finite is skipped.

        Nothing here waits for the device: the skip happens inside Adam's fused kernel (its
        ``found_inf`` input, the one mixed-precision loss scaling uses), and the counts of skipped
        steps stay on the device until the loop looks at them (see :meth:`_check_divergence`)."""
        with autocast(self.settings.device, self.settings.bf16):
            terms = self.loss_fn(batch)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        # A gradient's sum is non-finite when any element is (or when it overflows, which is as
        # bad); it finds the same steps as the gradient norm at half the cost.
        grads = [p.grad for p in self.trained if p.grad is not None]
        finite = torch.isfinite(torch.stack([grad.sum() for grad in grads]).sum())
        if not self.processes.distributed:
            finite &= torch.isfinite(terms.loss)
        # With several processes the decision rests on the gradients alone: they are averaged, so
        # every process sees the same ones and decides alike (a non-finite loss anywhere makes
        # them non-finite everywhere); each process's own loss would split the model copies apart.
        self.optimizer.found_inf = (~finite).float()
        self.optimizer.step()
        self.steps += 1
        if self.averaged is not None:
            # On a skipped step the live weights did not move, so the average moves toward finite
            # weights all the same.
            if self.steps - self.averaged_steps >= AVERAGE_EVERY:
                self._fold_average()
        bad = (~finite).long()
        self._skipped = self._skipped + bad
        self._bad_in_a_row = (self._bad_in_a_row + 1) * bad
        self._longest_bad = torch.maximum(self._longest_bad, self._bad_in_a_row)
        return terms, finite

    def advance(self, batch):
        """One step of :meth:`fit`'s loop on ``batch``: the schedules, :meth:`step`, and the step's
        terms added to the epoch's sums. Returns the terms.

        Nothing here waits for the device: the sums and the count of good steps stay on it until
        the loop looks at them, every few steps on a GPU (see :meth:`fit`). The tests hold every
        model family to this on CPU, by recording the operations that would make a GPU wait."""
        progress = self._progress()  # with several processes, the same in each
        self._set_learning_rate(progress)
        if self._at_step is not None:
            self._at_step(self.steps, progress)
        terms, finite = self.step(batch)
        for f in fields(terms):
            value = torch.where(finite, getattr(terms, f.name).detach().float(), 0.0)
            self.sums[f.name] = self.sums[f.name] + value if f.name in self.sums else value
        self.good_steps_in_epoch = self.good_steps_in_epoch + finite.long()
        self.step_in_epoch += 1
        return terms

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite loss or gradient, over the whole run."""
        return int(self._skipped)

    def _check_divergence(self, terms) -> None:
        """Stop the run once ``max_bad_steps`` steps in a row were skipped (a host sync)."""
        if int(self._longest_bad) < self.settings.max_bad_steps:
            return
        self.optimizer.zero_grad(set_to_none=True)
        named = ", ".join(f"{f.name} {getattr(terms, f.name).item():.4g}" for f in fields(terms))
        where = (f"{self.run_dir / 'last.pt'} (epoch {self._saved_at[0]}, step {self._saved_at[1]})"
                 if self._saved_at else "none yet")
        raise TrainingDiverged(
            f"training diverged: {int(self._longest_bad)} steps in a row had a non-finite loss or gradient, "
            f"the last at step {self.steps} ({named}); last good checkpoint: {where}. Try a lower --lr"
        )

    @torch.no_grad()
    def _fold_average(self) -> None:
        """Bring the running average up to date with the steps taken since it was last moved.

        The steps in between are folded in at once, at the product of their decays: the average
        then gives the current weights the share it would have given all of them, which over a
        horizon of a thousand steps is the same average. The decay ramps up as (1 + n) / (10 + n)
        so that short runs average over their own steps rather than staying close to the initial
        weights."""
        if self.averaged is None or self.averaged_steps == self.steps:
            return
        decay = 1.0
        for n in range(self.averaged_steps + 1, self.steps + 1):
            decay *= min(self.settings.weight_average_decay, (1 + n) / (10 + n))
        self.averaged_steps = self.steps
        torch._foreach_lerp_(self._averaged_trained, self.trained, 1.0 - decay)
        for kept, live in zip(self.averaged.buffers(), self.model.buffers()):
            kept.copy_(live)

    @property
    def evaluated_model(self) -> nn.Module:
        """The weights that are validated and kept: the running average when there is one."""
        return self.averaged if self.averaged is not None else self.model

    # -- the budget ------------------------------------------------------------------------------

    def _own_elapsed(self) -> float:
        if self._session_start is None:
            return self.elapsed_seconds
        return self.elapsed_seconds + time.perf_counter() - self._session_start

    def _elapsed(self) -> float:
        """Seconds of training in this run, earlier sessions included. With several processes, the
        figure they last agreed on, so that all decide the learning rate and the end alike."""
        return self._agreed_elapsed if self.processes.distributed else self._own_elapsed()

    def _agree(self) -> None:
        """With several processes: adopt the longest time used and any stop request of any process."""
        if not self.processes.distributed:
            return
        import torch.distributed as dist

        own = torch.tensor([self._own_elapsed(), 1.0 if self._stop_signal else 0.0], dtype=torch.float64,
                           device=self.settings.device)
        dist.all_reduce(own, op=dist.ReduceOp.MAX)
        elapsed, stop = own.tolist()
        self._agreed_elapsed = elapsed
        if stop and self._stop_signal is None:
            self._stop_signal = "a signal to another process"

    def _progress(self) -> float:
        """Fraction of the budget used so far, in [0, 1]."""
        s = self.settings
        used = 0.0
        if s.minutes is not None:
            used = max(used, self._elapsed() / 60 / s.minutes)
        if s.epochs is not None:
            used = max(used, (self.epochs_done + self.step_in_epoch / max(len(self.batches), 1)) / s.epochs)
        return min(used, 1.0)

    def _set_learning_rate(self, progress: float) -> None:
        if self.settings.lr_schedule == "cosine":
            lr = self.settings.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def _out_of_time(self) -> bool:
        return self.settings.minutes is not None and self._elapsed() / 60 >= self.settings.minutes

    def _budget_left(self) -> bool:
        s = self.settings
        return (s.epochs is None or self.epochs_done < s.epochs) and not self._out_of_time()

    def finished(self) -> bool:
        """Whether the run has used its whole budget (so that fit() would return at once)."""
        return not self._budget_left()

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        s = self.settings
        self._session_start = time.perf_counter()
        self._last_save = time.perf_counter()
        self._agreed_elapsed = self.elapsed_seconds
        # How often the loop looks at the device's counts and, with several processes, agrees on
        # when to stop: every step on one CPU, where it costs nothing; else every few steps, so that
        # a GPU is not made to wait for the host after every step.
        one_cpu = not self.processes.distributed and s.device.type == "cpu"
        check_every = 1 if one_cpu else s.agree_every_steps
        with self._stop_on_signals():
            while True:
                self._agree()
                if not self._budget_left():
                    break
                self.model.train()
                epoch, per_epoch = self.epochs_done + 1, len(self.batches)
                epoch_start, session_steps = time.perf_counter(), 0
                bar = tqdm(total=per_epoch, initial=self.step_in_epoch, desc=f"epoch {epoch}", leave=False,
                           disable=not s.progress, mininterval=1.0, dynamic_ncols=True)
                for batch in self._rest_of_epoch():
                    terms = self.advance(batch)
                    session_steps += 1
                    bar.update(1)
                    if s.progress and session_steps % 50 == 0 and "loss" in self.sums:
                        bar.set_postfix(loss=f"{self.sums['loss'].item() / max(int(self.good_steps_in_epoch), 1):.1f}")
                    if session_steps % check_every:
                        continue
                    self._check_divergence(terms)
                    self._agree()
                    if self._stop_signal is not None:
                        bar.close()
                        self.save_last()
                        raise Interrupted(f"stopped by {self._stop_signal} at epoch {epoch}, step {self.steps}; "
                                          f"continue with: ssvae train --resume {self.run_dir}")
                    if self._out_of_time():
                        break
                    if s.checkpoint_minutes is not None and \
                            time.perf_counter() - self._last_save >= 60 * s.checkpoint_minutes:
                        self.save_last()
                bar.close()
                seconds = time.perf_counter() - epoch_start
                images = session_steps * getattr(self.batches, "images_per_step", 0)
                # An epoch cut short by the minutes budget is still validated: it ends the run.
                self._end_epoch(epoch, images / seconds if seconds > 0 else 0.0)
        return TrainResult(self.epochs_done, self.steps, self._elapsed() / 60, self.best_epoch, self.best_metrics,
                           self.history)

    def _rest_of_epoch(self):
        """The batches left in the current epoch. Batches that keep their own state resume where they
        stood; a plain sequence is replayed and the steps already taken are skipped."""
        if hasattr(self.batches, "load_state_dict"):
            yield from self.batches
            return
        for index, batch in enumerate(self.batches):
            if index >= self.step_in_epoch:
                yield batch

    def _end_epoch(self, epoch: int, images_per_second: float) -> None:
        from tqdm.auto import tqdm

        s = self.settings
        if self.processes.distributed and self.sums:
            # Each process summed its own share of every batch; their mean is the global batch's figure.
            import torch.distributed as dist

            names = sorted(self.sums)
            together = torch.stack([self.sums[name] for name in names])
            dist.all_reduce(together)
            self.sums = dict(zip(names, together / self.processes.world))
        self._fold_average()
        if not self.processes.is_main:  # rank 0 validates and writes; the others go on to the next epoch
            self.epochs_done, self.step_in_epoch = epoch, 0
            self.sums, self.good_steps_in_epoch = {}, torch.zeros_like(self.good_steps_in_epoch)
            if hasattr(self.batches, "end_epoch"):
                self.batches.end_epoch()
            return
        self.evaluated_model.eval()
        with torch.no_grad():
            metrics = self.validate(self.evaluated_model)
        record = {
            "epoch": epoch,
            "steps": self.steps,
            "minutes": self._elapsed() / 60,
            "images_per_second": images_per_second,
            "skipped_steps": self.skipped_steps,
            **{name: (value / self.good_steps_in_epoch.clamp(min=1)).item() for name, value in self.sums.items()},
            **metrics,
        }
        self.history.append(record)
        self.epochs_done, self.step_in_epoch = epoch, 0
        self.sums, self.good_steps_in_epoch = {}, torch.zeros_like(self.good_steps_in_epoch)
        if hasattr(self.batches, "end_epoch"):
            self.batches.end_epoch()
        self._write_metrics()
        value = metrics[s.selection_metric] if s.selection_metric is not None else float(epoch)
        if value > self.best_value:
            self.best_value, self.best_epoch, self.best_metrics = value, epoch, dict(metrics)
            save_checkpoint(self.run_dir / "best.pt", {"model": self.evaluated_model.state_dict(), "epoch": epoch,
                                                      "steps": self.steps, "metrics": metrics})
        if s.checkpoint_each_epoch or not self._budget_left():
            self.save_last()
        if s.progress:
            chosen = (f"{s.selection_metric} {metrics[s.selection_metric]:.4f}  (best {self.best_value:.4f} @ "
                      f"{self.best_epoch})" if s.selection_metric is not None else "last weights kept")
            tqdm.write(f"epoch {epoch:4d}  {record['minutes']:6.2f} min  loss {record.get('loss', math.nan):8.2f}  "
                       f"{chosen}  {images_per_second:.0f} img/s")

    def _write_metrics(self) -> None:
        import json

        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        atomic_write_text(self.run_dir / "metrics.jsonl", lines)

    # -- stopping cleanly ------------------------------------------------------------------------

    def _stop_on_signals(self):
        """While training, Ctrl-C and SIGTERM ask the loop to stop after the step in progress."""
        trainer = self

        class _Handlers:
            def __enter__(self):
                self.previous = {}
                if threading.current_thread() is not threading.main_thread():
                    return self
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self.previous[sig] = signal.signal(sig, self.request_stop)
                return self

            def request_stop(self, signum, frame):
                if trainer._stop_signal is not None:  # a second Ctrl-C: stop at once
                    raise KeyboardInterrupt
                trainer._stop_signal = signal.Signals(signum).name

            def __exit__(self, *exc):
                for sig, handler in self.previous.items():
                    signal.signal(sig, handler)
                return False

        return _Handlers()

    # -- checkpoints -----------------------------------------------------------------------------

    _saved_at: tuple[int, int] | None = None

    def state_dict(self) -> dict:
        """Everything needed to continue this run exactly: tensors and plain data only."""
        numpy_state = np.random.get_state()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "averaged_model": self.averaged.state_dict() if self.averaged is not None else None,
            "averaged_steps": self.averaged_steps,
            "epochs_done": self.epochs_done,
            "step_in_epoch": self.step_in_epoch,
            "steps": self.steps,
            "sums": dict(self.sums),
            "good_steps_in_epoch": int(self.good_steps_in_epoch),
            "skipped_steps": self.skipped_steps,
            "bad_in_a_row": int(self._bad_in_a_row),
            "elapsed_seconds": self._elapsed(),
            "history": self.history,
            "best": {"value": self.best_value, "epoch": self.best_epoch, "metrics": self.best_metrics},
            "rng": {
                "python": random.getstate(),
                "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "batches": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.averaged is not None and state["averaged_model"] is not None:
            self.averaged.load_state_dict(state["averaged_model"])
        self.averaged_steps = state["averaged_steps"]
        self.epochs_done, self.step_in_epoch, self.steps = state["epochs_done"], state["step_in_epoch"], state["steps"]
        device = self.settings.device
        self.sums = {name: value.to(device) for name, value in state["sums"].items()}
        counts = (state["good_steps_in_epoch"], state["skipped_steps"], state["bad_in_a_row"], state["bad_in_a_row"])
        self.good_steps_in_epoch, self._skipped, self._bad_in_a_row, self._longest_bad = (
            torch.tensor(count, dtype=torch.long, device=device) for count in counts)
        self.elapsed_seconds = state["elapsed_seconds"]
        self.history = list(state["history"])
        best = state["best"]
        self.best_value, self.best_epoch, self.best_metrics = best["value"], best["epoch"], dict(best["metrics"])
        rng = state["rng"]
        random.setstate(_as_tuples(rng["python"]))
        name, key, *rest = rng["numpy"]
        np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if state["batches"] is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["batches"])
        self._saved_at = (self.epochs_done, self.steps)

    def save_last(self) -> None:
        """Write last.pt atomically, then record it in checkpoints.json (rank 0 only)."""
        if not self.processes.is_main:
            return
        save_checkpoint(self.run_dir / "last.pt", self.state_dict())
        self._saved_at = (self.epochs_done, self.steps)
        self._last_save = time.perf_counter()
        atomic_write_json(self.run_dir / "checkpoints.json", {
            "current": "last.pt",
            "epochs_done": self.epochs_done,
            "steps": self.steps,
            "best": "best.pt" if self.best_epoch else None,
            "best_epoch": self.best_epoch,
        })

    def resume(self, path: Path | None = None) -> None:
        """Continue from ``last.pt`` (or ``path``), exactly where it was written."""
        self.load_state_dict(load_checkpoint(path or self.run_dir / "last.pt", map_location=self.settings.device))


def _as_tuples(value):
    """random.setstate wants the tuples back that a checkpoint round trip may have made lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value
