"""The trainer on a model it knows nothing about: a line fitted to points."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from ssvae.checkpoint import load_checkpoint
from ssvae.errors import TrainingDiverged
from ssvae.trainer import Trainer, TrainerSettings


@dataclass
class LineTerms:
    loss: torch.Tensor
    squared_error: torch.Tensor


class Line(nn.Module):
    def __init__(self):
        super().__init__()
        self.fit = nn.Linear(1, 1)

    def loss(self, batch):
        x, y = batch
        error = ((self.fit(x) - y) ** 2).mean()
        return LineTerms(loss=error, squared_error=error.detach())


def settings(**overrides):
    base = dict(epochs=3, minutes=None, learning_rate=0.05, device=torch.device("cpu"), bf16=False,
                compile=False, progress=False)
    return TrainerSettings(**{**base, **overrides})


def points():
    torch.manual_seed(0)
    x = torch.randn(8, 16, 1)
    return [(xi, 3 * xi + 1) for xi in x]


def test_keeps_the_weights_of_the_best_validation_epoch(tmp_path):
    scores = iter([0.5, 0.9, 0.7])  # the best epoch is the second, not the last
    trainer = Trainer(Line(), points(), lambda m: {"val_accuracy": next(scores)}, tmp_path, settings())
    result = trainer.fit()
    assert result.best_epoch == 2 and result.epochs == 3
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epochs_done"] == 3 and "optimizer" in last
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_accuracy"] for r in lines] == [0.5, 0.9, 0.7]
    # every term of the loss is logged, named as the model named it
    assert all("squared_error" in r and "loss" in r for r in lines)


def test_learns_and_decays_the_learning_rate_to_zero(tmp_path):
    trainer = Trainer(Line(), points(), lambda m: {"val_accuracy": 0.0}, tmp_path, settings(epochs=20, weight_average_decay=0.9))
    result = trainer.fit()
    assert result.history[-1]["squared_error"] < 0.05 * result.history[0]["squared_error"]
    assert trainer.optimizer.param_groups[0]["lr"] < 0.01 * 0.05
    # the kept weights are the running average, close to the last iterate at the end of a decayed run
    averaged, live = trainer.evaluated_model.fit.weight.item(), trainer.model.fit.weight.item()
    assert averaged != live and abs(averaged - live) < 0.05


class Scheduled(Line):
    """A line that records what the trainer tells it before each step."""

    def __init__(self):
        super().__init__()
        self.told = []

    def at_step(self, step, progress):
        self.told.append((step, progress))


def test_a_model_with_a_schedule_is_told_the_step_and_the_share_of_the_budget_used(tmp_path):
    model = Scheduled()
    Trainer(model, points(), lambda m: {"val_accuracy": 0.0}, tmp_path, settings(epochs=2)).fit()
    steps, progress = zip(*model.told)
    assert list(steps) == list(range(16))  # 2 epochs of 8 batches, counted before each step
    # the share of two epochs done before each step: 0, 1/16, ..., 15/16
    assert progress == pytest.approx([step / 16 for step in range(16)])


class Drift(nn.Module):
    """A weight that Adam moves by the learning rate at every step, for ever."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def loss(self, batch):
        climb = -self.weight.sum()
        return LineTerms(loss=climb, squared_error=climb.detach())


def test_the_average_folded_every_few_steps_follows_the_average_of_every_step(tmp_path):
    # The plain running average, moved after every step with the same ramped decay, kept beside
    # the trainer's, which moves every AVERAGE_EVERY steps and catches up before each validation.
    decay_limit, epochs, per_epoch = 0.99, 200, 7  # 7 steps an epoch: not a multiple of AVERAGE_EVERY
    kept, plain_at, live_at = {}, {}, {}

    def validate(model):
        kept[trainer.steps] = model.weight.item()
        plain_at[trainer.steps], live_at[trainer.steps] = plain, trainer.model.weight.item()
        return {"val_accuracy": 0.0}

    trainer = Trainer(Drift(), [None] * per_epoch, validate, tmp_path,
                      settings(epochs=epochs, learning_rate=0.01, weight_average_decay=decay_limit,
                               lr_schedule="constant", checkpoint_each_epoch=False))
    plain, step = 0.0, trainer.step

    def step_and_average(batch):
        nonlocal plain
        result = step(batch)
        n = trainer.steps
        decay = min(decay_limit, (1 + n) / (10 + n))
        plain = decay * plain + (1 - decay) * trainer.model.weight.item()
        return result

    trainer.step = step_and_average
    trainer.fit()
    # every validation saw every step so far
    assert sorted(kept) == [per_epoch * e for e in range(1, epochs + 1)]
    assert trainer.averaged_steps == trainer.steps == per_epoch * epochs
    # Once the decay has ramped up to its limit (a horizon of 100 steps), the average lags a
    # hundred steps behind the live weight, and the folded one within two steps of the plain one.
    end = per_epoch * epochs
    assert live_at[end] == pytest.approx(0.01 * end, rel=1e-3)
    assert live_at[end] - plain_at[end] == pytest.approx(0.01 * 99, rel=0.05)
    assert abs(kept[end] - plain_at[end]) < 0.01 * 2


