"""How long until a model classifies well with 100 labels, and how well at the end?

Trains M2 (or M1+M2, ADGM, SDGM) on real MNIST (or Fashion-MNIST) with the command line's
defaults, once per seed (each seed draws its own labelled images), and reports per seed: the
minutes until validation accuracy first reaches the target (MNIST: M2 0.90, M1+M2 0.967, the
paper's test accuracy, ADGM and SDGM 0.98; Fashion-MNIST: M2 0.76, the others 0.80), the best
validation accuracy, the test accuracy of the weights kept on validation with its 95% interval,
the test accuracy of each class, and a logistic regression on the same labelled images alone;
then the mean and standard deviation over seeds. For M1+M2 the minutes include the M1 stage.

    python benchmarks/time_to_accuracy.py [--model m2|m1m2|adgm|sdgm] [--seeds 0 1 2 3 4] [--minutes 10]
                                          [--data mnist|fashion-mnist] [--likelihood auto|bernoulli|logistic|...]
                                          [--labels 100] [--jobs 2] [--lr LR] [--alpha A]
                                          [--kl-scale B] [--aux-kl-scale B] [--class-balance W]
                                          [--class-balance-schedule S]
                                          [--adversarial W] [--adversarial-final W] [--adversarial-radius R]
                                          [--adversarial-final-radius R]
                                          [--top-classes M] [--classifier-hidden UNITS...]
                                          [--generative-weight W] [--unlabelled-batch N] [--binarize]

With --jobs N, N seeds train at once, each on its share of the cores (one thread each on a 2-core
machine with --jobs 2); the minutes are then each run's own wall-clock minutes on that share.

Prints a table and writes benchmarks/results/time_to_accuracy[_DATA][_MODEL][_LIKELIHOOD].json (with
each run's curve of validation accuracy against minutes). Runs go under benchmarks/results/runs/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ssvae.checkpoint import atomic_write_json
from ssvae.config import TrainConfig
from ssvae.errors import SsvaeError
from ssvae.experiment import initial_model_config, train
from ssvae.models.likelihoods import NAMES as LIKELIHOOD_NAMES

RESULTS = Path(__file__).parent / "results"
# Minutes per run and the validation accuracy to time, by model, and on Fashion-MNIST.
BUDGETS = {"m2": (TrainConfig().minutes, 0.90), "m1m2": (25.0, 0.967), "adgm": (60.0, 0.98), "sdgm": (60.0, 0.98)}
FASHION_TARGETS = {"m2": 0.76, "m1m2": 0.80, "adgm": 0.80, "sdgm": 0.80}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=tuple(BUDGETS), default="m2")
    parser.add_argument("--data", choices=("mnist", "fashion-mnist"), default="mnist")
    parser.add_argument("--likelihood", choices=("auto", *LIKELIHOOD_NAMES), default="auto",
                        help="p(x|...) of the images (default: auto, as training chooses)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--minutes", type=float, default=None,
                        help="budget per run (M2: 10, M1+M2: 25, ADGM and SDGM: 60)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's own)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="weight of the labelled cross-entropy (default: the model's own)")
    parser.add_argument("--kl-scale", type=float, default=None,
                        help="ADGM, SDGM: the KL terms' weight (default: the model's own; 1 is the paper's bound)")
    parser.add_argument("--aux-kl-scale", type=float, default=None,
                        help="ADGM, SDGM: the weight of a's KL term alone (default: the same as --kl-scale)")
    parser.add_argument("--class-balance", type=float, default=None,
                        help="M2, M1+M2, ADGM, SDGM: weight of the class-balance term (default: the model's own; 0: none)")
    parser.add_argument("--adversarial", type=float, default=None, dest="adversarial_weight",
                        help="M2, M1+M2, ADGM, SDGM: weight of the virtual adversarial term (default: the model's own; 0: none)")
    parser.add_argument("--adversarial-final", type=float, default=None, dest="adversarial_final_weight",
                        help="ADGM, SDGM: the adversarial term's weight at the end of the budget (default: constant)")
    parser.add_argument("--adversarial-radius", type=float, default=None,
                        help="M2, M1+M2, ADGM, SDGM: length of the adversarial perturbation (default: the model's own)")
    parser.add_argument("--adversarial-final-radius", type=float, default=None, dest="adversarial_final_radius",
                        help="ADGM, SDGM: the adversarial perturbation's length at the end of the budget (default: constant)")
    parser.add_argument("--top-classes", type=int, default=None,
                        help="ADGM, SDGM: classes the unlabelled bound sums over once they have formed (default: all)")
    parser.add_argument("--class-balance-schedule", choices=("constant", "cosine"), default=None,
                        help="M2, M1+M2, ADGM, SDGM: how the class-balance weight changes over the run (default: the model's own)")
    parser.add_argument("--classifier-hidden", type=int, nargs="+", default=None, dest="classifier_hidden_dims",
                        metavar="UNITS", help="ADGM, SDGM: hidden layers of the classifier alone (default: as every network's)")
    parser.add_argument("--generative-weight", type=float, default=None,
                        help="ADGM, SDGM: weight of the generative posterior fused with q to evaluate (default: the model's own)")
    parser.add_argument("--unlabelled-batch", type=int, default=TrainConfig.unlabelled_batch_size, metavar="N",
                        help="unlabelled images per step (default: %(default)s, training's own)")
    parser.add_argument("--binarize", action="store_true",
                        help="redraw every pixel as a Bernoulli sample each time an image is drawn")
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--target", type=float, default=None, help="validation accuracy to time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at the same time")
    parser.add_argument("--m1-share", type=float, default=TrainConfig().m1_share,
                        help="M1+M2: share of the minutes spent on M1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.minutes = args.minutes or BUDGETS[args.model][0]
    args.target = args.target or (FASHION_TARGETS if args.data == "fashion-mnist" else
                                  {m: t for m, (_, t) in BUDGETS.items()})[args.model]
    parts = [args.data if args.data != "mnist" else "", args.model if args.model != "m2" else "",
             args.likelihood if args.likelihood != "auto" else ""]
    args.out = args.out or RESULTS / "_".join(["time_to_accuracy", *filter(None, parts)]).__add__(".json")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if args.threads is None and args.jobs > 1:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    options = {name: value for name, value in [("alpha", args.alpha), ("kl_scale", args.kl_scale),
                                                ("aux_kl_scale", args.aux_kl_scale),
                                                ("class_balance", args.class_balance),
                                                ("class_balance_schedule", args.class_balance_schedule),
                                                ("adversarial_weight", args.adversarial_weight),
                                                ("adversarial_radius", args.adversarial_radius),
                                                ("adversarial_final_weight", args.adversarial_final_weight),
                                                ("adversarial_final_radius", args.adversarial_final_radius),
                                                ("top_classes", args.top_classes),
                                                ("classifier_hidden_dims", args.classifier_hidden_dims),
                                                ("generative_weight", args.generative_weight)]
               if value is not None}
    configs = [TrainConfig(model=args.model, data=args.data, likelihood=args.likelihood, labels=args.labels,
                           seed=seed, minutes=args.minutes,
                           threads=args.threads, m1_share=args.m1_share, learning_rate=args.lr,
                           binarize=args.binarize, model_options=options,
                           unlabelled_batch_size=args.unlabelled_batch)
               for seed in args.seeds]
    config, rows = configs[0], []
    # Refuse an impossible option here, with its message, rather than in every run's process.
    if args.unlabelled_batch < 1:
        parser.error(f"--unlabelled-batch {args.unlabelled_batch}: must be at least 1")
    try:
        config.validate()
        initial_model_config(config, SimpleNamespace(train_images=np.empty((0, 784)), num_classes=10))  # MNIST's shape
    except SsvaeError as error:
        parser.error(str(error))
    # Each run in a fresh process: its own torch threads, and nothing shared between seeds.
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(run_one, configs, [args.target] * len(configs)):
            rows.append(row)
            seed, reached = row["seed"], row["minutes_to_target"]
            print(f"seed {seed}: test {row['test_accuracy']:.4f}, best validation {row['best_val_accuracy']:.4f}, "
                  f"validation {args.target:.2f} after {'%.1f min' % reached if reached else 'never'}; "
                  f"logistic regression on the same labels {row['logistic_regression_test_accuracy']:.4f}", flush=True)
            # Written after every seed, so that an interrupted benchmark keeps the seeds it finished.
            tests = [r["test_accuracy"] for r in rows]
            summary = {
                "model": args.model, "data": args.data, "likelihood": args.likelihood, "labels": args.labels, "minutes_budget": args.minutes, "target": args.target,
                "jobs": args.jobs, "config": asdict(config), "load_average_before": load, "runs": rows,
                "test_accuracy_mean": statistics.mean(tests),
                "test_accuracy_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(args.out, summary)
    print()
    print(f"| seed | minutes to val {args.target:.2f} | best val | test | logistic regression, same labels |")
    print("|---|---|---|---|---|")
    for r in rows:
        reached = f"{r['minutes_to_target']:.1f}" if r["minutes_to_target"] is not None else "never"
        print(f"| {r['seed']} | {reached} | {r['best_val_accuracy']:.4f} | {r['test_accuracy']:.4f} "
              f"| {r['logistic_regression_test_accuracy']:.4f} |")
    print(f"\ntest accuracy {summary['test_accuracy_mean']:.4f} ± {summary['test_accuracy_std']:.4f} "
          f"over {len(rows)} label draws, {args.minutes:g} minutes each (load average before {load:.2f})")
    print(f"wrote {args.out}")


def run_one(config: TrainConfig, target: float) -> dict:
    """Train one seed and return its row: the result and the curve of validation accuracy."""
    def spelt(value) -> str:
        if isinstance(value, (int, float)):
            return f"{value:g}"
        return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else f"-{value}"

    options = "".join(f"-{name}{spelt(value)}" for name, value in sorted(config.model_options.items()))
    options += f"-lr{config.learning_rate:g}" if config.learning_rate is not None else ""
    options += "-binarized" if config.binarize else ""
    options += (f"-ubatch{config.unlabelled_batch_size}"
                if config.unlabelled_batch_size != TrainConfig.unlabelled_batch_size else "")
    threads = f"-{config.threads}threads" if config.threads else ""  # kept apart from runs on the whole machine
    data = f"{config.data}-" if config.data != "mnist" else ""
    likelihood = f"-{config.likelihood}" if config.likelihood != "auto" else ""
    run_dir = RESULTS / "runs" / f"{data}{config.model}-{config.labels}labels{likelihood}{options}{threads}-seed{config.seed}"
    result = train(config, run_dir, overwrite=True, progress=False, log=lambda *a, **k: None)
    offset = result.get("m1_minutes", 0.0)  # M1+M2: the classifier's clock starts after M1
    curve = [{**r, "minutes": r["minutes"] + offset}
             for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    reached = next((r["minutes"] for r in curve if r["val_accuracy"] >= target), None)
    return {
        "seed": config.seed, "minutes_to_target": reached, "best_val_accuracy": result["val_accuracy"],
        "test_accuracy": result["test_accuracy"], "test_interval": result["test_interval"],
        "test_bound_nats": result.get("test_bound_nats"), "test_bits_per_dim": result.get("test_bits_per_dim"),
        "skipped_steps": result["skipped_steps"], **per_class_and_baseline(run_dir, config),
        "epochs": result["epochs"], "minutes": result["minutes"],
        "m1_minutes": result.get("m1_minutes"), "active_dims": result.get("active_dims"),
        "curve": [(round(r["minutes"], 3), r["val_accuracy"]) for r in curve],
    }


def per_class_and_baseline(run_dir: Path, config: TrainConfig) -> dict:
    """Test accuracy of each class (which classes the model falls short on) with the weights the run
    kept, and a logistic regression on the same labelled images alone (what the unlabelled images
    must beat), its C chosen on validation."""
    import torch

    from ssvae.baselines import logistic_regression_on
    from ssvae.data.loading import load_data
    from ssvae.evaluation import class_probabilities
    from ssvae.predict import load_classifier

    data = load_data(config.data, log=lambda *a, **k: None, config=config)
    model = load_classifier(run_dir, torch.device("cpu"))[0]
    predicted = class_probabilities(model, data.test_images, torch.device("cpu")).argmax(-1).numpy()
    per_class = [float((predicted[data.test_labels == k] == k).mean()) for k in range(data.num_classes)]
    labelled = np.array(json.loads((run_dir / "labelled_indices.json").read_text()), dtype=np.int64)
    scale = 1.0 / 255.0
    linear = logistic_regression_on(data.train_images[labelled] * scale, data.train_labels[labelled],
                                    data.val_images * scale, data.val_labels, data.test_images * scale,
                                    data.test_labels, "pixels + logistic regression")
    return {"test_accuracy_by_class": per_class, "class_names": list(getattr(data, "class_names", [])),
            "logistic_regression_test_accuracy": linear.test_accuracy}


if __name__ == "__main__":
    main()
