"""The three sets every data set is cut into."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)  # eq=False: comparing or hashing arrays field-wise is meaningless
class DataSplits:
    """Training, validation and test sets: uint8 images (N, D) with raw values 0..255, int64 labels (N,).

    A training label of -1 marks an unlabelled image. Validation and test images are all labelled.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