def nan_points(bad_steps):
    """The line's points, with NaN inputs at the given steps of every epoch."""
    batches = points()
    return [(torch.full_like(x, float("nan")), y) if i in bad_steps else (x, y) for i, (x, y) in enumerate(batches)]


def test_non_finite_steps_are_skipped_and_counted(tmp_path):
    trainer = Trainer(Line(), nan_points({2, 5}), lambda m: {"val_accuracy": 0.0}, tmp_path, settings(epochs=3))
    result = trainer.fit()
    assert trainer.skipped_steps == 6 and result.history[-1]["skipped_steps"] == 6
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.evaluated_model.parameters())
    # the logged terms average the good steps only
    assert all(math.isfinite(r["loss"]) for r in result.history)


def test_too_many_non_finite_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    batches = points()
    scores = iter([0.5, 0.6, 0.7])

    class Diverging(Line):
        def loss(self, batch):
            terms = super().loss(batch)
            if trainer.epochs_done >= 1:  # after one good epoch, every step is NaN
                terms.loss = terms.loss * float("nan")
            return terms

    trainer = Trainer(Diverging(), batches, lambda m: {"val_accuracy": next(scores)}, tmp_path,
                      settings(epochs=3, max_bad_steps=5))
    with pytest.raises(TrainingDiverged) as error:
        trainer.fit()
    message = str(error.value)
    assert "5 steps in a row" in message and "step 13" in message and "loss nan" in message
    assert "last.pt" in message and "epoch 1" in message
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["epochs_done"] == 1 and kept["steps"] == 8
    assert all(torch.isfinite(w).all() for w in kept["model"].values())


class Clock:
    """A clock that moves only when told: each training step below takes one second."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class TimedLine(Scheduled):
    """A line whose every step takes one second of ``clock``, recording the learning rate it ran at."""

    def __init__(self, clock):
        super().__init__()
        self.clock, self.optimizer, self.rates = clock, None, []

    def loss(self, batch):
        self.clock.now += 1.0
        self.rates.append(self.optimizer.param_groups[0]["lr"])
        return super().loss(batch)


def timed_trainer(tmp_path, clock, minutes):
    model = TimedLine(clock)
    trainer = Trainer(model, points(), lambda m: {"val_accuracy": 0.0}, tmp_path,
                      settings(epochs=None, minutes=minutes))
    model.optimizer = trainer.optimizer
    return trainer, model


def test_a_minutes_budget_ends_the_run_mid_epoch_and_schedules_by_the_clock(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr("ssvae.trainer.time.perf_counter", clock)
    trainer, model = timed_trainer(tmp_path, clock, minutes=0.2)  # 12 seconds: 12 steps of 8 a epoch
    result = trainer.fit()
    assert (result.steps, result.epochs) == (12, 2)  # the second epoch cut short after 4 of its 8 steps
    assert result.minutes == pytest.approx(0.2)
    # the cut-short epoch is validated and logged like any other
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    # the schedule and the learning rate follow the share of the 12 seconds used before each step
    steps, progress = zip(*model.told)
    assert progress == pytest.approx([step / 12 for step in range(12)])
    assert model.rates == pytest.approx([0.05 * 0.5 * (1 + math.cos(math.pi * step / 12)) for step in range(12)])
    assert trainer.finished()


def test_minutes_used_are_carried_over_when_a_run_is_resumed(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr("ssvae.trainer.time.perf_counter", clock)
    first, _ = timed_trainer(tmp_path, clock, minutes=0.2)
    first.fit()
    clock.now += 3600.0  # an hour passes between the two sessions: it is not training time
    again, _ = timed_trainer(tmp_path, clock, minutes=0.2)
    again.resume()
    assert again.finished()  # the 12 seconds were spent in the first session
    longer, model = timed_trainer(tmp_path, clock, minutes=0.3)
    longer.resume()
    result = longer.fit()
    assert result.steps == 18 and result.minutes == pytest.approx(0.3)  # 6 more seconds, 6 more steps
    assert [p for _, p in model.told] == pytest.approx([step / 18 for step in range(12, 18)])
