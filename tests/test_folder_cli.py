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
    # So do the classifier terms': the class balance per input, the perturbation's length by its root.
    assert config["model"]["class_balance"] == pytest.approx(50.0 * 64 / 784)
    assert config["model"]["adversarial_radius"] == pytest.approx(2.0 * (64 / 784) ** 0.5)


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


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    """The digits in the subfolder layout: train/ with five labelled per class and the rest in
    unlabelled/, and test/ with one subfolder per class."""
    digits = load_digits()
    root = tmp_path_factory.mktemp("subfolders")
    seen = {k: 0 for k in range(10)}
    for n in range(300):
        label = int(digits.target[n])
        seen[label] += 1
        where = str(label) if seen[label] <= LABELLED_PER_CLASS else "unlabelled"
        (root / "train" / where).mkdir(parents=True, exist_ok=True)
        save_digit(root / "train" / where / f"{n:04d}.png", digits.data[n])
    for n in range(300, 400):
        (root / "test" / str(digits.target[n])).mkdir(parents=True, exist_ok=True)
        save_digit(root / "test" / str(digits.target[n]) / f"{n:04d}.png", digits.data[n])
    return root


def test_train_on_class_subfolders_then_predict_reads_the_subfolders_as_labels(class_folders, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(class_folders / "train"), "--epochs", "1", "--unlabelled-batch", "20",
                 "--device", "cpu", "--compile", "off", "--bf16", "off", "--no-report", "--quiet",
                 "--out", str(run)]) == 0
    said = capsys.readouterr().out
    assert f"{class_folders / 'train'}: read in layout 'subfolders'" in said
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["class_names"] == [str(k) for k in range(10)]
    assert config["train"]["labels"] == 10 * (LABELLED_PER_CLASS - 2)  # one per class each for val and test
    # The layout auto found is kept, so that predict reads new folders as this one was read.
    assert (config["train"]["layout"], config["train"]["unlabelled_folder"], config["train"]["labels_csv"]) == (
        "subfolders", "unlabelled", None)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run), str(class_folders / "test"), "--out", str(out)]) == 0
    assert "accuracy on the 100 images whose subfolders name a class: " in capsys.readouterr().out
    with out.open() as f:
        assert len(list(csv.DictReader(f))) == 100
    # Subfolders that are not classes (here: batches) leave the images unlabelled, and say so.
    batches = tmp_path / "batches"
    for n, image in enumerate(sorted((class_folders / "test").rglob("*.png"))[:4]):
        (batches / f"batch{n % 2}").mkdir(parents=True, exist_ok=True)
        (batches / f"batch{n % 2}" / image.name).write_bytes(image.read_bytes())
    assert main(["predict", str(run), str(batches)]) == 0
    said = capsys.readouterr().out
    assert "4 images: " in said and "accuracy" not in said
    assert "its subfolders batch0, batch1 are not classes the model knows" in said


