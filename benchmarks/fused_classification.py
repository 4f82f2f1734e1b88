"""How much does fusing an ADGM or SDGM run's classifier q(y|x) with the model's own posterior
p(y|x) gain, and at which weight, number of draws and number of classes?

For each run directory given, on MNIST: the test accuracy of the weights kept on validation
(best.pt), and the validation accuracy of the run's last weights (last.pt), which were not chosen on
validation and so measure the fusion without the choice's own luck; each with q alone and fused
(``ssvae.models.auxiliary.fuse``) at every weight w, number of draws S of a and z and number of
classes m (those most probable under q) asked for. The importance weights are computed once per
image, class and draw, for the largest S, and every setting reads its share of them, so the table
costs about as much as its most expensive setting.

    python benchmarks/fused_classification.py RUN [RUN ...] [--weights 0.1 0.2 0.3]
                                              [--samples 4 8] [--classes 2 3 10] [--threads 2]

Prints one table per split (mean accuracy over the runs, the mean change against q alone, and on how
many runs it is higher) and writes benchmarks/results/fused_classification.json with every figure.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ssvae.checkpoint import load_checkpoint
from ssvae.config import load_config
from ssvae.data.mnist import load_mnist
from ssvae.data.batches import to_inputs
from ssvae.models import build_model
from ssvae.models.auxiliary import AuxiliaryConfig, fuse

RESULTS = Path(__file__).resolve().parent / "results"


def load_weights(run: Path, checkpoint: str):
    """The run's ADGM or SDGM with the weights in ``checkpoint``. Options the model no longer has
    (ones tried and removed, recorded at their off value) are left out."""
    config, model_config = load_config(run / "config.json")
    if config.model not in ("adgm", "sdgm"):
        raise SystemExit(f"{run}: a {config.model} run; this benchmark reads ADGM and SDGM runs")
    known = {f.name for f in fields(AuxiliaryConfig)}
    model = build_model(config.model, **{k: v for k, v in model_config.items() if k in known})
    model.load_state_dict(load_checkpoint(run / checkpoint, map_location="cpu")["model"])
    return model.eval()


@torch.no_grad()
def scores(model, images: np.ndarray, samples: int, batch_size: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """log q(y|x) (N, K) and the log importance weights of p(x,y) for every class, (S, N, K), in
    batches of evaluation's size, so that each image gets the draws evaluation gives it."""
    log_q, log_weights = [], []
    for start in range(0, len(images), batch_size):
        x = to_inputs(torch.as_tensor(images[start:start + batch_size]), binarize=False)
        log_q.append(model.classify(x))
        log_weights.append(model.generative_log_weights(x, samples=samples))
    return torch.cat(log_q), torch.cat(log_weights, dim=1)


def fused_accuracy(log_q, log_weights, labels, weight: float, samples: int, classes: int) -> float:
    classes_asked = log_q.topk(classes, dim=-1).indices
    log_joint = torch.logsumexp(log_weights[:samples], dim=0).gather(1, classes_asked)
    predicted = fuse(log_q, classes_asked, log_joint.log_softmax(-1), weight).argmax(-1)
    return float((predicted == labels).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="ADGM or SDGM run directories")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--samples", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 3, 10])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "fused_classification.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist()
    splits = {"test (best.pt)": ("best.pt", data.test_images, data.test_labels),
              "validation (last.pt)": ("last.pt", data.val_images, data.val_labels)}
    settings = [(w, s, m) for m in args.classes for s in args.samples for w in args.weights]
    figures = {}
    for split, (checkpoint, images, labels) in splits.items():
        labels = torch.as_tensor(labels)
        per_run = {}
        for run in args.runs:
            log_q, log_weights = scores(load_weights(run, checkpoint), images, max(args.samples))
            alone = float((log_q.argmax(-1) == labels).double().mean())
            per_run[str(run)] = {"q alone": alone, **{f"w {w}, S {s}, m {m}": fused_accuracy(
                log_q, log_weights, labels, w, s, m) for w, s, m in settings}}
            print(f"{split}, {run.name}: q alone {alone:.4f}", flush=True)
        figures[split] = per_run
        alone = np.array([r["q alone"] for r in per_run.values()])
        print(f"\n{split}, {len(alone)} runs: q alone {alone.mean():.4f}\n")
        print("| w | draws S | classes m | accuracy | change | runs higher |")
        print("|---|---|---|---|---|---|")
        for w, s, m in settings:
            fused = np.array([r[f"w {w}, S {s}, m {m}"] for r in per_run.values()])
            print(f"| {w} | {s} | {m} | {fused.mean():.4f} | {(fused - alone).mean():+.4f} "
                  f"| {(fused > alone).sum()} of {len(alone)} |")
        print()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
