"""One self-contained HTML page per run: what was trained, on what, how well, how fast, and every
picture of :mod:`ssvae.pictures`, embedded as PNG data so the file can be mailed or archived alone.

The page has no script and loads nothing from the network: it opens the same in any browser, offline.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path

import numpy as np

from . import pictures
from .checkpoint import atomic_write_text
from .intervals import describe_accuracy


def _table(rows: list[tuple[str, object]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure id="{html.escape(Path(path).stem)}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def _number(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _result_rows(result: dict) -> list[tuple[str, object]]:
    names = {
        "val_accuracy": "validation accuracy (best checkpoint)", "test_accuracy": "test accuracy (same weights)",
        "val_elbo": "validation ELBO, nats (best checkpoint)", "test_elbo": "test ELBO, nats (same weights)",
        "test_bound_nats": "test negative bound, nats per image (lower is better)",
        "test_bits_per_dim": "test negative bound, bits per dimension",
        "checkpoint_epoch": "best checkpoint's epoch", "active_dims": "active z1 dimensions M2 sees",
    }
    return [(label, describe_accuracy(result, key.removesuffix("_accuracy")) if key.endswith("_accuracy")
             else _number(result[key])) for key, label in names.items() if key in result]


def _timing_rows(result: dict, histories: dict[str, list[dict]]) -> list[tuple[str, object]]:
    rows = []
    for stage, epochs in histories.items():
        if not epochs:
            continue
        last = epochs[-1]
        speeds = [e["images_per_second"] for e in epochs if "images_per_second" in e]
        rows.append((f"{stage}: epochs, steps", f"{last['epoch']}, {last['steps']}"))
        rows.append((f"{stage}: minutes of training", f"{last['minutes']:.2f}"))
        if speeds:
            rows.append((f"{stage}: unlabelled images per second (median over epochs)", f"{np.median(speeds):,.0f}"))
        if last.get("skipped_steps"):
            rows.append((f"{stage}: non-finite steps skipped", last["skipped_steps"]))
    if "minutes" in result:
        rows.append(("total minutes", f"{result['minutes']:.2f}"))
    return rows


def _data_rows(run: pictures.Run) -> tuple[list[tuple[str, object]], str]:
    """Sizes of the splits, and a table of the labelled training images per class."""
    data, names = run.data, run.class_names
    labelled_path = run.run_dir / "labelled_indices.json"
    labelled = np.array(json.loads(labelled_path.read_text()), dtype=np.int64) if labelled_path.is_file() else []
    shape = "x".join(str(s) for s in run.image_shape)
    rows = [
        ("data", run.config.data), ("image shape", shape), ("classes", len(names)),
        ("training images", f"{len(data.train_images):,}"), ("of them labelled", f"{len(labelled):,}"),
        ("validation images (model selection)", f"{len(data.val_images):,}"),
        ("test images (reported only)", f"{len(data.test_images):,}"),
    ]
    if len(labelled) == 0:
        return rows, ""
    counts = np.bincount(data.train_labels[labelled], minlength=len(names))
    header = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    values = "".join(f"<td>{c}</td>" for c in counts)
    return rows, f"<table class='wide'><tr><th>class</th>{header}</tr><tr><th>labels</th>{values}</tr></table>"


MODEL_NAMES = {"m1": "M1", "m2": "M2", "m1m2": "M1+M2", "adgm": "ADGM", "sdgm": "SDGM"}

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { padding: 2px 10px; text-align: left; }
th { font-weight: 600; color: #444; } tr:nth-child(even) { background: #f6f6f6; }
table.wide td, table.wide th { text-align: center; }
figure { margin: 1.5em 0; } img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { color: #555; font-size: 0.9em; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def build_report(run: pictures.Run, folder: Path, seed: int = 0) -> tuple[str, list[Path]]:
    """The report's HTML, drawing its pictures into ``folder``; returns (html, the pictures)."""
    config = run.config
    result_path = run.run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    histories = run.histories()
    figures: list[tuple[Path, str]] = []
    if run.has_classes:
        figures.append((pictures.draw_analogy(run, folder / "analogy.png", seed=seed),
                        "Analogies: each row is a test image (left) and its style, inferred with the class the "
                        "classifier gives it (framed), drawn as every class."))
    figures.append((pictures.draw_samples(run, folder / "samples.png", seed=seed),
                    "Samples with z from the prior" + (": one row per class, the same z in every column."
                                                      if run.has_classes else ".")))
    figures.append((pictures.draw_reconstructions(run, folder / "reconstructions.png", seed=seed),
                    "Test images (top) and their reconstructions (bottom)."))
    figures.append((pictures.draw_latent(run, folder / "latent.png", seed=seed),
                    f"The latent space ({run.model.latent_name}) of test images, coloured by true class."))
    figures.append((pictures.draw_curves(run, folder / "curves.png"),
                    "Validation figure and training loss terms per epoch, against epochs and minutes."))
    if run.has_classes:
        figures.append((pictures.draw_confusion(run, folder / "confusion.png"),
                        "Confusion matrix of the best checkpoint on the test set."))
    data_rows, label_table = _data_rows(run)
    title = f"{MODEL_NAMES.get(config.model, config.model)} on {Path(config.data).name or config.data}" + (
        f" with {config.labels} labels" if config.model != "m1" else "") + f", seed {config.seed}"
    config_text = (run.run_dir / "config.json").read_text()
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Run directory: <code>{html.escape(str(run.run_dir.resolve()))}</code></p>",
        "<h2>Results</h2>", _table(_result_rows(result)) if result else "<p>The run has not finished.</p>",
        "<h2>Data and label split</h2>", _table(data_rows), label_table,
        "<h2>Timings</h2>", _table(_timing_rows(result, histories)),
        "<h2>Pictures</h2>", *(_figure(path, caption) for path, caption in figures),
        "<h2>Configuration</h2>", f"<pre>{html.escape(config_text)}</pre>",
    ]
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return page, [path for path, _ in figures]


def write_report(run_dir, out: Path | None = None, device: str = "auto", data=None, seed: int = 0,
                 keep_pictures: bool = False) -> Path:
    """Write ``report.html`` (into the run directory unless ``out`` names a file or folder).

    The pictures are drawn into a temporary folder and only embedded, unless ``keep_pictures``, when
    they are kept beside the report as PNG files too."""
    run = pictures.open_run(run_dir, device, data)
    path = Path(out) if out is not None else run.run_dir / "report.html"
    if path.suffix.lower() != ".html":
        path = path / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_pictures:
        page, _ = build_report(run, path.parent, seed)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            page, _ = build_report(run, Path(scratch), seed)
    atomic_write_text(path, page)
    return path
