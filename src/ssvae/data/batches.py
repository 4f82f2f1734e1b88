"""Training batches for semi-supervised learning, drawn on the model's device.

Every step pairs a batch of unlabelled images with a batch of labelled ones. An epoch is one pass
over the unlabelled images in a fresh random order; the few labelled images are cycled through
(again reshuffled on every pass), so the labels are seen many times per epoch. The whole data set
lives on the device as uint8, and images are turned into model inputs there: scaled to [0, 1] and,
with ``binarize``, binarised afresh each time they are drawn (each pixel ~ Bernoulli(intensity)),
which is far better than one fixed threshold; by default the grey levels are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import SsvaeError


@dataclass
class Batch:
    labelled_x: Tensor  # float (B_l, D) in [0, 1]
    labelled_y: Tensor  # int64 (B_l,)
    unlabelled_x: Tensor  # float (B_u, D) in [0, 1]
    # N_l / N: the labelled images' share of the data, which weighs the labelled bound against the
    # unlabelled one so that the objective is the paper's J divided by N, whatever the batch sizes.
    labelled_share: float
    # Standard normal noise for the model's reparameterised samples, one row per image (B, width),
    # drawn here rather than in the model so that an image's noise is the same however the batch is
    # split between processes. None: the model draws its own.
    labelled_noise: Tensor | None = None
    unlabelled_noise: Tensor | None = None


def to_inputs(images: Tensor, binarize: bool, generator: torch.Generator | None = None) -> Tensor:
    """uint8 images (B, D) -> float inputs in [0, 1]; binary samples when ``binarize``."""
    x = images.float().div_(255.0)
    if binarize:
        x = torch.bernoulli(x, generator=generator)
    return x


class SemiSupervisedBatches:
    """Yields :class:`Batch` objects; ``len()`` is the number of steps in one epoch.

    Parameters
    ----------
    images : uint8 array or tensor (N, D)
    labels : int array (N,), ``-1`` for unlabelled examples
    labelled_batch_size, unlabelled_batch_size : int
        A labelled batch size of 0 gives unlabelled batches only (for unsupervised models such as M1).
    binarize : bool
        Dynamic binarisation of every drawn batch.
    device : torch.device
    seed : int
    noise_width : int
        Standard normal numbers drawn per image and step for the model (its ``noise_width``); 0: none.
    shard : (rank, world)
        Distributed training: every process draws the same global batches, and this one keeps its
        ``1/world`` share of each, both labelled and unlabelled (so both batch sizes must divide by
        ``world``). The pixels' binarisation and the noise are drawn for the global batch first, so
        that the processes together see exactly what one process would.
    """

    def __init__(self, images, labels, labelled_batch_size: int, unlabelled_batch_size: int,
                 binarize: bool, device: torch.device, seed: int, noise_width: int = 0,
                 shard: tuple[int, int] = (0, 1)):
        labels = np.asarray(labels)
        self.images = torch.as_tensor(np.asarray(images), dtype=torch.uint8, device=device)
        self.labelled_index = torch.as_tensor(np.flatnonzero(labels >= 0), device=device)
        self.unlabelled_index = torch.as_tensor(np.flatnonzero(labels < 0), device=device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64, device=device)
        if len(self.labelled_index) == 0 and labelled_batch_size > 0:
            raise SsvaeError("no labelled examples: semi-supervised training needs at least one label per class")
        if len(self.unlabelled_index) < unlabelled_batch_size:
            raise SsvaeError(
                f"--unlabelled-batch {unlabelled_batch_size} is larger than the "
                f"{len(self.unlabelled_index)} unlabelled examples; use a smaller batch"
            )
        rank, world = shard
        for name, size in (("--labelled-batch", labelled_batch_size), ("--unlabelled-batch", unlabelled_batch_size)):
            if size % world:
                raise SsvaeError(f"{name} {size} does not split evenly over {world} processes; "
                                 f"give a multiple of {world}")
        self.shard = (rank, world)
        self.noise_width = noise_width
        self.labelled_share = len(self.labelled_index) / len(labels)
        self.labelled_batch_size = labelled_batch_size
        self.unlabelled_batch_size = unlabelled_batch_size
        self.binarize = binarize
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self._labelled_order = self.labelled_index[:0]
        # The epoch in progress: its order of unlabelled images, and how many batches were handed out.
        self._epoch_order: Tensor | None = None
        self._position = 0

    @property
    def images_per_step(self) -> int:
        """Unlabelled images per step: the figure of merit for speed, since they cost K passes each."""
        return self.unlabelled_batch_size

    def __len__(self) -> int:
        # The last, partial batch is dropped: every step has the same shapes (no recompilation),
        # and the next epoch's reshuffle gives the dropped images their turn.
        return len(self.unlabelled_index) // self.unlabelled_batch_size

    def _next_labelled(self) -> Tensor:
        while len(self._labelled_order) < self.labelled_batch_size:
            perm = torch.randperm(len(self.labelled_index), generator=self.generator, device=self.generator.device)
            self._labelled_order = torch.cat([self._labelled_order, self.labelled_index[perm]])
        chosen = self._labelled_order[: self.labelled_batch_size]
        self._labelled_order = self._labelled_order[self.labelled_batch_size:]
        return chosen

    def __iter__(self):
        """The rest of the current epoch: a fresh epoch, or the remainder of one that was interrupted."""
        g = self.generator
        if self._epoch_order is None:
            perm = torch.randperm(len(self.unlabelled_index), generator=g, device=g.device)
            self._epoch_order, self._position = self.unlabelled_index[perm], 0
        b = self.unlabelled_batch_size
        while self._position < len(self):
            u = self._epoch_order[self._position * b:(self._position + 1) * b]
            l = self._next_labelled()
            batch = Batch(
                labelled_x=to_inputs(self.images[l], self.binarize, g),
                labelled_y=self.labels[l],
                unlabelled_x=to_inputs(self.images[u], self.binarize, g),
                labelled_share=self.labelled_share,
            )
            if self.noise_width:
                batch.labelled_noise = torch.randn(len(l), self.noise_width, generator=g, device=g.device)
                batch.unlabelled_noise = torch.randn(len(u), self.noise_width, generator=g, device=g.device)
            if self.shard[1] > 1:
                batch = self._share_of(batch)
            # Counted as consumed before it is handed out, so a checkpoint taken after the step
            # that used it resumes with the next one.
            self._position += 1
            yield batch
        self._epoch_order = None

    def _share_of(self, batch: Batch) -> Batch:
        """This process's rows of a global batch: the rank-th of ``world`` equal slices of each kind."""
        rank, world = self.shard

        def rows(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            size = len(t) // world
            return t[rank * size:(rank + 1) * size]

        return Batch(rows(batch.labelled_x), rows(batch.labelled_y), rows(batch.unlabelled_x),
                     batch.labelled_share, rows(batch.labelled_noise), rows(batch.unlabelled_noise))

    def end_epoch(self) -> None:
        """Drop what is left of the current epoch (when a time budget cut it short)."""
        self._epoch_order, self._position = None, 0

    # -- exact resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Where the stream stands: the generator, the labelled queue, this epoch's order and position."""
        return {
            "generator": self.generator.get_state(),
            "labelled_order": self._labelled_order.cpu(),
            "epoch_order": None if self._epoch_order is None else self._epoch_order.cpu(),
            "position": self._position,
        }

    def load_state_dict(self, state: dict) -> None:
        device = self.images.device
        self.generator.set_state(state["generator"])
        self._labelled_order = state["labelled_order"].to(device)
        order = state["epoch_order"]
        self._epoch_order = None if order is None else order.to(device)
        self._position = int(state["position"])
