"""Pictures and the report of a short M2 run on a slice of real MNIST, from the command line and
from Python; the report rendered in headless Chromium."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from ssvae import pictures
from ssvae.cli import main
from ssvae.evaluation import class_probabilities

from browser import check_page, find_chromium

# MNIST cells are enlarged 2x to 56 pixels and set 2 pixels apart: a grid of R rows and C columns
# is (R * 58 + 2) pixels high and (C * 58 + 2) wide.
CELL, GAP = 56, 2


def grid_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) as Pillow gives them."""
    return columns * (CELL + GAP) + GAP, rows * (CELL + GAP) + GAP


def read_png(path):
    with Image.open(path) as image:
        return image.size, np.asarray(image.convert("RGB"), dtype=np.float64)


def assert_not_blank(pixels):
    # A blank or single-colour picture has no variance; a drawn one has a lot (0..255 scale).
    assert pixels.std() > 20, f"picture looks blank (pixel std {pixels.std():.1f})"


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory, mnist):
    run = tmp_path_factory.mktemp("runs") / "m2"
    assert main(["train", "--model", "m2", "--labels", "100", "--epochs", "3", "--max-unlabelled", "5000",
                 "--unlabelled-batch", "100", "--labelled-batch", "10", "--compile", "off", "--quiet",
                 "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def opened(m2_run, mnist):
    return pictures.open_run(m2_run, "cpu", data=mnist)


def test_analogy_writes_a_grid_with_the_classifiers_class_framed(m2_run, opened, mnist, capsys):
    indices = [0, 1, 2, 3, 4, 5]
    assert main(["analogy", str(m2_run), "--index", *map(str, indices)]) == 0
    path = m2_run / "analogy.png"
    assert f"wrote {path}" in capsys.readouterr().out
    size, pixels = read_png(path)
    assert size == grid_size(len(indices), 1 + 10)
    assert_not_blank(pixels)
    predicted = class_probabilities(opened.model, mnist.test_images[indices], opened.device).argmax(-1).numpy()
    for row, k in enumerate(predicted):
        # The frame fills the gaps left and right of cell (row, 1 + k): the gaps left of columns
        # 1 + k and 2 + k, at the row's middle, carry its colour; every other gap is grey.
        middle = GAP + row * (CELL + GAP) + CELL // 2
        framed = {column for column in range(1, 12)
                  if np.allclose(pixels[middle, column * (CELL + GAP)] / 255, pictures.HIGHLIGHT, atol=0.01)}
        assert framed == {1 + k, 2 + k}, (row, k, framed)


def test_analogy_rows_keep_the_source_at_its_class_column(opened, mnist):
    images = mnist.test_images[:40]
    result = pictures.analogies(opened, images)
    assert result.grid.shape == (40, 10, 28, 28) and result.originals.shape == (40, 28, 28)
    predicted = class_probabilities(opened.model, images, opened.device).argmax(-1).numpy()
    np.testing.assert_array_equal(result.predicted, predicted)
    # Drawn at the class it was inferred with, the style gives back the image's reconstruction ...
    at_own_class = result.grid[np.arange(40), predicted]
    np.testing.assert_allclose(at_own_class, pictures.reconstructions(opened, images), atol=1e-5)
    # ... and every column reads as its own class to the classifier far more often than chance (0.1;
    # this short run gives about 0.54; the 10-minute M2 run 0.97 and the 25-minute M1+M2 run 1.0).
    cells = (result.grid.reshape(400, 784) * 255).round().astype(np.uint8)
    read_as = class_probabilities(opened.model, cells, opened.device).argmax(-1).numpy().reshape(40, 10)
    agreement = (read_as == np.arange(10)).mean()
    assert agreement > 0.3, f"only {agreement:.2f} of the analogy cells read as their column's class"


def test_sample_and_interpolate_write_grids(m2_run, capsys):
    assert main(["sample", str(m2_run), "--n", "7", "--seed", "3"]) == 0
    assert main(["sample", str(m2_run), "--interpolate", "0", "1", "--steps", "6"]) == 0
    out = capsys.readouterr().out
    for name, rows, columns in (("samples.png", 10, 7), ("interpolation.png", 10, 6 + 2)):
        assert f"wrote {m2_run / name}" in out
        size, pixels = read_png(m2_run / name)
        assert size == grid_size(rows, columns)
        assert_not_blank(pixels)


def test_samples_differ_by_class_along_each_column(opened):
    grid = pictures.class_samples(opened, per_class=5, seed=0)
    assert grid.shape == (10, 5, 28, 28)
    # Same z down a column, different classes: the rows must not all be the same picture.
    assert np.abs(grid[1:] - grid[:1]).mean() > 0.02


def test_plot_writes_latent_reconstructions_curves_and_confusion(m2_run, tmp_path, capsys):
    assert main(["plot", str(m2_run), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("latent.png", "reconstructions.png", "curves.png", "confusion.png"):
        assert f"wrote {tmp_path / name}" in out
        size, pixels = read_png(tmp_path / name)
        assert min(size) >= 100
        assert_not_blank(pixels)
    assert read_png(tmp_path / "reconstructions.png")[0] == grid_size(2, 10)
    assert read_png(tmp_path / "latent.png")[0] == (640, 560)  # the figure's 6.4 x 5.6 inches at 100 dpi


def test_python_calls_return_arrays_and_figures(opened, mnist):
    points, axes = pictures.latent_embedding(opened, mnist.test_images[:300])
    assert points.shape == (300, 2) and axes[0].startswith("PCA 1")
    matrix = pictures.confusion_matrix(opened)
    assert matrix.shape == (10, 10) and matrix.sum() == len(mnist.test_labels)
    figure = pictures.confusion_figure(matrix, opened.class_names, "test")
    assert figure.axes and hasattr(figure, "savefig")


def test_an_m1_run_has_no_analogies(tmp_path, capsys, mnist):
    run = tmp_path / "m1"
    assert main(["train", "--model", "m1", "--epochs", "1", "--max-unlabelled", "2000", "--compile", "off",
                 "--quiet", "--no-report", "--out", str(run)]) == 0
    assert main(["analogy", str(run)]) == 2
    assert "an M1 run has no classes" in capsys.readouterr().err
    assert main(["sample", str(run), "--n", "4"]) == 0  # unconditional samples: one row
    assert read_png(run / "samples.png")[0] == grid_size(1, 4)
    capsys.readouterr()
    image = tmp_path / "digit.png"
    Image.fromarray(mnist.test_images[0].reshape(28, 28)).save(image)
    assert main(["predict", str(run), str(image)]) == 2
    err = capsys.readouterr().err
    assert "an M1 run has no classifier" in err and "adgm or sdgm" in err and str(run) in err


def test_picture_commands_name_a_missing_run_and_bad_indices(m2_run, tmp_path, capsys):
    assert main(["analogy", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["analogy", str(m2_run), "--index", "10000"]) == 2
    assert "outside the test split" in capsys.readouterr().err


FIGURES = ("analogy", "samples", "reconstructions", "latent", "curves", "confusion")


def test_train_ends_with_a_report_holding_every_figure(m2_run):
    page = (m2_run / "report.html").read_text()
    for name in FIGURES:
        match = re.search(rf'<figure id="{name}"><img[^>]* src="data:image/png;base64,([^"]+)"', page)
        assert match, f"report lacks the {name} figure"
        with Image.open(io.BytesIO(base64.b64decode(match.group(1)))) as image:
            assert min(image.size) >= 50
    assert "test accuracy" in page and "labelled" in page and "minutes of training" in page
    assert "<script" not in page


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None, reason="no Chromium (Debian: apt-get install chromium)")
def test_report_renders_in_chromium_without_errors(m2_run, tmp_path, capsys):
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(m2_run), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = check_page(out)
    assert len(page.images) == len(FIGURES)
    assert all(image["natural_width"] > 0 and image["complete"] for image in page.images), page.images
    assert page.errors == []
