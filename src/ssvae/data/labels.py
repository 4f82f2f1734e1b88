"""Which training examples keep their label: a balanced, seeded, saved choice.

The paper draws N labelled examples with the classes balanced (N/K each); every other training
example is unlabelled, marked ``-1`` as in scikit-learn.
"""

from __future__ import annotations

import numpy as np

from ..errors import SsvaeError

UNLABELLED = -1


def balanced_label_split(labels: np.ndarray, num_labels: int, num_classes: int, seed: int) -> np.ndarray:
    """Choose ``num_labels`` examples, ``num_labels / num_classes`` from each class.

    Parameters
    ----------
    labels : int array (N,)
        The true class of every training example.
    num_labels, num_classes : int
    seed : int
        The same seed and labels always give the same choice.

    Returns
    -------
    int64 array of the chosen indices into ``labels``, sorted.
    """
    labels = np.asarray(labels)
    if num_labels < num_classes or num_labels % num_classes:
        raise SsvaeError(
            f"--labels {num_labels}: must be a positive multiple of the {num_classes} classes "
            f"so that every class gets the same number (e.g. {num_classes * max(1, num_labels // num_classes)})"
        )
    if num_labels > len(labels):
        raise SsvaeError(f"--labels {num_labels}: only {len(labels)} training examples exist")
    per_class = num_labels // num_classes
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise SsvaeError(
                f"--labels {num_labels}: class {c} has only {len(members)} examples, "
                f"{per_class} are needed per class; ask for fewer labels"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def partial_labels(labels: np.ndarray, labelled_indices: np.ndarray) -> np.ndarray:
    """A copy of ``labels`` with every example not in ``labelled_indices`` set to ``-1``."""
    partial = np.full(len(labels), UNLABELLED, dtype=np.int64)
    partial[labelled_indices] = np.asarray(labels)[labelled_indices]
    return partial
