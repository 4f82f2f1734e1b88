"""Nothing lost: a run killed at any moment and resumed ends exactly where an unbroken run ends."""

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ssvae.checkpoint import load_checkpoint

# Metrics that measure the clock, not the training.
TIMING = {"minutes", "images_per_second"}


def train_command(run, *extra):
    return [sys.executable, "-m", "ssvae", "train", "--epochs", "3", "--max-unlabelled", "1200",
            "--unlabelled-batch", "40", "--labelled-batch", "20", "--compile", "off", "--threads", "1", "--device", "cpu",
            "--checkpoint-minutes", "0.003", "--quiet", "--no-report", "--out", str(run), *extra]


def learned(run):
    """Everything the run learned and logged, minus the clock."""
    last = load_checkpoint(run / "last.pt")
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return last, metrics, load_checkpoint(run / "best.pt")


def assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}/{i}")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:  # Python's random state, the batch position, the optimiser's learning rate...
        assert type(a) is type(b) and a == b, where


def test_the_comparison_sees_what_is_not_a_tensor():
    with pytest.raises(AssertionError):
        assert_same_tensors({"lr": 1e-3, "state": (3, [1, 2])}, {"lr": 1e-3, "state": (3, [1, 3])})
    with pytest.raises(AssertionError):
        assert_same_tensors({"lr": 1e-3}, {"lr": 2e-3})
    assert_same_tensors({"lr": 1e-3, "w": torch.ones(2)}, {"lr": 1e-3, "w": torch.ones(2)})


@pytest.fixture(scope="module")
def unbroken_run(tmp_path_factory, mnist):
    run = tmp_path_factory.mktemp("unbroken") / "run"
    subprocess.run(train_command(run), check=True, capture_output=True)
    return run


