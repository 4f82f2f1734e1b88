"""How fast are the training steps of M2 and of M1+M2 (or ADGM, SDGM), against what this machine's matrix multiplies can do?

Measures, in one process and one run:

* the matrix-multiply rate of this machine: a large square matmul in the dtype the training step
  uses (bf16 where native, else float32), in GFLOP/s;
* unlabelled images per second of the real training step (the trainer's own ``step``: forward,
  backward and Adam, all K classes enumerated), on real MNIST batches;
* the step's useful rate in GFLOP/s, from the matrix multiplies of one step (forward and backward,
  counted by torch.utils.flop_counter), and its ratio to the matmul rate.

The steps are timed in rounds (``--rounds``), every model and batch size in turn, each followed by
a second of the matmul; the figures are the medians over the rounds, and each round's ratio uses
the matmul rate measured right after it, so that drift in the machine's speed cancels.

    python benchmarks/throughput.py [--model m2 m1m2 adgm sdgm sdgm-relu] [--seconds 20] [--rounds 5] [--unlabelled-batch 50 200 500]
                                    [--likelihood bernoulli logistic ...]
                                    [--compile on|off] [--device auto|cpu|cuda]

The first unlabelled batch size is the one ``ssvae train`` uses by default; larger ones show how
much of the machine the same step uses when per-step overheads are spread over more images.

Prints a table and writes benchmarks/results/throughput.json. Run it on an otherwise idle machine:
the load average it ran under is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from tables import print_table, write_json

from ssvae.config import TrainConfig
from ssvae.data.batches import SemiSupervisedBatches
from ssvae.data.labels import balanced_label_split, partial_labels
from ssvae.data.mnist import load_mnist
from ssvae.models.auxiliary import AuxiliaryConfig, AuxiliaryDGM
from ssvae.models.likelihoods import NAMES as LIKELIHOOD_NAMES
from ssvae.models.m1 import M1Config
from ssvae.models.m1m2 import STACKED_M2_DEFAULTS, M1M2, M1M2Config
from ssvae.models.m2 import M2, M2Config
from ssvae.runtime import bf16_supported, resolve_device, seed_everything, set_threads
from ssvae.trainer import Trainer, TrainerSettings


def step_flops(model, batch) -> float:
    """Floating-point operations of the matrix multiplies in one training step (forward and
    backward), counted by PyTorch's own FlopCounterMode on a real batch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.loss(batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def build(name: str, data, device, likelihood: str = "bernoulli"):
    """The model whose step is timed. M1+M2's M1 is freshly initialised (its weights do not change
    the step's cost) and its first 15 latent dimensions play the active ones, as after 12 minutes
    of M1 training on MNIST."""
    if name == "m2":  # at its defaults, the classifier terms' extra classifier passes included
        return M2(M2Config(likelihood=likelihood))
    if name == "m2-paper":  # the paper's objective: no classifier terms
        return M2(M2Config(likelihood=likelihood, class_balance=0.0, adversarial_weight=0.0))
    # The auxiliary models with softplus, as their first timings had it; sdgm-relu is SDGM at its
    # defaults (ReLU, and the adversarial term's extra classifier passes).
    if name in ("adgm", "sdgm", "sdgm-relu"):
        return AuxiliaryDGM(AuxiliaryConfig(skip=name != "adgm", activation="relu" if "relu" in name else "softplus",
                                            likelihood=likelihood))
    # SDGM at its defaults, its unlabelled bound summed over each image's 2 or 3 most probable
    # classes, as it is once the classes have formed: its schedule set as midway through the budget
    # (the timed steps are the trainer's own, which leave the schedule where it is).
    if name.startswith("sdgm-top"):
        model = AuxiliaryDGM(AuxiliaryConfig(skip=True, top_classes=int(name.removeprefix("sdgm-top")),
                                             likelihood=likelihood))
        model.at_step(0, 0.5)
        return model
    m1_config = M1Config()
    m2_config = M2Config(**{**STACKED_M2_DEFAULTS, "input_dim": 15})
    return M1M2(M1M2Config(m1=m1_config, m2=m2_config, active_dims=tuple(range(15))))


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 3.0) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2.0 * n**3 * count / (time.perf_counter() - start) / 1e9


class TimedStep:
    """The trainer's own step (forward, backward, Adam, the running average) on real MNIST
    batches, built and warmed up once, then timed in rounds."""

    def __init__(self, name: str, data, labelled_batch: int, unlabelled_batch: int, device, use_bf16: bool,
                 compile_: bool, likelihood: str = "bernoulli"):
        seed_everything(0)
        labelled = balanced_label_split(data.train_labels, 100, 10, seed=0)
        model = build(name, data, device, likelihood)
        batches = SemiSupervisedBatches(data.train_images, partial_labels(data.train_labels, labelled),
                                        labelled_batch, unlabelled_batch, TrainConfig().binarize, device, seed=0,
                                        noise_width=model.noise_width)
        self.row = {"model": name, "likelihood": likelihood if name != "m1m2" else "gaussian", "labelled_batch": labelled_batch, "unlabelled_batch": unlabelled_batch,
                    "step_gflop": step_flops(model.to(device), next(iter(batches))) / 1e9}
        settings = TrainerSettings(epochs=None, minutes=None, learning_rate=1e-3, device=device, bf16=use_bf16,
                                   compile=compile_, progress=False)
        self.trainer = Trainer(model, batches, lambda m: {}, Path("."), settings)

        def batch_stream():
            while True:
                yield from batches

        self.stream = batch_stream()
        warm_start = time.perf_counter()
        for _ in range(20):  # compilation and allocator warm-up
            self.trainer.step(next(self.stream))
        self.row["warmup_seconds"] = time.perf_counter() - warm_start

    def images_per_second(self, seconds: float) -> float:
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            terms, _ = self.trainer.step(next(self.stream))
            steps += 1
        terms.loss.item()  # wait for the device
        return steps * self.row["unlabelled_batch"] / (time.perf_counter() - start)


