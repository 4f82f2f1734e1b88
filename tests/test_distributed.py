"""One model trained by two processes under torchrun (gloo on CPU) against one process with the
same global batch: the same weights and figures, and files written by rank 0 alone. M2, and SDGM
with its defaults, whose class-balance frequencies and adversarial probes must also follow the
whole batch."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ssvae.checkpoint import load_checkpoint

TRAIN = ["--labels", "100", "--epochs", "2", "--max-unlabelled", "1000",
         "--labelled-batch", "10", "--unlabelled-batch", "100", "--compile", "off", "--bf16", "off",
         "--threads", "1", "--device", "cpu", "--quiet", "--no-report", "--out", "run"]

# Each process starts in its own folder (rank0/, rank1/) and trains into the relative --out "run",
# so any file a process other than rank 0 wrote would appear under its own folder.
LAUNCH = textwrap.dedent("""
    import os, sys
    os.chdir(f"rank{os.environ['RANK']}")
    from ssvae.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module", params=["m2", "sdgm"])
def runs(request, tmp_path_factory, mnist):
    model = request.param
    train = ["train", "--model", model, *TRAIN]
    root = tmp_path_factory.mktemp(f"ddp-{model}")
    for rank in (0, 1):
        (root / f"rank{rank}").mkdir()
    (root / "launch.py").write_text(LAUNCH)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    both = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--standalone", str(root / "launch.py"), *train],
                          cwd=root, capture_output=True, text=True, timeout=120, env=env)
    assert both.returncode == 0, both.stderr[-3000:]
    (root / "single").mkdir()
    one = subprocess.run([sys.executable, "-m", "ssvae", *train], cwd=root / "single", capture_output=True,
                         text=True, timeout=120, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    return root, both, model


def test_two_processes_learn_what_one_process_learns_from_the_same_global_batches(runs):
    root, _, _ = runs
    together = load_checkpoint(root / "rank0" / "run" / "last.pt")
    alone = load_checkpoint(root / "single" / "run" / "last.pt")
    assert together["steps"] == alone["steps"] == 20
    for name, weights in alone["model"].items():
        # Float tolerance after 20 Adam steps: Adam divides by the gradient's own scale, so for
        # weights whose gradient is all but zero, rounding in the averaged gradient moves them by up
        # to a fraction of the learning rate (4e-3); a wrong share of the batch moves every weight.
        difference = together["model"][name] - weights
        assert difference.abs().max() < 1e-3, name
        assert difference.norm() <= 1e-3 * weights.norm(), name
    metrics = [[json.loads(line) for line in (root / where / "run" / "metrics.jsonl").read_text().splitlines()]
               for where in ("rank0", "single")]
    for epoch_together, epoch_alone in zip(*metrics):
        assert epoch_together["val_accuracy"] == epoch_alone["val_accuracy"]
        assert epoch_together["loss"] == pytest.approx(epoch_alone["loss"], rel=1e-4)  # every process's share


def test_only_rank_0_writes_and_speaks(runs):
    root, both, model = runs
    assert sorted(p.name for p in (root / "rank0" / "run").iterdir()) == sorted(
        p.name for p in (root / "single" / "run").iterdir())
    assert list((root / "rank1").iterdir()) == []
    assert both.stdout.count("test accuracy") == 1 and both.stdout.count(f"training {model}") == 1
    assert "2 processes (DDP)" in both.stdout


def test_batches_that_do_not_split_over_the_processes_are_refused():
    from ssvae.data.batches import SemiSupervisedBatches
    from ssvae.errors import SsvaeError

    with pytest.raises(SsvaeError, match="--labelled-batch 1 does not split evenly over 2 processes"):
        SemiSupervisedBatches(torch.zeros(10, 4, dtype=torch.uint8), [0, 1] + [-1] * 8, 1, 4, False,
                              torch.device("cpu"), 0, shard=(0, 2))


def test_each_process_keeps_its_own_half_of_every_global_batch():
    """Two shards of the same stream are disjoint halves of the one-process batch, noise included:
    the processes split the work rather than each doing all of it."""
    from ssvae.data.batches import SemiSupervisedBatches

    images = torch.arange(40 * 4, dtype=torch.uint8).reshape(40, 4)
    labels = [0, 1, 2, 3] * 2 + [-1] * 32

    def stream(shard):
        return list(SemiSupervisedBatches(images, labels, 4, 8, False, torch.device("cpu"), 3, noise_width=5,
                                          shard=shard))

    whole, first, second = stream((0, 1)), stream((0, 2)), stream((1, 2))
    assert len(whole) == len(first) == len(second) == 4
    for batch, a, b in zip(whole, first, second):
        assert len(a.unlabelled_x) == len(b.unlabelled_x) == 4 and len(a.labelled_x) == len(b.labelled_x) == 2
        for name in ("labelled_x", "labelled_y", "unlabelled_x", "labelled_noise", "unlabelled_noise"):
            torch.testing.assert_close(torch.cat([getattr(a, name), getattr(b, name)]), getattr(batch, name))
