"""Classifying images with a trained model: class probabilities in batches, and accuracy."""

from __future__ import annotations

import numpy as np
import torch

from .data.batches import to_inputs


@torch.no_grad()
def class_probabilities(model, images: np.ndarray, device: torch.device, batch_size: int = 2000,
                        thorough: bool = True) -> torch.Tensor:
    """Class probabilities for uint8 ``images``, shape (N, K), in batches, with the model in eval mode:
    q(y|x), or with ``thorough`` the model's slower, better classification where it has one (ADGM,
    SDGM: q fused with the generative posterior); validation during training passes False, for speed.

    Inputs are grey levels, the expectation of the binary samples seen in training.
    """
    was_training = model.training
    model.eval()
    classify = model.classify_thoroughly if thorough and hasattr(model, "classify_thoroughly") else model.classify
    x_all = torch.as_tensor(images, device=device)
    probabilities = torch.cat([torch.softmax(classify(to_inputs(x_all[i:i + batch_size], binarize=False)).float(), dim=-1)
                               for i in range(0, len(x_all), batch_size)])
    model.train(was_training)
    return probabilities


def correct_predictions(model, images: np.ndarray, labels: np.ndarray, device: torch.device,
                        thorough: bool = True) -> int:
    """How many of ``images`` (uint8) have the true class as their most probable (see ``class_probabilities``)."""
    predicted = class_probabilities(model, images, device, thorough=thorough).argmax(-1)
    return int((predicted == torch.as_tensor(labels, device=device)).sum())


def accuracy(model, images: np.ndarray, labels: np.ndarray, device: torch.device, thorough: bool = True) -> float:
    """Fraction of ``images`` (uint8) whose most probable class is the true one (see ``class_probabilities``)."""
    return correct_predictions(model, images, labels, device, thorough) / len(labels)