def measure(steps: list[TimedStep], dtype, device, rounds: int, seconds: float) -> float:
    """Time every step in turn, each followed by the matmul rate, for ``rounds`` rounds; each row
    gets the medians of its rounds, and the median matmul rate is returned. This machine's speed
    drifts by up to a third over minutes (other tenants' memory traffic slows a step's many small
    kernels far more than one large matmul), so each step time is set against the matmul rate
    measured right after it."""
    timings = {id(step): [] for step in steps}  # (images/s, matmul GFLOP/s) per round
    for _ in range(rounds):
        for step in steps:
            timings[id(step)].append((step.images_per_second(seconds / rounds), matmul_rate(dtype, device, seconds=1.0)))
    for step in steps:
        row = step.row
        gflop_per_image = row["step_gflop"] / row["unlabelled_batch"]
        row["by_round"] = [{"unlabelled_images_per_second": rate, "matmul_gflop_per_s": peak}
                           for rate, peak in timings[id(step)]]
        row["unlabelled_images_per_second"] = statistics.median(rate for rate, _ in timings[id(step)])
        row["seconds_per_epoch_50k"] = 50_000 / row["unlabelled_images_per_second"]
        row["step_gflop_per_s"] = row["unlabelled_images_per_second"] * gflop_per_image
        row["ratio_to_matmul"] = statistics.median(rate * gflop_per_image / peak for rate, peak in timings[id(step)])
    return statistics.median(peak for step in steps for _, peak in timings[id(step)])


def main() -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="timed seconds of training steps per model and batch size, over all rounds")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of timing, each model and batch size in turn with a matmul rate after each; "
                        "the medians are reported")
    parser.add_argument("--model", nargs="+", choices=("m2", "m2-paper", "m1m2", "adgm", "sdgm", "sdgm-relu",
                                                      "sdgm-top2", "sdgm-top3"),
                        default=["m2", "m1m2"],
                        help="m2 at its defaults; m2-paper, M2 without the classifier terms (the paper's objective); "
                        "m1m2 times the M2 stage of M1+M2 (M1 frozen, its encoder run every step); "
                        "adgm and sdgm with softplus; sdgm-relu, SDGM at its defaults (ReLU); sdgm-topM, the same with its "
                        "unlabelled bound summed over each image's M most probable classes")
    parser.add_argument("--labelled-batch", type=int, default=defaults.labelled_batch_size)
    parser.add_argument("--unlabelled-batch", type=int, nargs="+",
                        default=[defaults.unlabelled_batch_size, 200, 500])
    parser.add_argument("--likelihood", nargs="+", choices=LIKELIHOOD_NAMES, default=["bernoulli"],
                        help="p(x|...) of every model but m1m2 (whose M2 is Gaussian over M1's features)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--compile", choices=("on", "off"), default="on")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.json")
    args = parser.parse_args()

    device = resolve_device(args.device)
    threads = set_threads(args.threads) if device.type == "cpu" else None
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and bf16_supported(device))
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    data = load_mnist()
    steps = [TimedStep(name, data, args.labelled_batch, b, device, use_bf16, args.compile == "on", likelihood)
             for name in args.model for likelihood in (args.likelihood if name != "m1m2" else ["gaussian"])
             for b in args.unlabelled_batch]
    peak = measure(steps, dtype, device, args.rounds, args.seconds)
    rows = [step.row for step in steps]
    result = {
        "device": str(device), "threads": threads, "cpu": platform.processor() or platform.machine(),
        "load_average_before": load, "dtype": str(dtype).replace("torch.", ""), "compile": args.compile,
        "matmul_gflop_per_s": peak, "steps": rows,
    }
    write_json(args.out, result)
    print(f"Training steps on {device} ({threads or '-'} threads, {result['dtype']}, compile {args.compile}, "
          f"load average before {load:.2f}); matmul {peak:.0f} GFLOP/s in {result['dtype']} "
          f"(median of the rounds; each row's share is the median of its rounds' own)")
    print_table(["model", "likelihood", "labelled + unlabelled batch", "unlabelled images/s", "s per 50k epoch", "step GFLOP/s",
                 "of matmul rate"],
                [[r["model"], r["likelihood"], f"{r['labelled_batch']} + {r['unlabelled_batch']}",
                  f"{r['unlabelled_images_per_second']:.0f}", f"{r['seconds_per_epoch_50k']:.2f}",
                  f"{r['step_gflop_per_s']:.0f}", f"{r['ratio_to_matmul']:.0%}"] for r in rows])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
