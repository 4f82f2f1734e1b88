"""The command line end to end, on a small slice of real MNIST."""

import json

import numpy as np
import pytest
import torch

from ssvae.cli import main
from ssvae.errors import SsvaeError


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, mnist):
    run = tmp_path_factory.mktemp("runs") / "m2-smoke"
    code = main(["train", "--model", "m2", "--labels", "100", "--epochs", "1", "--max-unlabelled", "3000",
                 "--unlabelled-batch", "100", "--labelled-batch", "10", "--compile", "off", "--quiet",
                 "--out", str(run)])
    assert code == 0
    return run


def test_train_writes_a_complete_run_directory(smoke_run, mnist):
    for name in ("config.json", "labelled_indices.json", "metrics.jsonl", "best.pt", "last.pt", "result.json"):
        assert (smoke_run / name).is_file(), name
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["train"]["labels"] == 100 and config["model"]["num_classes"] == 10
    assert config["model"]["alpha"] == pytest.approx(10.0)  # the default, resolved for 784 pixels and saved
    chosen = np.array(json.loads((smoke_run / "labelled_indices.json").read_text()))
    assert np.bincount(mnist.train_labels[chosen], minlength=10).tolist() == [10] * 10
    epochs = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 1 and np.isfinite(epochs[0]["loss"])
    # One epoch on 3,000 unlabelled images already beats chance by far.
    assert json.loads((smoke_run / "result.json").read_text())["test_accuracy"] > 0.3


def test_evaluate_reads_the_run_back(smoke_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(smoke_run), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    saved = json.loads((smoke_run / "result.json").read_text())
    assert figures["test_accuracy"] == pytest.approx(saved["test_accuracy"])
    assert figures["val_accuracy"] == pytest.approx(saved["val_accuracy"])


def test_evaluate_refuses_a_generative_weight_for_a_model_without_one(smoke_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(smoke_run), "--generative-weight", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "adgm and sdgm runs" in err and str(smoke_run) in err


def test_an_existing_run_is_not_overwritten(smoke_run, capsys):
    assert main(["train", "--epochs", "1", "--out", str(smoke_run), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


TINY = ["--labels", "20", "--epochs", "1", "--max-unlabelled", "200", "--unlabelled-batch", "100",
        "--labelled-batch", "10", "--compile", "off", "--quiet", "--no-report"]


def test_overwrite_replaces_a_run_but_never_a_folder_of_other_files(tmp_path, capsys, mnist):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["train", *TINY, "--out", str(mine), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert str(mine) in err and "holds no ssvae run" in err
    assert (mine / "thesis.tex").read_text() == "years of work"

    run = tmp_path / "run"
    assert main(["train", *TINY, "--seed", "0", "--out", str(run)]) == 0
    (run / "stale.txt").write_text("from the first run")
    assert main(["train", *TINY, "--seed", "1", "--out", str(run), "--overwrite"]) == 0
    assert not (run / "stale.txt").exists()
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 1


@pytest.mark.parametrize("options, reason", [
    (["--labels", "105"], "multiple of the 10 classes"),
    (["--labels", "60000"], "only 50000"),
    (["--model", "m7"], "unknown model"),
    (["--epochs", "0"], "at least 1"),
    (["--device", "cuda:3"] , "cuda"),
    (["--model", "m1", "--class-balance", "5"], "--class-balance is an option of m2, m1m2, adgm and sdgm"),
    (["--class-balance", "-1"], "class_balance must be 0 or more"),
    (["--model", "sdgm", "--kl-scale", "0"], "kl_scale must be a positive number"),
    (["--model", "m1", "--adversarial", "1"], "--adversarial is an option of m2, m1m2, adgm and sdgm"),
    (["--adversarial-radius", "0"], "adversarial_radius must be a positive number"),
    (["--model", "m1", "--class-balance-schedule", "cosine"],
     "--class-balance-schedule is an option of m2, m1m2, adgm and sdgm"),
    (["--adversarial-final-radius", "1"], "--adversarial-final-radius is an option of adgm and sdgm"),
    (["--model", "sdgm", "--adversarial-final-radius", "0"], "adversarial_final_radius must be a positive number"),
    (["--adversarial-final", "3"], "--adversarial-final is an option of adgm and sdgm"),
    (["--top-classes", "3"], "--top-classes is an option of adgm and sdgm"),
    (["--generative-weight", "0.2"], "--generative-weight is an option of adgm and sdgm"),
    (["--model", "adgm", "--generative-weight", "-1"], "generative_weight must be 0 or more"),
    (["--model", "sdgm", "--generative-samples", "0"], "generative_samples must be a positive integer"),
    (["--classifier-hidden", "500", "500"], "--classifier-hidden is an option of adgm and sdgm"),
    (["--model", "sdgm", "--aux-kl-scale", "-1"], "aux_kl_scale must be a positive number"),
    (["--model", "sdgm", "--classifier-hidden", "500", "0"], "classifier_hidden_dims must be positive sizes"),
    (["--model", "adgm", "--adversarial-radius", "-1"], "adversarial_radius must be a positive number"),
    (["--model", "sdgm", "--top-classes", "11"], "top_classes must be between 1 and the number of classes"),
])
def test_impossible_options_stop_with_one_line(options, reason, tmp_path, capsys, mnist):
    code = main(["train", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet", *options])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("ssvae: ") and reason in err and "\n" not in err
    assert not (tmp_path / "run" / "best.pt").exists()


def test_evaluate_names_a_missing_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_data_fetch_from_a_folder_without_mnist_says_what_to_supply(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSVAE_DATA", str(tmp_path / "cache"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train-images-idx3-ubyte.gz").write_bytes(b"not a gzip file")
    assert main(["data", "fetch", "mnist", "--from", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err
    # names the folder and the files it still needs
    assert "mine" in err and "train-labels-idx1-ubyte.gz" in err and "\n" not in err.strip()
    assert not (tmp_path / "cache" / "mnist.npz").exists()


@pytest.mark.parametrize("model", ["m1", "m2", "m1m2", "adgm", "sdgm"])
def test_the_defaults_are_the_same_for_a_built_in_data_set_and_a_folder_of_the_same_images(model):
    """One command, no switch per data set: what a model is built with depends on the images' shape
    and classes, not on whether they came built in or as a user's folder."""
    from dataclasses import asdict

    from ssvae.config import TrainConfig
    from ssvae.data.folder import FolderData
    from ssvae.data.mnist import MnistData
    from ssvae.experiment import initial_model_config

    images, labels = np.zeros((4, 784), np.uint8), np.zeros(4, np.int64)
    built_in = MnistData(images, labels, images, labels, images, labels, name="fashion-mnist")
    folder = FolderData(images, labels, images, labels, images, labels, num_classes=10, image_shape=(28, 28),
                        class_names=[str(k) for k in range(10)])
    configs = [initial_model_config(TrainConfig(model=model, data=spec), data)
               for spec, data in (("fashion-mnist", built_in), ("photos/", folder))]
    assert asdict(configs[0]) == asdict(configs[1])
    likelihood = (configs[0].m1 if model == "m1m2" else configs[0]).likelihood
    assert likelihood == "bernoulli"  # what --likelihood auto measured best (docs/fashion-mnist.md)


def test_a_cuda_device_the_machine_lacks_is_named(monkeypatch):
    from ssvae.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SsvaeError, match=r"--device cuda:3: this machine has 1 CUDA device, cuda:0 to cuda:0"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
