"""ssvae's M2 against the same model built with Pyro, in one process, on the same data.

Two measurements, one after the other on an otherwise idle machine:

1. **Speed** at equal batch sizes: unlabelled images per second of one training step, all classes
   enumerated. ssvae: the trainer's own step (forward, backward, Adam, weight average; bf16 and
   torch.compile where they pay). Pyro: ``SVI.step`` with ``TraceEnum_ELBO`` on an unlabelled
   batch, as in Pyro's SS-VAE tutorial (``benchmarks/pyro_m2.py``), timed both as it runs by
   default and traced by torch.jit (``JitTraceEnum_ELBO``, the tutorial's ``--jit``); the ratio is
   against the faster of the two. Pyro's labelled steps are left out of its figure, which only
   flatters it. Where the CPU has native bf16 (so ssvae's step runs under bf16 autocast), Pyro is
   also timed with its networks under bf16 autocast, beyond the tutorial (its enumerated ELBO
   itself refuses autocast), and that ratio is printed beside.
2. **Accuracy after the same minutes**, each with its own recipe: ``ssvae train --model m2`` with
   its defaults and again with Pyro's unlabelled batch of 200 (the batch the tutorial's speed is
   quoted at), and Pyro's tutorial loop (unlabelled batches of 200, Adam 4.2e-4, the 100
   labelled images as one batch every 50 unlabelled steps: five times as often as the tutorial's
   once per epoch, which favours Pyro). Each keeps the weights with the best validation accuracy,
   checked about as often, and report it.

    pip install pyro-ppl        # an optional benchmark dependency: pip install -e '.[bench]'
    python benchmarks/versus_pyro.py [--batch 50 200] [--seconds 20] [--minutes 5]

Beside the speeds it counts each step's matrix-multiply work (torch.utils.flop_counter) and
measures this machine's matmul rate in each one's dtype, and prints each step's share of that rate
and the ratio ssvae would reach if its step did nothing but its matrix multiplies at the full rate
while Pyro's ran as measured: the most any implementation of ssvae's computation could get here.
ssvae's step needs fewer FLOPs per image than Pyro's (the encoder's x-part is computed once per
image, not once per class), so the bound is above 1 even where Pyro's own step is efficient.

Prints a table and writes benchmarks/results/versus_pyro.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from ssvae.config import TrainConfig  # noqa: E402
from ssvae.data.batches import SemiSupervisedBatches, to_inputs  # noqa: E402
from ssvae.data.labels import balanced_label_split, partial_labels  # noqa: E402
from ssvae.data.mnist import load_mnist  # noqa: E402
from ssvae.experiment import train  # noqa: E402
from ssvae.models.m2 import M2, M2Config  # noqa: E402
from ssvae.runtime import bf16_supported, seed_everything, set_threads  # noqa: E402
from ssvae.trainer import Trainer, TrainerSettings  # noqa: E402
from tables import print_table, write_json  # noqa: E402
from throughput import matmul_rate, step_flops  # noqa: E402

LABELS = 100


def ssvae_speed(data, batch: int, seconds: float) -> tuple[float, float]:
    """Unlabelled images/s of ssvae's training step with one labelled image beside ``batch``
    unlabelled ones, and the step's matmul GFLOP per unlabelled image."""
    seed_everything(0)
    device = torch.device("cpu")
    labelled = balanced_label_split(data.train_labels, LABELS, 10, seed=0)
    model = M2(M2Config())
    batches = SemiSupervisedBatches(data.train_images, partial_labels(data.train_labels, labelled), 1, batch,
                                    False, device, 0, model.noise_width)
    settings = TrainerSettings(epochs=None, minutes=None, learning_rate=4e-3, device=device,
                               bf16=bf16_supported(device), compile=True, progress=False)
    gflop = step_flops(model, next(iter(batches))) / 1e9 / batch
    trainer = Trainer(model, batches, lambda m: {}, Path("."), settings)
    return _time_steps(lambda b: trainer.step(b), batches, seconds) * batch, gflop


