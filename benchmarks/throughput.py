"""How fast is M2's training step, against what this machine's matrix multiplies can do?

Measures, in one process and one run:

* the matrix-multiply rate of this machine: a large square matmul in the dtype the training step
  uses (bf16 where native, else float32), in GFLOP/s;
* unlabelled images per second of the real training step (the trainer's own ``step``: forward,
  backward and Adam, all K classes enumerated), on real MNIST batches;
* the step's useful rate in GFLOP/s, from the multiply-adds of every linear layer (forward, the
  weight gradients, and the input gradients that backpropagation needs), and its ratio to the matmul rate.

    python benchmarks/throughput.py [--seconds 20] [--unlabelled-batch 200] [--compile on|off]

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

from ssvae.data.batches import SemiSupervisedBatches
from ssvae.data.labels import balanced_label_split, partial_labels
from ssvae.data.mnist import load_mnist
from ssvae.models.m2 import M2, M2Config
from ssvae.runtime import autocast, bf16_supported, resolve_device, seed_everything, set_threads
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds of training steps")
    parser.add_argument("--labelled-batch", type=int, default=100)
    parser.add_argument("--unlabelled-batch", type=int, default=200)
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
    seed_everything(0)
    labelled = balanced_label_split(data.train_labels, 100, 10, seed=0)
    batches = SemiSupervisedBatches(data.train_images, partial_labels(data.train_labels, labelled),
                                    args.labelled_batch, args.unlabelled_batch, True, device, seed=0)
    model = M2(M2Config())
    settings = TrainerSettings(epochs=None, minutes=None, learning_rate=1e-3, device=device, bf16=use_bf16,
                               compile=args.compile == "on", progress=False)
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
    while time.perf_counter() - start < args.seconds:
        terms = trainer.step(next(stream))
        steps += 1
    terms.loss.item()  # wait for the device
    elapsed = time.perf_counter() - start
    images_per_s = steps * args.unlabelled_batch / elapsed
    step_gflops = step_flops(model.config, args.labelled_batch, args.unlabelled_batch) * steps / elapsed / 1e9
    peak = matmul_rate(dtype, device)

    result = {
        "device": str(device), "threads": threads, "cpu": platform.processor() or platform.machine(),
        "load_average_before": load, "dtype": str(dtype).replace("torch.", ""), "compile": args.compile,
        "labelled_batch": args.labelled_batch, "unlabelled_batch": args.unlabelled_batch,
        "warmup_seconds": warmup, "timed_steps": steps, "timed_seconds": elapsed,
        "unlabelled_images_per_second": images_per_s, "seconds_per_epoch_50k": 50_000 / images_per_s,
        "step_gflop_per_s": step_gflops, "matmul_gflop_per_s": peak, "ratio": step_gflops / peak,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"M2 training step on {device} ({threads or '-'} threads, {result['dtype']}, compile {args.compile}, "
          f"load average before {load:.2f})")
    print(f"{'unlabelled images/s':<28}{images_per_s:>10.0f}")
    print(f"{'seconds per 50k epoch':<28}{result['seconds_per_epoch_50k']:>10.2f}")
    print(f"{'step GFLOP/s':<28}{step_gflops:>10.1f}")
    print(f"{'matmul GFLOP/s (' + result['dtype'] + ')':<28}{peak:>10.1f}")
    print(f"{'ratio step / matmul':<28}{result['ratio']:>10.1%}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