def test_predict_reads_labels_as_the_run_was_trained_to(tmp_path):
    from ssvae.config import TrainConfig
    from ssvae.predict import new_image_labels

    for name in ("named/3_a.png", "named/b.png", "classes/3/c.png", "classes/unlabelled/d.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(tmp_path / name)
    known = [str(k) for k in range(10)]
    inputs = [tmp_path / "named", tmp_path / "classes"]
    for config, expected, sources in (
            (TrainConfig(), ["3", None, "3", None], ("names", "subfolders")),  # per folder, as auto found it
            (TrainConfig(layout="names"), ["3", None, None, None], ("names",)),
            (TrainConfig(layout="subfolders"), [None, None, "3", None], ("subfolders",)),
            (TrainConfig(labels_csv="labels.csv"), [None, None, "3", None], ("subfolders",))):
        paths, labels, found_sources = new_image_labels(inputs, config, known, log=lambda *a: None)
        assert [p.name for p in paths] == ["3_a.png", "b.png", "c.png", "d.png"]
        assert (labels, found_sources) == (expected, sources), config.layout


def test_a_config_saved_before_the_layout_options_still_loads(tmp_path):
    from ssvae.config import load_config

    payload = {"format": 1, "train": {"model": "m2", "data": "shapes", "label_pattern": r"(?P<label>\d+)_.+"},
               "model": {}}
    (tmp_path / "config.json").write_text(json.dumps(payload))
    config, _ = load_config(tmp_path / "config.json")
    assert (config.layout, config.unlabelled_folder, config.labels_csv) == ("auto", "unlabelled", None)
    assert config.folder_options().layout == "auto"


def test_a_bad_labels_csv_stops_training_with_its_message(tmp_path, capsys):
    folder = tmp_path / "shots"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "a.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.png,cat\nmissing.png,dog\n")
    assert main(["train", "--data", str(folder), "--labels-csv", str(labels), "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"--labels-csv {labels}: 1 of 2 rows do not name an image" in err and "line 3: missing.png" in err
    assert "Traceback" not in err
    assert main(["train", "--data", str(folder), "--layout", "subfolders", "--labels-csv", str(labels),
                 "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")]) == 2
    assert "only with --layout csv" in capsys.readouterr().err


def test_labels_held_out_are_said_and_the_small_test_set_is_called_small(digit_folders, tmp_path, capsys):
    """No --val or --test: a stratified share of the 50 labels goes to each, and the run says so."""
    folders, *_ = digit_folders
    run = tmp_path / "run"
    assert main(["train", "--data", str(folders["train"]), "--unlabelled-batch", "20", "--epochs", "2",
                 "--compile", "off", "--quiet", "--no-report", "--out", str(run)]) == 0
    said = capsys.readouterr().out
    assert "labelled files: 50, of which 30 train the model; validation 10 images, test 10 images" in said
    assert "--holdout 0 trains on all of them" in said
    result = json.loads((run / "result.json").read_text())
    assert result["test_images"] == 10 and result["val_images"] == 10
    assert "of 10 images; 95% interval" in said and "a small test set" in said


def test_holdout_0_trains_on_every_label_keeps_the_last_weights_and_tests_on_the_test_folder(digit_folders, tmp_path,
                                                                                          capsys):
    folders, *_ = digit_folders
    run = tmp_path / "run"
    assert main(["train", "--data", str(folders["train"]), "--test", str(folders["test"]), "--holdout", "0",
                 "--unlabelled-batch", "20", "--epochs", "3", "--compile", "off", "--quiet", "--no-report",
                 "--out", str(run)]) == 0
    said = capsys.readouterr().out
    assert "labelled files: 50, of which 50 train the model; validation 0 images, test 400 images" in said
    assert "no validation images: the last weights kept (epoch 3)" in said
    result = json.loads((run / "result.json").read_text())
    assert "val_accuracy" not in result and result["test_images"] == 400 and result["checkpoint_epoch"] == 3
    assert len(json.loads((run / "labelled_indices.json").read_text())) == 50
    # Without --test as well there is nothing to measure accuracy on, and the run says so.
    assert main(["train", "--data", str(folders["train"]), "--holdout", "0", "--unlabelled-batch", "20", "--epochs",
                 "1", "--compile", "off", "--quiet", "--no-report", "--out", str(tmp_path / "bare")]) == 0
    assert "no test images: give --test FOLDER" in capsys.readouterr().out


def test_an_impossible_holdout_is_refused(digit_folders, tmp_path, capsys):
    folders, *_ = digit_folders
    assert main(["train", "--data", str(folders["train"]), "--holdout", "0.6", "--out", str(tmp_path / "r")]) == 2
    assert "--holdout 0.6: must be at least 0 and below 0.5" in capsys.readouterr().err


def test_predict_reads_one_file_and_the_same_digit_saved_larger_in_colour_or_in_16_bits(digits_run, digit_folders,
                                                                                    tmp_path, capsys):
    _, digits, _, test = digit_folders
    n = int(test[0])
    grey = (digits.data[n].reshape(8, 8) * 255 / 16).round().astype(np.uint8)
    versions = {
        "grey.png": Image.fromarray(grey, mode="L"),
        "larger.png": Image.fromarray(grey, mode="L").resize((16, 16), Image.NEAREST),
        "colour.png": Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), mode="RGB"),
        "sixteen.png": Image.fromarray(grey.astype(np.uint16) * 257).convert("I;16"),
    }
    rows = {}
    for name, image in versions.items():
        image.save(tmp_path / name)
        out = tmp_path / f"{name}.csv"
        capsys.readouterr()
        assert main(["predict", str(digits_run), str(tmp_path / name), "--out", str(out)]) == 0, capsys.readouterr().err
        with out.open() as f:
            (rows[name],) = list(csv.DictReader(f))
    probabilities = {name: np.array([float(row[str(k)]) for k in range(10)]) for name, row in rows.items()}
    for name in versions:
        # The same pixels once read: the same prediction, and the same probabilities to rounding.
        assert rows[name]["predicted"] == rows["grey.png"]["predicted"], name
        np.testing.assert_allclose(probabilities[name], probabilities["grey.png"], atol=0.02, err_msg=name)
