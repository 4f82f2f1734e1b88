"""One JSON file that sums up finished runs: what each trained, how far it got, and where it fell short.

For every run directory given: its data, model, likelihood, seed, threads and budget; the result
(validation and test accuracy with the test interval, the test bound); the test accuracy of each
class; a logistic regression on the same labelled images; and the curve of validation accuracy
against minutes. Used to keep the figures of trials run with ``ssvae train`` itself.

    python benchmarks/summarise_runs.py RUN [RUN ...] --out FILE.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from time_to_accuracy import per_class_and_baseline

from ssvae.checkpoint import atomic_write_json
from ssvae.config import load_config


def summarise(run_dir: Path) -> dict:
    config, model_config = load_config(run_dir / "config.json")
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    finished = (run_dir / "result.json").is_file()
    # A run stopped before its end keeps its kept weights and its curve; the figures it never reached are null.
    result = json.loads((run_dir / "result.json").read_text()) if finished else {
        "epochs": curve[-1]["epoch"], "minutes": curve[-1]["minutes"], "skipped_steps": curve[-1]["skipped_steps"]}
    return {
        "run": run_dir.name, "data": config.data, "model": config.model, "likelihood": model_config.get("likelihood"),
        "seed": config.seed, "threads": config.threads, "minutes_budget": config.minutes, "finished": finished,
        **{key: result.get(key) for key in ("val_accuracy", "test_accuracy", "test_interval", "test_bound_nats",
                                            "test_bits_per_dim", "epochs", "minutes", "skipped_steps")},
        **per_class_and_baseline(run_dir, config),
        "curve": [(round(r["minutes"], 3), r.get("val_accuracy")) for r in curve],
        "unlabelled_bound_by_epoch": [round(r["unlabelled_bound"], 2) for r in curve if "unlabelled_bound" in r],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [summarise(run) for run in args.runs]
    atomic_write_json(args.out, {"runs": rows})
    for r in rows:
        test = f"test {r['test_accuracy']:.4f}" if r["finished"] else "stopped before its end"
        print(f"{r['run']}: {r['data']} {r['model']} {r['likelihood']} seed {r['seed']}, {r['epochs']} epochs in "
              f"{r['minutes']:.1f} min, {test} (logistic regression {r['logistic_regression_test_accuracy']:.4f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
