"""How much of each test image does an ADGM or SDGM run's auxiliary variable a carry, and does its
classifier q(y|a,x) read it?

For each run directory given (its kept weights, best.pt), on MNIST's test set:

- test accuracy of q(y|a,x) with a at the mean of q(a|x) of the image itself; of another test
  image (the images' a shuffled); and with x taken from another image while a stays the image's
  own. A classifier that reads a loses accuracy when a is shuffled; one that reads only x keeps it;
- how far the mean of q(a|x) moves from image to image (its standard deviation over the test set,
  per dimension), against the spread of q(a|x) itself (its standard deviation, averaged over the
  images), and how many of a's dimensions move by more than half their own spread. Means that do
  not move mean that a has fallen back to one distribution for every image and carries nothing.

    python benchmarks/auxiliary_use.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ssvae.data.mnist import load_mnist
from ssvae.errors import SsvaeError
from ssvae.data.batches import to_inputs
from ssvae.predict import load_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="ADGM or SDGM run directories")
    args = parser.parse_args()
    data = load_mnist()
    x = to_inputs(torch.as_tensor(data.test_images), binarize=False)
    labels = torch.as_tensor(data.test_labels)
    shuffled = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    print("| run | own a | another image's a | another image's x | a's mean moves | q(a|x)'s spread "
          "| dimensions that move |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        try:
            model, config, _ = load_classifier(run, torch.device("cpu"))
        except SsvaeError as error:
            parser.error(str(error))
        if config.model not in ("adgm", "sdgm"):
            parser.error(f"{run}: a {config.model} run has no auxiliary variable; give an adgm or sdgm run")
        with torch.no_grad():
            mean, logvar = model.aux_posterior(x)

            def accuracy(images, a) -> float:
                return (model.class_logits(images, a).argmax(-1) == labels).float().mean().item()

            moves, spread = mean.std(0), torch.exp(0.5 * logvar).mean(0)
            print(f"| {run.name} | {accuracy(x, mean):.4f} | {accuracy(x, mean[shuffled]):.4f} "
                  f"| {accuracy(x[shuffled], mean):.4f} | {moves.mean():.3f} | {spread.mean():.3f} "
                  f"| {int((moves > 0.5 * spread).sum())} of {len(spread)} |", flush=True)


if __name__ == "__main__":
    main()
