"""Checkpoints: a kill while writing leaves the previous one readable; unsafe files are refused."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ssvae.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from ssvae.errors import SsvaeError


def test_a_checkpoint_round_trips_tensors_and_plain_data(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "history": [{"loss": 1.5}],
             "python_rng": (3, (1, 2, 3), None)}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["format"] == CHECKPOINT_FORMAT and back["epoch"] == 3 and back["history"] == [{"loss": 1.5}]
    assert torch.equal(back["model"]["w"], state["model"]["w"])


def test_a_kill_in_the_middle_of_writing_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "steps": 1})
    # A process that starts writing the next checkpoint and is SIGKILLed half-way through the bytes.
    script = textwrap.dedent(f"""
        import os, signal, torch
        from ssvae import checkpoint

        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                return False
            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

        os.fdopen = lambda fd, mode: HalfWriter(real_fdopen(fd, mode))
        checkpoint.save_checkpoint({str(path)!r}, {{"model": {{"w": torch.zeros(1000)}}, "steps": 2}})
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert process.returncode == -9, process.stderr.decode()
    # The torn bytes went to a temporary file that was never renamed over the checkpoint.
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    state = load_checkpoint(path)
    assert state["steps"] == 1 and torch.equal(state["model"]["w"], torch.ones(1000))


def test_a_truncated_checkpoint_is_refused_with_its_name(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(SsvaeError, match="best.pt.*truncated"):
        load_checkpoint(path)


def test_a_checkpoint_of_another_format_is_refused(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": CHECKPOINT_FORMAT + 1, "model": {}}, path)
    with pytest.raises(SsvaeError, match=f"format {CHECKPOINT_FORMAT + 1}"):
        load_checkpoint(path)
    torch.save({"model": {}}, path)
    with pytest.raises(SsvaeError, match="no format"):
        load_checkpoint(path)


class Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_with_a_payload_is_refused_and_the_payload_never_runs(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "model": Payload(marker)}, run / "best.pt")
    assert not marker.exists()
    with pytest.raises(SsvaeError, match="refused"):
        load_checkpoint(run / "best.pt")
    assert not marker.exists()

    # Through the command line too: one line, no traceback, no payload.
    from ssvae.cli import main

    (run / "config.json").write_text('{"format": 1, "train": {"model": "m2"}, "model": {}}')
    assert main(["evaluate", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "best.pt" in err and "Traceback" not in err
    assert not marker.exists()


def test_written_files_get_the_usual_permissions(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o666 & ~umask