def pyro_speed(data, batch: int, seconds: float, jit: bool = False, bf16: bool = False) -> tuple[float, float]:
    """Unlabelled images/s of Pyro's enumerated SVI step on ``batch`` unlabelled images (traced by
    torch.jit with ``jit``; its networks under bf16 autocast with ``bf16``), and the step's matmul
    GFLOP per image."""
    from torch.utils.flop_counter import FlopCounterMode

    from pyro_m2 import PyroM2

    model = PyroM2(seed=0, jit=jit, bf16=bf16)
    images = torch.as_tensor(data.train_images)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    batches = [to_inputs(images[order[i:i + batch]], binarize=False) for i in range(0, len(images) - batch, batch)]
    gflop = None
    if not jit:  # the traced step does the same work; the counter only sees it untraced
        with FlopCounterMode(display=False) as counter:  # one step, not timed; Pyro's weights move a little
            model.unlabelled_step(batches[-1])
        gflop = counter.get_total_flops() / 1e9 / batch
    with warnings.catch_warnings():  # torch.jit's deprecation notices, once per traced function
        warnings.simplefilter("ignore")
        return _time_steps(model.unlabelled_step, batches, seconds) * batch, gflop


def _time_steps(step, batches, seconds: float) -> float:
    """Steps per second of ``step`` over ``batches`` (cycled), after a warm-up of 20 steps."""
    def stream():
        while True:
            yield from batches

    source = stream()
    for _ in range(20):
        step(next(source))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(next(source))
        count += 1
    return count / (time.perf_counter() - start)


def ssvae_accuracy(minutes: float, unlabelled_batch: int | None = None) -> dict:
    """``ssvae train --model m2`` for ``minutes`` with its defaults, or with unlabelled batches of
    ``unlabelled_batch`` (the rest of its defaults unchanged)."""
    batch = {} if unlabelled_batch is None else {"unlabelled_batch_size": unlabelled_batch}
    with tempfile.TemporaryDirectory() as scratch:
        config = TrainConfig(model="m2", labels=LABELS, seed=0, minutes=minutes, report=False, **batch)
        result = train(config, Path(scratch) / "run", progress=False, log=lambda *a, **k: None)
    return {"val_accuracy": result["val_accuracy"], "test_accuracy": result["test_accuracy"],
            "epochs": result["epochs"], "minutes": result["minutes"]}


PYRO_RACE_BATCH = 200  # the tutorial's


