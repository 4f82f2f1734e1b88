"""M1 and M1+M2 from the command line, on a small slice of real MNIST."""

import json
import statistics

import pytest

from ssvae.cli import main

SMALL = ["--epochs", "1", "--max-unlabelled", "2000", "--compile", "off", "--quiet"]
# The report is looked at only where M1+M2 trains both stages; elsewhere it would only cost time.
NO_REPORT = [*SMALL, "--no-report"]


@pytest.fixture(scope="module")
def m1_run(tmp_path_factory, mnist):
    run = tmp_path_factory.mktemp("runs") / "m1"
    assert main(["train", "--model", "m1", "--unlabelled-batch", "100", *NO_REPORT, "--out", str(run)]) == 0
    return run


def test_m1_trains_without_labels_and_reports_its_bound(m1_run, capsys):
    result = json.loads((m1_run / "result.json").read_text())
    # a negative number of nats, far above what an untrained decoder scores (about -550)
    assert -400 < result["val_elbo"] < 0 and -400 < result["test_elbo"] < 0
    assert json.loads((m1_run / "labelled_indices.json").read_text()) == []
    capsys.readouterr()
    assert main(["evaluate", str(m1_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_elbo"] == pytest.approx(result["val_elbo"])


def test_m1m2_trains_both_stages_in_one_run_directory(tmp_path, mnist):
    run = tmp_path / "m1m2"
    assert main(["train", "--model", "m1m2", "--labelled-batch", "10", "--active-threshold", "0.01",
                 "--kl-warmup", "5", *SMALL, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["model"] == "m1m2"
    assert config["model"]["m1"]["kl_warmup_steps"] == 5  # an M1 option reaches the first stage
    assert (config["model"]["m2"]["latent_dim"], config["model"]["m2"]["alpha"]) == (10, 1.0)  # stacked defaults
    active = config["model"]["active_dims"]
    assert active and config["model"]["m2"]["input_dim"] == len(active)
    assert json.loads((run / "m1" / "config.json").read_text())["train"]["model"] == "m1"
    assert (run / "m1" / "best.pt").is_file() and (run / "best.pt").is_file()
    assert 0 <= json.loads((run / "result.json").read_text())["test_accuracy"] <= 1
    # The report draws through both stages: analogies and samples decode M2's z1 with M1.
    page = (run / "report.html").read_text()
    assert all(f'<figure id="{name}">' in page for name in ("analogy", "samples", "latent", "curves", "confusion"))


def test_m1m2_reuses_a_trained_m1(m1_run, tmp_path, capsys):
    run = tmp_path / "reuse"
    assert main(["train", "--model", "m1m2", "--m1", str(m1_run), "--labelled-batch", "10",
                 "--active-threshold", "0.01", *NO_REPORT, "--out", str(run)]) == 0
    assert not (run / "m1").exists()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    saved = json.loads((run / "result.json").read_text())
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == pytest.approx(saved["test_accuracy"])


@pytest.mark.parametrize("option", [["--kl-warmup", "100"], ["--hidden-layers", "2"], ["--activation", "relu"]])
def test_options_m2_does_not_have_are_refused(option, tmp_path, capsys, mnist):
    assert main(["train", "--model", "m2", *option, *SMALL, "--out", str(tmp_path / "x")]) == 2
    assert option[0] in capsys.readouterr().err


def test_reusing_a_run_that_is_not_m1_is_refused(tmp_path, capsys, mnist):
    other = tmp_path / "m2"
    assert main(["train", "--model", "m2", "--labelled-batch", "10", *NO_REPORT, "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["train", "--model", "m1m2", "--m1", str(other), *SMALL, "--out", str(tmp_path / "x")]) == 2
    assert "not m1" in capsys.readouterr().err


def test_baselines_use_the_same_labels_and_report_validation_and_test(m1_run, capsys, mnist):
    from sklearn.linear_model import LogisticRegression

    from ssvae.data.labels import balanced_label_split

    capsys.readouterr()
    assert main(["baseline", "--labels", "100", "--m1", str(m1_run), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in figures["results"]]
    assert names == ["pixels + logistic regression", "pixels + SVM", "M1 + SVM", "M1 + label spreading"]
    linear, pixels = figures["results"][:2]
    # An RBF SVM on 100 labelled pixel images: far above chance, far below the generative models.
    assert 0.6 < pixels["test_accuracy"] < 0.9 and 0.6 < pixels["val_accuracy"] < 0.9
    # The same 100 labels a run with seed 0 draws: the linear classifier refitted on them, with the
    # setting chosen on validation, gives the same test figure.
    labelled = balanced_label_split(mnist.train_labels, 100, 10, 0)
    c = float(linear["setting"].removeprefix("C="))
    refit = LogisticRegression(C=c, max_iter=2000).fit(mnist.train_images[labelled] / 255.0, mnist.train_labels[labelled])
    assert refit.score(mnist.test_images / 255.0, mnist.test_labels) == pytest.approx(linear["test_accuracy"], abs=1e-4)


def test_sweep_trains_the_grid_writes_its_table_and_reuses_finished_runs(tmp_path, capsys, mnist):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", "m2", "--labels", "20", "50", "--seeds", "2", "--labelled-batch", "10",
            *NO_REPORT, "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "results.json").read_text())
    assert [(r["labels"], r["seed"]) for r in summary["runs"]] == [(20, 0), (20, 1), (50, 0), (50, 1)]
    cells = {c["labels"]: c for c in summary["cells"]}
    # Each cell summarises its own runs' test figures, as each run recorded them.
    for labels, cell in cells.items():
        tests = [json.loads((out / f"m2-{labels}labels-seed{seed}" / "result.json").read_text())["test_accuracy"]
                 for seed in (0, 1)]
        assert cell["runs"] == 2
        assert cell["test_accuracy_mean"] == pytest.approx(statistics.mean(tests))
        assert cell["test_accuracy_std"] == pytest.approx(statistics.stdev(tests))
    assert [r["test_accuracy"] for r in summary["runs"]][:2] != [r["test_accuracy"] for r in summary["runs"]][2:]
    table = (out / "results.md").read_text()
    for labels in (20, 50):
        assert f"| {labels} | 2 | {cells[labels]['test_accuracy_mean']:.4f} ± " in table
    # Running it again trains nothing: every run is read back.
    mtime = (out / "m2-20labels-seed0" / "best.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert (out / "m2-20labels-seed0" / "best.pt").stat().st_mtime_ns == mtime
    assert "reused" in capsys.readouterr().out
