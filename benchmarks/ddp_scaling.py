"""How does training speed scale with processes (DDP under torchrun)?

Trains the same M2 run with 1, 2, ... processes through ``torchrun --standalone`` at the same global
batch (the processes share each batch) and reads the unlabelled images per second of every epoch
after the first (compilation and warm-up) from the run's metrics.jsonl:

    python benchmarks/ddp_scaling.py [--processes 1 2] [--device cpu|cuda] [--epochs 4]

On a CPU the cores are shared out between the processes (one process gets them all, two get half
each): this measures what DDP costs and gains on one machine, with gloo between the processes. On
a machine with N GPUs, ``--device cuda --processes 1 2 ... N`` gives one GPU per process (NCCL).

Prints a table and writes benchmarks/results/ddp_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tables import print_table, write_json


def run(processes: int, args) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "ssvae", "train", "--model", "m2", "--labels", "100", "--epochs", str(args.epochs),
                   "--max-unlabelled", str(args.unlabelled_images), "--labelled-batch", str(args.labelled_batch),
                   "--unlabelled-batch", str(args.unlabelled_batch), "--device", args.device,
                   "--compile", args.compile, "--quiet", "--no-report", "--out", str(out)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{processes} processes failed:\n{done.stderr[-3000:]}")
        epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [e["images_per_second"] for e in epochs[1:]] or [epochs[0]["images_per_second"]]
    return {"processes": processes, "wall_seconds": time.perf_counter() - start,
            "unlabelled_images_per_second": statistics.median(speeds), "per_epoch": speeds,
            "val_accuracy": epochs[-1]["val_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--unlabelled-images", type=int, default=20_000, help="unlabelled images per epoch")
    parser.add_argument("--labelled-batch", type=int, default=2, help="global; must divide by every process count")
    parser.add_argument("--unlabelled-batch", type=int, default=100, help="global; must divide by every process count")
    parser.add_argument("--compile", choices=("on", "off"), default="on")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ddp_scaling.json")
    args = parser.parse_args()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = [run(p, args) for p in args.processes]
    base = rows[0]["unlabelled_images_per_second"]
    for row in rows:
        row["speed_up"] = row["unlabelled_images_per_second"] / base
    result = {"device": args.device, "cores": os.cpu_count(), "load_average_before": load,
              "global_batch": f"{args.labelled_batch} + {args.unlabelled_batch}", "compile": args.compile, "rows": rows}
    write_json(args.out, result)
    print(f"M2 under torchrun on {args.device} ({os.cpu_count()} cores), global batch "
          f"{args.labelled_batch} + {args.unlabelled_batch}, compile {args.compile}, load average before {load:.2f}")
    print_table(["processes", "unlabelled images/s", "speed-up", f"validation accuracy after {args.epochs} epochs",
                 "wall s"],
                [[str(r["processes"]), f"{r['unlabelled_images_per_second']:.0f}", f"{r['speed_up']:.2f}x",
                  f"{r['val_accuracy']:.4f}", f"{r['wall_seconds']:.0f}"] for r in rows])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