def test_killed_and_resumed_run_is_bit_identical_to_an_unbroken_one(unbroken_run, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(7)
    command, kills, resumed_from = train_command(run), 0, []
    while True:
        marker = run / "checkpoints.json"
        before = marker.stat().st_mtime_ns if marker.exists() else None
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if kills < 3:
            # Once this process has trained far enough to write a checkpoint, kill it at a random moment
            # (on a fast machine the run may finish first: then fewer kills).
            while process.poll() is None and (not marker.exists() or marker.stat().st_mtime_ns == before):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.6))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
                resumed_from.append(load_checkpoint(run / "last.pt")["steps"])
        out, err = process.communicate()
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, err.decode()
        command = [sys.executable, "-m", "ssvae", "train", "--resume", str(run), "--quiet"]
    assert kills >= 1
    # every kill came after some progress, and the resumes started from different places
    assert 0 < resumed_from[0] and resumed_from == sorted(set(resumed_from)) and resumed_from[-1] < 90, resumed_from
    assert b"test accuracy" in out

    last, metrics, best = learned(run)
    want_last, want_metrics, want_best = learned(unbroken_run)
    assert metrics == want_metrics and len(metrics) == 3
    for part in ("model", "averaged_model", "optimizer", "rng", "batches"):
        assert_same_tensors(last[part], want_last[part], part)
    assert_same_tensors(best["model"], want_best["model"], "best")
    assert last["steps"] == want_last["steps"] == 3 * (1200 // 40)


def test_sigterm_checkpoints_between_steps_and_the_run_goes_on_exactly(unbroken_run, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(train_command(run, "--checkpoint-minutes", "10"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not (run / "metrics.jsonl").exists() and process.poll() is None:
        time.sleep(0.02)  # the first epoch is over: stop in the middle of the second
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate()
    assert process.returncode == 130, err.decode()
    assert f"--resume {run}" in err.decode()
    stopped_at = load_checkpoint(run / "last.pt")
    assert stopped_at["step_in_epoch"] > 0  # saved where it stood, not at the last epoch end

    done = subprocess.run([sys.executable, "-m", "ssvae", "train", "--resume", str(run), "--quiet"],
                          capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    last, metrics, _ = learned(run)
    want_last, want_metrics, _ = learned(unbroken_run)
    assert metrics == want_metrics
    assert_same_tensors(last["model"], want_last["model"], "model")


def test_resume_refuses_options_that_would_change_the_run(unbroken_run, capsys):
    from ssvae.cli import main

    assert main(["train", "--resume", str(unbroken_run), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and "\n" not in err.strip()


def test_resume_of_a_missing_run_says_so(tmp_path, capsys):
    from ssvae.cli import main

    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_a_resumed_run_keeps_the_model_it_began_with_across_changed_defaults(tmp_path):
    from ssvae.config import TrainConfig, save_config
    from ssvae.experiment import resumed_model_config
    from ssvae.models.auxiliary import AuxiliaryConfig

    began = AuxiliaryConfig(skip=True, activation="softplus", hidden_dims=(300,))
    save_config(tmp_path / "config.json", TrainConfig(model="sdgm"), began)
    assert resumed_model_config(tmp_path, "sdgm") == began
    # A run written before the KL weight, the class balance (and its schedule), the adversarial
    # term and the top classes were options was trained with the paper's objective, every class
    # summed, and is resumed with it, not with today's defaults.
    payload = json.loads((tmp_path / "config.json").read_text())
    for name in ("kl_scale", "class_balance", "class_balance_schedule", "adversarial_weight", "adversarial_radius",
                 "top_classes"):
        del payload["model"][name]
    (tmp_path / "config.json").write_text(json.dumps(payload))
    resumed = resumed_model_config(tmp_path, "sdgm")
    assert (resumed.kl_scale, resumed.class_balance, resumed.adversarial_weight) == (1.0, 0.0, 0.0)
    assert resumed.top_classes is None
    assert resumed.class_balance_schedule == "constant"
    assert (resumed.activation, resumed.hidden_dims) == ("softplus", (300,))


@pytest.mark.parametrize("model", ["m1m2", "sdgm"])
def test_other_families_stopped_mid_run_and_resumed_end_as_an_unbroken_run(model, tmp_path, mnist):
    """M1+M2 is stopped in its first stage, M1: the resumed run trains the rest of M1, then M2."""
    extra = ["--model", model, "--labels", "100", "--labelled-batch", "20", "--epochs", "2"]
    if model == "sdgm":
        extra += ["--generative-weight", "0"]  # the fused classification of 10,000 test images is slow
    unbroken = tmp_path / "unbroken"
    subprocess.run(train_command(unbroken, *extra), check=True, capture_output=True)
    run = tmp_path / "run"
    first_checkpoint = run / ("m1" if model == "m1m2" else "") / "checkpoints.json"
    process = subprocess.Popen(train_command(run, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while process.poll() is None and not first_checkpoint.exists():
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate()
    assert process.returncode == 130, err.decode()[-2000:]  # stopped, not finished
    if model == "m1m2":
        assert not (run / "m1" / "result.json").exists()  # in the first stage
    done = subprocess.run([sys.executable, "-m", "ssvae", "train", "--resume", str(run), "--quiet"],
                          capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    stages = [run / "m1", run] if model == "m1m2" else [run]
    for stage in stages:
        last, metrics, best = learned(stage)
        want_last, want_metrics, want_best = learned(unbroken / stage.relative_to(run))
        assert metrics == want_metrics, stage
        assert_same_tensors(last["model"], want_last["model"], f"{stage.name}/model")
        assert_same_tensors(best["model"], want_best["model"], f"{stage.name}/best")


def test_an_m2_run_begun_before_the_classifier_terms_resumes_without_them(tmp_path):
    from ssvae.config import TrainConfig, save_config
    from ssvae.experiment import resumed_model_config
    from ssvae.models.m2 import M2Config

    save_config(tmp_path / "config.json", TrainConfig(model="m2"), M2Config(class_balance=50.0, adversarial_weight=1.0))
    payload = json.loads((tmp_path / "config.json").read_text())
    for name in ("class_balance", "class_balance_schedule", "adversarial_weight", "adversarial_radius"):
        del payload["model"][name]
    (tmp_path / "config.json").write_text(json.dumps(payload))
    resumed = resumed_model_config(tmp_path, "m2")
    assert (resumed.class_balance, resumed.adversarial_weight) == (0.0, 0.0)
