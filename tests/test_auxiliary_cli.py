"""ADGM and SDGM from the command line, on a small slice of real MNIST: train, and every command
that reads a run back."""

import json

import pytest
from PIL import Image

from ssvae.cli import main


@pytest.fixture(scope="module", params=["adgm", "sdgm"])
def auxiliary_run(request, tmp_path_factory, mnist):
    run = tmp_path_factory.mktemp("runs") / request.param
    # SDGM with its defaults (ReLU, kl_scale 2, class balance 50 on a cosine schedule, the
    # adversarial term), ADGM with softplus and the paper's objective, summed over each image's top
    # 3 classes after the first tenth of the run, its classifier one layer of 300, classifying with
    # the generative posterior at weight 0.5 over 4 draws: every command reads back either.
    activation = [] if request.param == "sdgm" else ["--activation", "softplus", "--kl-scale", "1",
                                                      "--class-balance", "0", "--class-balance-schedule", "constant",
                                                      "--adversarial", "0", "--top-classes", "3",
                                                      "--aux-kl-scale", "1", "--classifier-hidden", "300",
                                                      "--generative-weight", "0.5", "--generative-samples", "4"]
    assert main(["train", "--model", request.param, "--labels", "100", "--epochs", "4", "--max-unlabelled", "2000",
                 "--unlabelled-batch", "100", "--labelled-batch", "10", "--hidden-dim", "200", *activation,
                 "--hidden-layers", "2", "--kl-warmup", "20", "--compile", "off", "--quiet", "--out", str(run)]) == 0
    return request.param, run


def test_a_short_run_learns_and_saves_its_config(auxiliary_run):
    model, run = auxiliary_run
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["skip"] == (model == "sdgm")
    # The paper's two hidden layers (at a small width) and a warm-up, from the command line.
    assert config["model"]["hidden_dims"] == [200, 200] and config["model"]["kl_warmup_steps"] == 20
    expected = ("relu", 2.0, 50.0, "cosine", 1.0) if model == "sdgm" else ("softplus", 1.0, 0.0, "constant", 0.0)
    names = ("activation", "kl_scale", "class_balance", "class_balance_schedule", "adversarial_weight")
    assert tuple(config["model"][k] for k in names) == expected
    assert config["model"]["top_classes"] == (None if model == "sdgm" else 3)
    assert (config["model"]["aux_kl_scale"], config["model"]["classifier_hidden_dims"]) == \
        ((None, None) if model == "sdgm" else (1.0, [300]))
    assert (config["model"]["generative_weight"], config["model"]["generative_samples"]) == \
        ((0.1, 8) if model == "sdgm" else (0.5, 4))
    # Four epochs on 2,000 unlabelled images (80 steps) already beat chance (0.1) by far.
    assert json.loads((run / "result.json").read_text())["test_accuracy"] > 0.3


def test_every_command_reads_the_run(auxiliary_run, mnist, tmp_path, capsys):
    _, run = auxiliary_run
    assert main(["evaluate", str(run), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == json.loads((run / "result.json").read_text())["test_accuracy"]
    # Weight 0 reads q alone, as validation during training does: the kept weights' validation figure.
    assert main(["evaluate", str(run), "--json", "--generative-weight", "0"]) == 0
    q_alone = json.loads(capsys.readouterr().out)
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert q_alone["val_accuracy"] == max(epoch["val_accuracy"] for epoch in epochs)
    for n in range(3):
        Image.fromarray(mnist.test_images[n].reshape(28, 28)).save(tmp_path / f"{mnist.test_labels[n]}_{n}.png")
    assert main(["predict", str(run), str(tmp_path)]) == 0
    assert "3 images" in capsys.readouterr().out
    assert main(["analogy", str(run), "--n", "3"]) == 0
    assert main(["sample", str(run), "--n", "2"]) == 0
    assert main(["sample", str(run), "--interpolate", "0", "1", "--steps", "3"]) == 0
    assert main(["plot", str(run)]) == 0
    assert main(["report", str(run)]) == 0
    for name in ("analogy.png", "samples.png", "interpolation.png", "latent.png", "confusion.png", "report.html"):
        assert (run / name).is_file(), name
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6