def pyro_accuracy(data, minutes: float, batch: int = PYRO_RACE_BATCH, check_seconds: float = 30.0) -> dict:
    """Pyro's tutorial loop for ``minutes``: unlabelled batches of ``batch``, and the labelled
    images as one batch every 50 unlabelled steps (the tutorial's once per epoch would be every
    250 with 100 labels); validation accuracy checked every ``check_seconds`` and the best kept."""
    from pyro_m2 import PyroM2

    model = PyroM2(seed=0)
    labelled = balanced_label_split(data.train_labels, LABELS, 10, seed=0)
    unlabelled = np.setdiff1d(np.arange(len(data.train_labels)), labelled)
    images = torch.as_tensor(data.train_images)
    x_labelled = to_inputs(images[labelled], binarize=False)
    y_labelled = torch.as_tensor(data.train_labels[labelled])
    x_val, y_val = to_inputs(torch.as_tensor(data.val_images), binarize=False), torch.as_tensor(data.val_labels)
    interval = min(50, max(1, len(unlabelled) // batch))
    generator = torch.Generator().manual_seed(0)
    best, steps, start, last_check = 0.0, 0, time.perf_counter(), time.perf_counter()
    while time.perf_counter() - start < 60 * minutes:
        order = torch.as_tensor(unlabelled)[torch.randperm(len(unlabelled), generator=generator)]
        for i in range(0, len(order) - batch + 1, batch):
            model.unlabelled_step(to_inputs(images[order[i:i + batch]], binarize=False))
            steps += 1
            if steps % interval == 0:
                model.labelled_step(x_labelled, y_labelled)
            if time.perf_counter() - last_check >= check_seconds:
                best = max(best, float((model.predict(x_val) == y_val).float().mean()))
                last_check = time.perf_counter()
            if time.perf_counter() - start >= 60 * minutes:
                break
    best = max(best, float((model.predict(x_val) == y_val).float().mean()))
    return {"val_accuracy": best, "steps": steps, "minutes": (time.perf_counter() - start) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[50, 200], help="unlabelled batch sizes to time")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per model and batch size")
    parser.add_argument("--minutes", type=float, default=5.0, help="training minutes each for the accuracy race; 0 skips it")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "versus_pyro.json")
    args = parser.parse_args()
    try:
        import pyro
    except ImportError:
        sys.exit("versus_pyro needs Pyro: pip install pyro-ppl (or pip install -e '.[bench]')")

    threads = set_threads(args.threads)
    load = os.getloadavg()[0]
    data = load_mnist()
    cpu = torch.device("cpu")
    ssvae_dtype = torch.bfloat16 if bf16_supported(cpu) else torch.float32  # Pyro's step runs in float32
    speed = []
    for batch in args.batch:
        ours, our_gflop = ssvae_speed(data, batch, args.seconds)
        eager, their_gflop = pyro_speed(data, batch, args.seconds)
        traced, _ = pyro_speed(data, batch, args.seconds, jit=True)
        theirs = max(eager, traced)  # Pyro at its faster
        # Beyond the tutorial: Pyro's networks given the same bf16 autocast as ssvae's step.
        in_bf16 = pyro_speed(data, batch, args.seconds, bf16=True)[0] if ssvae_dtype == torch.bfloat16 else None
        our_peak, their_peak = matmul_rate(ssvae_dtype, cpu), matmul_rate(torch.float32, cpu)
        speed.append({"batch": batch, "ssvae_images_per_second": ours, "pyro_images_per_second": theirs,
                      "pyro_eager_images_per_second": eager, "pyro_jit_images_per_second": traced,
                      "pyro_bf16_networks_images_per_second": in_bf16,
                      "ratio": ours / theirs, "ssvae_gflop_per_image": our_gflop, "pyro_gflop_per_image": their_gflop,
                      "matmul_gflop_per_s": {"ssvae": our_peak, "pyro": their_peak},
                      "ssvae_share_of_matmul_rate": ours * our_gflop / our_peak,
                      "pyro_share_of_matmul_rate": theirs * their_gflop / their_peak,
                      "ratio_bound": our_peak / our_gflop / theirs})
    race = {}
    if args.minutes > 0:
        race = {"minutes": args.minutes, "ssvae": ssvae_accuracy(args.minutes),
                "ssvae_at_pyro_batch": {"unlabelled_batch": PYRO_RACE_BATCH,
                                        **ssvae_accuracy(args.minutes, PYRO_RACE_BATCH)},
                "pyro": pyro_accuracy(data, args.minutes)}
    result = {"threads": threads, "load_average_before": load, "torch": torch.__version__,
              "pyro": pyro.__version__, "speed": speed, "accuracy_after_same_minutes": race}
    write_json(args.out, result)
    print(f"M2, 100 labels, {threads} threads, torch {torch.__version__}, pyro {pyro.__version__}, "
          f"load average before {load:.2f}")
    print(f"matmul rate: {speed[-1]['matmul_gflop_per_s']['ssvae']:.0f} GFLOP/s in {str(ssvae_dtype).replace('torch.', '')} (ssvae), "
          f"{speed[-1]['matmul_gflop_per_s']['pyro']:.0f} in float32 (Pyro)")
    print_table(["unlabelled batch", "ssvae images/s", "Pyro images/s (eager, jit)", "ssvae / Pyro",
                 "GFLOP per image (ssvae, Pyro)", "share of matmul rate (ssvae, Pyro)", "bound on ssvae / Pyro"],
                [[str(row["batch"]), f"{row['ssvae_images_per_second']:.0f}",
                  f"{row['pyro_eager_images_per_second']:.0f}, {row['pyro_jit_images_per_second']:.0f}",
                  f"{row['ratio']:.1f}x", f"{row['ssvae_gflop_per_image']:.4f}, {row['pyro_gflop_per_image']:.4f}",
                  f"{row['ssvae_share_of_matmul_rate']:.0%}, {row['pyro_share_of_matmul_rate']:.0%}",
                  f"{row['ratio_bound']:.1f}x"] for row in speed])
    if ssvae_dtype == torch.bfloat16:
        print("\nPyro with its networks under bf16 autocast, as ssvae's step runs (not the tutorial's setup):")
        print_table(["unlabelled batch", "Pyro images/s, bf16 networks", "ssvae / that"],
                    [[str(row["batch"]), f"{row['pyro_bf16_networks_images_per_second']:.0f}",
                      f"{row['ssvae_images_per_second'] / row['pyro_bf16_networks_images_per_second']:.1f}x"]
                     for row in speed])
    if race:
        same = race["ssvae_at_pyro_batch"]
        print(f"\nafter {args.minutes:g} minutes each: ssvae validation {race['ssvae']['val_accuracy']:.4f} "
              f"(test {race['ssvae']['test_accuracy']:.4f}); ssvae at Pyro's unlabelled batch of "
              f"{PYRO_RACE_BATCH}, validation {same['val_accuracy']:.4f} (test {same['test_accuracy']:.4f}); "
              f"Pyro validation {race['pyro']['val_accuracy']:.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
