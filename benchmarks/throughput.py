"""How fast is M2's training step, against what this machine's matrix multiplies can do?

Measures, in one process and one run:

* the matrix-multiply rate of this machine: a large square matmul in the dtype the training step
  uses (bf16 where native, else float32), in GFLOP/s;
* unlabelled images per second of the real training step (the trainer's own ``step``: forward,
  backward and Adam, all K classes enumerated), on real MNIST batches;
* the step's useful rate in GFLOP/s, from the multiply-adds of every linear layer (forward, the
  weight gradients, and the input gradients that backpropagation needs), and its ratio to the matmul rate.

    python benchmarks/throughput.py [--seconds 20] [--unlabelled-batch 50 200 500] [--compile on|off]

The first unlabelled batch size is the one ``ssvae train`` uses by default; larger ones show how
much of the machine the same step uses when per-step overheads are spread over more images.

Prints a table and writes benchmarks/results/throughput.json. Run it on an otherwise idle machine:
the load average it ran under is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from ssvae.config import TrainConfig
from ssvae.data.batches import SemiSupervisedBatches
from ssvae.data.labels import balanced_label_split, partial_labels
from ssvae.data.mnist import load_mnist
from ssvae.models.m2 import M2, M2Config
from ssvae.runtime import bf16_supported, resolve_device, seed_everything, set_threads
from ssvae.trainer import Trainer, TrainerSettings


def step_flops(c: M2Config, labelled: int, unlabelled: int) -> float:
    """Floating-point operations of the linear layers in one training step (2 per multiply-add)."""
    d, h, hc, z, k = c.input_dim, c.hidden_dim, c.classifier_hidden_dim, c.latent_dim, c.num_classes
    rows = unlabelled * k + labelled  # (image, class) pairs through the encoder heads and decoder
    classified = unlabelled + labelled
    # (multiply-adds of the forward pass, whether the layer's input needs a gradient)
    layers = [
        (classified * d * hc, False), (classified * hc * k, True),  # classifier
        (classified * d * h, False),  # encoder x-part, computed once per image
        (rows * h * 2 * z, True), (rows * z * h, True), (rows * h * d, True),  # encoder head, decoder
    ]
    forward = sum(m for m, _ in layers)
    backward = sum(m for m, _ in layers) + sum(m for m, needs_input_grad in layers if needs_input_grad)
    return 2.0 * (forward + backward)


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


def measure_step(data, labelled_batch: int, unlabelled_batch: int, device, use_bf16: bool, compile_: bool,
                 seconds: float) -> dict:
    """Time the trainer's own step on real MNIST batches; returns images/s and GFLOP/s."""
    seed_everything(0)
    labelled = balanced_label_split(data.train_labels, 100, 10, seed=0)
    model = M2(M2Config())
    batches = SemiSupervisedBatches(data.train_images, partial_labels(data.train_labels, labelled),
                                    labelled_batch, unlabelled_batch, TrainConfig().binarize, device, seed=0,
                                    noise_width=model.noise_width)
    settings = TrainerSettings(epochs=None, minutes=None, learning_rate=1e-3, device=device, bf16=use_bf16,
                               compile=compile_, progress=False)
    trainer = Trainer(model, batches, lambda m: {}, Path("."), settings)

    def batch_stream():
        while True:
            yield from batches

    stream = batch_stream()
    warm_start = time.perf_counter()
    for _ in range(20):  # compilation and allocator warm-up
        trainer.step(next(stream))
    warmup = time.perf_counter() - warm_start
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        terms, _ = trainer.step(next(stream))
        steps += 1
    terms.loss.item()  # wait for the device
    elapsed = time.perf_counter() - start
    images_per_s = steps * unlabelled_batch / elapsed
    return {
        "labelled_batch": labelled_batch, "unlabelled_batch": unlabelled_batch, "warmup_seconds": warmup,
        "timed_steps": steps, "timed_seconds": elapsed, "unlabelled_images_per_second": images_per_s,
        "seconds_per_epoch_50k": 50_000 / images_per_s,
        "step_gflop_per_s": step_flops(model.config, labelled_batch, unlabelled_batch) * steps / elapsed / 1e9,
    }


def main() -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds of training steps per batch size")
    parser.add_argument("--labelled-batch", type=int, default=defaults.labelled_batch_size)
    parser.add_argument("--unlabelled-batch", type=int, nargs="+",
                        default=[defaults.unlabelled_batch_size, 200, 500])
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
    rows = [measure_step(data, args.labelled_batch, b, device, use_bf16, args.compile == "on", args.seconds)
            for b in args.unlabelled_batch]
    peak = matmul_rate(dtype, device)
    for row in rows:
        row["ratio_to_matmul"] = row["step_gflop_per_s"] / peak
    result = {
        "device": str(device), "threads": threads, "cpu": platform.processor() or platform.machine(),
        "load_average_before": load, "dtype": str(dtype).replace("torch.", ""), "compile": args.compile,
        "matmul_gflop_per_s": peak, "steps": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"M2 training step on {device} ({threads or '-'} threads, {result['dtype']}, compile {args.compile}, "
          f"load average before {load:.2f}); matmul {peak:.0f} GFLOP/s in {result['dtype']}")
    print("| labelled + unlabelled batch | unlabelled images/s | s per 50k epoch | step GFLOP/s | of matmul rate |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['labelled_batch']} + {r['unlabelled_batch']} | {r['unlabelled_images_per_second']:.0f} | "
              f"{r['seconds_per_epoch_50k']:.2f} | {r['step_gflop_per_s']:.0f} | {r['ratio_to_matmul']:.0%} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
