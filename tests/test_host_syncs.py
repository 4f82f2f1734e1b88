"""The training loop never makes a GPU wait for the host between the loop's own checks.

On a GPU the host queues work far ahead of the device; one read of a value back to the host (an
``.item()``, a ``bool()`` of a tensor, a boolean mask, a ``.cpu()``) stalls the queue until the
device has caught up, and costs more than the step's small kernels. The loop looks at the device
only every few steps (the divergence check, the progress bar). Everything in between, drawing the
batch, the schedules, forward, backward, Adam, the weight average and the running sums, must queue
work and nothing else.

These tests hold every model family to that on CPU: they record, while the trainer draws batches
and takes steps, every call that would read the device back on a GPU, both at the Python level
(tensor methods that return host values) and at the level of the operators (those whose output
shape, or whose result, the host must wait for).
"""

from itertools import islice

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ssvae.data.batches import SemiSupervisedBatches
from ssvae.models.auxiliary import AuxiliaryConfig, AuxiliaryDGM
from ssvae.models.m1 import M1, M1Config
from ssvae.models.m1m2 import M1M2, M1M2Config
from ssvae.models.m2 import M2, M2Config
from ssvae.trainer import Trainer, TrainerSettings

aten = torch.ops.aten

# Tensor methods and functions that hand the host a value, or copy host data to the device
# (a blocking copy from pageable memory).
READS_BACK = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
    torch.tensor, torch.as_tensor, torch.from_numpy,
}
# Operators whose output size depends on the data, or that return a host value.
WAITS_FOR_DEVICE = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
    aten.equal.default, aten.is_nonzero.default, aten._unique2.default, aten.unique_dim.default,
    aten.unique_consecutive.default, aten.repeat_interleave.Tensor,
}
# Indexing with a boolean mask runs nonzero inside the kernel, below what the dispatch mode sees.
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class Records:
    """A mode that appends what it catches to the list ``found``."""

    def __init__(self, found: list):
        super().__init__()
        self.found = found


class ReadsBack(Records, TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS_BACK:
            self.found.append(getattr(func, "__qualname__", str(func)))
        return func(*args, **(kwargs or {}))


class WaitsForDevice(Records, TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in WAITS_FOR_DEVICE:
            self.found.append(str(func))
        elif func in INDEXING:
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
                self.found.append(f"{func} with a boolean mask")
        return func(*args, **(kwargs or {}))


D, K = 16, 4


def m1():
    return M1(M1Config(input_dim=D, latent_dim=3, hidden_dims=(8,), num_classes=K, kl_warmup_steps=5))


def m2():
    return M2(M2Config(input_dim=D, num_classes=K, latent_dim=3, hidden_dim=8, classifier_hidden_dim=6))


def m1m2():
    return M1M2(M1M2Config(m1=M1Config(input_dim=D, latent_dim=4, hidden_dims=(8,)),
                           m2=M2Config(input_dim=3, num_classes=K, latent_dim=2, hidden_dim=8,
                                       classifier_hidden_dim=5, likelihood="gaussian"),
                           active_dims=(0, 2, 3)))


def sdgm():
    # Every per-step schedule on: KL warm-up, class balance, the adversarial term with its moving
    # weight and radius, and the unlabelled bound narrowed to the top classes once they form.
    return AuxiliaryDGM(AuxiliaryConfig(input_dim=D, num_classes=K, latent_dim=3, aux_dim=2, hidden_dims=(6,),
                                        classifier_hidden_dims=(6,), skip=True, kl_warmup_steps=4,
                                        adversarial_weight=0.5, adversarial_final_weight=1.0,
                                        adversarial_radius=1.0, adversarial_final_radius=0.5, top_classes=2))


def adgm():
    return AuxiliaryDGM(AuxiliaryConfig(input_dim=D, num_classes=K, latent_dim=3, aux_dim=2, hidden_dims=(6,),
                                        classifier_hidden_dims=(6,), skip=False))


@pytest.mark.parametrize("family", [m1, m2, m1m2, adgm, sdgm], ids=lambda f: f.__name__)
def test_the_steps_between_the_loops_checks_never_read_the_device_back(tmp_path, family):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(120, D), dtype=np.uint8)
    labels = np.full(120, -1)
    labels[:2 * K] = np.arange(2 * K) % K
    model = family()
    labelled_batch = 0 if isinstance(model, M1) else 2
    batches = SemiSupervisedBatches(images, labels, labelled_batch, 8, True, torch.device("cpu"), 0, model.noise_width)
    settings = TrainerSettings(epochs=1, minutes=None, learning_rate=1e-3, device=torch.device("cpu"), bf16=False,
                               compile=False, progress=False)
    trainer = Trainer(model, batches, lambda m: {"val_accuracy": 0.0}, tmp_path, settings)

    found = []
    with ReadsBack(found), WaitsForDevice(found):
        # The whole epoch: the schedules move across it (the top classes form at a tenth of it).
        for batch in islice(trainer._rest_of_epoch(), len(batches)):
            trainer.advance(batch)
    assert trainer.steps == len(batches) == 14
    assert found == [], f"{family.__name__}: the step reads the device back: {sorted(set(found))}"

    # The checks themselves are seen: the same recording catches the loop's look at its counts.
    with ReadsBack(found), WaitsForDevice(found):
        trainer._check_divergence(None)
    assert found


@pytest.mark.parametrize("reads_back", [
    lambda x: x.sum().item(), lambda x: bool(x.sum() > 0), lambda x: x.cpu(), lambda x: x.tolist(),
    lambda x: x[x > 0], lambda x: x.nonzero(), lambda x: torch.tensor([1.0]), lambda x: x.unique(),
], ids=["item", "bool", "cpu", "tolist", "boolean mask", "nonzero", "from host", "unique"])
def test_the_recording_catches_each_way_of_reading_the_device_back(reads_back):
    x = torch.randn(6)
    found = []
    with ReadsBack(found), WaitsForDevice(found):
        reads_back(x)
    assert found
