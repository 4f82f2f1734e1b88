"""Training on a folder of the user's own images, and predicting new ones, from the command line.

The folder holds scikit-learn's real 8x8 digits as PNG files: five per class named by label, the
rest under plain names (unlabelled), and labelled validation and test folders beside it.
"""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from ssvae import pictures
from ssvae.cli import main

LABELLED_PER_CLASS = 5


def save_digit(path, pixels):
    Image.fromarray((pixels.reshape(8, 8) * 255 / 16).round().astype(np.uint8), mode="L").save(path)


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory):
    """Decoded folders are cached under $SSVAE_DATA: keep this module's out of the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSVAE_DATA", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    test, val, train = order[:400], order[400:600], order[600:]
    root = tmp_path_factory.mktemp("digits")
    folders = {name: root / name for name in ("train", "val", "test")}
    for folder in folders.values():
        folder.mkdir()
    seen = {k: 0 for k in range(10)}
    labelled = []
    for n in train:
        label = int(digits.target[n])
        if seen[label] < LABELLED_PER_CLASS:
            seen[label] += 1
            labelled.append(n)
            save_digit(folders["train"] / f"{label}_{n:04d}.png", digits.data[n])
        else:
            save_digit(folders["train"] / f"img{n:04d}.png", digits.data[n])
    for name, indices in (("val", val), ("test", test)):
        for n in indices:
            save_digit(folders[name] / f"{digits.target[n]}_{n:04d}.png", digits.data[n])
    return folders, digits, np.array(labelled), test


@pytest.fixture(scope="module")
def digits_run(digit_folders, tmp_path_factory):
    folders, *_ = digit_folders
    run = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--data", str(folders["train"]), "--val", str(folders["val"]), "--test",
                 str(folders["test"]), "--likelihood", "bernoulli", "--unlabelled-batch", "20", "--epochs", "40",
                 "--compile", "off", "--quiet", "--out", str(run)]) == 0
    return run


def test_m2_on_a_folder_beats_a_classifier_of_its_labelled_images_alone(digits_run, digit_folders, capsys):
    _, digits, labelled, test = digit_folders
    result = json.loads((digits_run / "result.json").read_text())
    alone = LogisticRegression(max_iter=2000).fit(digits.data[labelled] / 16, digits.target[labelled])
    alone_accuracy = alone.score(digits.data[test] / 16, digits.target[test])
    print(f"M2 on the folder: {result['test_accuracy']:.3f}; logistic regression on its "
          f"{len(labelled)} labelled images: {alone_accuracy:.3f}")
    assert result["test_accuracy"] > alone_accuracy + 0.02
    config = json.loads((digits_run / "config.json").read_text())
    assert config["data"]["class_names"] == [str(k) for k in range(10)]
    assert config["data"]["image_shape"] == [8, 8] and config["train"]["labels"] == 10 * LABELLED_PER_CLASS
    # The label weight's default follows the image's size: 64 pixels weigh the bounds less than 784.
    assert config["model"]["alpha"] == pytest.approx(10.0 * 64 / 784)


def test_predict_on_the_test_images_matches_evaluate(digits_run, digit_folders, tmp_path, capsys):
    folders, *_ = digit_folders
    capsys.readouterr()
    assert main(["evaluate", str(digits_run), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(digits_run), str(folders["test"]), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"accuracy on the 400 images whose names carry a label: {evaluated['test_accuracy']:.4f}" in said
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 400 and list(rows[0]) == ["path", "predicted", *map(str, range(10))]
    assert all(abs(sum(float(r[str(k)]) for k in range(10)) - 1) < 1e-4 for r in rows)
    correct = sum(r["predicted"] == r["path"].rsplit("/", 1)[-1].split("_")[0] for r in rows)
    assert correct / 400 == pytest.approx(evaluated["test_accuracy"])


def test_predict_names_images_it_cannot_use(digits_run, tmp_path, capsys):
    Image.new("L", (8, 8)).save(tmp_path / "3_fine.png")
    Image.new("L", (8, 8)).save(tmp_path / "12_unknown.png")  # a class the model does not know
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    capsys.readouterr()
    assert main(["predict", str(digits_run), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "12_unknown.png" in err and "not one of the classes" in err and "broken.png" in err
    assert main(["predict", str(digits_run), str(tmp_path), "--skip-bad"]) == 0
    assert "1 images: " in capsys.readouterr().out


def test_a_folder_with_no_labelled_file_stops_before_training(tmp_path, capsys):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "holiday.png")
    assert main(["train", "--data", str(folder), "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")]) == 2
    assert "no file name carries a label" in capsys.readouterr().err


def test_a_data_folder_that_does_not_exist_is_named(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert main(["train", "--data", str(missing), "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such folder" in err


def picture_of(path):
    with Image.open(path) as image:
        return image.size, np.asarray(image.convert("RGB"), dtype=np.float64)


def test_the_pictures_of_a_grey_folder_run(digits_run, capsys):
    # Training already wrote the report; the commands draw 8x8 cells enlarged 7x to 56 pixels.
    assert (digits_run / "report.html").is_file()
    assert main(["analogy", str(digits_run), "--n", "4"]) == 0
    assert main(["plot", str(digits_run)]) == 0
    said = capsys.readouterr().out
    for name in ("analogy.png", "latent.png", "reconstructions.png", "curves.png", "confusion.png"):
        assert f"wrote {digits_run / name}" in said
    size, pixels = picture_of(digits_run / "analogy.png")
    assert size == (11 * 58 + 2, 4 * 58 + 2) and pixels.std() > 20


def test_the_pictures_of_a_colour_folder_run(tmp_path, capsys):
    """Digits painted in a colour per class: the pictures keep the colours where they belong."""
    digits = load_digits()
    palette = np.array([[1, 0.2, 0.2], [0.2, 1, 0.2], [0.2, 0.2, 1], [1, 1, 0.2], [1, 0.2, 1],
                        [0.2, 1, 1], [1, 0.6, 0.2], [0.6, 0.2, 1], [0.6, 1, 0.6], [1, 1, 1]])
    folder = tmp_path / "colour"
    folder.mkdir()
    for n in range(600):
        label = int(digits.target[n])
        grey = digits.data[n].reshape(8, 8, 1) / 16
        rgb = (grey * palette[label] * 255).round().astype(np.uint8)
        Image.fromarray(rgb, mode="RGB").save(folder / (f"{label}_{n}.png" if n < 300 else f"img{n}.png"))
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--channels", "3", "--likelihood", "bernoulli",
                 "--unlabelled-batch", "20", "--epochs", "20", "--compile", "off", "--quiet", "--out", str(run)]) == 0
    assert main(["analogy", str(run), "--index", "0", "1", "2"]) == 0
    assert main(["sample", str(run), "--n", "3"]) == 0
    assert main(["plot", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    # The analogy's first column is each test image itself, enlarged 7x, in its own colours.
    size, pixels = picture_of(run / "analogy.png")
    assert size == (11 * 58 + 2, 3 * 58 + 2)
    originals = pictures.open_run(run, "cpu").data.test_images[:3].reshape(3, 8, 8, 3)
    for row, original in enumerate(originals):
        cell = pixels[2 + row * 58:2 + row * 58 + 56, 2:58]
        np.testing.assert_allclose(cell, original.repeat(7, axis=0).repeat(7, axis=1), atol=1)
    # The samples come out in colour, not grey: the channels differ.
    size, pixels = picture_of(run / "samples.png")
    assert size == (3 * 58 + 2, 10 * 58 + 2)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).mean() + np.abs(pixels[..., 1] - pixels[..., 2]).mean() > 5
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6
