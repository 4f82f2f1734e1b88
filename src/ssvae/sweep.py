"""A grid of runs (label counts x seeds) and the table of their test accuracies beside the paper's.

Each run lives in its own run directory under the sweep folder, named as ``ssvae train`` names
runs. A run that finished is read back, a run that stopped is resumed, and results.md / results.json
are rewritten after every run, so a sweep that is interrupted loses nothing and is continued by
running the same command again.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

from .checkpoint import atomic_write_json, atomic_write_text
from .config import TrainConfig
from .errors import SsvaeError

# Test accuracy reported by the papers (1 - error), by model and label count: Kingma et al. (2014),
# Table 1, for M2 and M1+M2.
PAPER = {
    "m2": {100: 1 - 0.1197, 600: 1 - 0.0494, 1000: 1 - 0.0360, 3000: 1 - 0.0392},
    "m1m2": {100: 1 - 0.0333, 600: 1 - 0.0259, 1000: 1 - 0.0240, 3000: 1 - 0.0218},
    # Maaløe et al. (2016), Table 2: MNIST with 100 labels only.
    "adgm": {100: 1 - 0.0096},
    "sdgm": {100: 1 - 0.0132},
}


def run_name(config: TrainConfig) -> str:
    return f"{config.model}-{config.labels}labels-seed{config.seed}"


def run_sweep(configs: list[TrainConfig], out: Path, progress: bool = True, log=print) -> str:
    """Train (or reuse, or resume) every run, write the tables, return the markdown table."""
    from .experiment import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for config in configs:
        run_dir = out / run_name(config)
        if (run_dir / "result.json").is_file():
            log(f"{run_dir}: finished, reused")
            result = json.loads((run_dir / "result.json").read_text())
        elif (run_dir / "config.json").is_file():
            _check_same(run_dir, config)
            log(f"{run_dir}: stopped earlier, resumed")
            result = train(config, run_dir, progress=progress, log=log, resume=True)
        else:
            log(f"{run_dir}: training")
            result = train(config, run_dir, progress=progress, log=log)
        results.append({"labels": config.labels, "seed": config.seed, "run": run_dir.name,
                        "test_accuracy": result["test_accuracy"], "val_accuracy": result["val_accuracy"],
                        "minutes": result["minutes"]})
        table, summary = tabulate(configs[0].model, results)
        atomic_write_text(out / "results.md", table + "\n")
        atomic_write_json(out / "results.json", {"model": configs[0].model, "config": asdict(configs[0]),
                                                 "cells": summary, "runs": results})
    return table


def _check_same(run_dir: Path, config: TrainConfig) -> None:
    """A stopped run is only resumed if it was started with the settings this sweep asks for."""
    from .config import load_config

    saved, _ = load_config(run_dir / "config.json")
    where = {"device", "threads"}
    differ = [k for k, v in asdict(config).items() if k not in where and asdict(saved).get(k) != v]
    if differ:
        raise SsvaeError(f"{run_dir} was started with other settings ({', '.join(differ)}); "
                         f"move it away or give the sweep another --out")


def tabulate(model: str, results: list[dict]) -> tuple[str, list[dict]]:
    """Markdown table and per-label-count summary: mean, standard deviation, minutes, paper."""
    cells = []
    for labels in sorted({r["labels"] for r in results}):
        runs = [r for r in results if r["labels"] == labels]
        tests = [r["test_accuracy"] for r in runs]
        cells.append({
            "labels": labels, "runs": len(runs),
            "test_accuracy_mean": statistics.mean(tests),
            "test_accuracy_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            "minutes_mean": statistics.mean(r["minutes"] for r in runs),
            "paper_test_accuracy": PAPER.get(model, {}).get(labels),
        })
    lines = [f"| {model}, labels | runs | test accuracy (mean ± std) | minutes per run | paper |", "|---|---|---|---|---|"]
    for c in cells:
        paper = f"{c['paper_test_accuracy']:.4f}" if c["paper_test_accuracy"] is not None else "-"
        lines.append(f"| {c['labels']} | {c['runs']} | {c['test_accuracy_mean']:.4f} ± {c['test_accuracy_std']:.4f} "
                     f"| {c['minutes_mean']:.1f} | {paper} |")
    return "\n".join(lines), cells
