"""What the generative models buy: classifiers that see the same labels and nothing else of the data.

* **pixels + logistic regression**: a linear classifier on the labelled images' pixels alone, the
  floor every semi-supervised model must clear;
* **pixels + SVM**: an RBF support-vector machine on the labelled images' pixels alone;
* **M1 + SVM**: the same SVM on the q-means of a trained M1's latent z, which M1 learned from every
  training image without labels (the paper's M1+TSVM is this idea with a transductive SVM);
* **M1 + label spreading**: a transductive classifier in M1's latent space, as the paper's TSVM
  is: the labels spread over a k-nearest-neighbour graph of every training image's q-mean
  (scikit-learn's LabelSpreading), then new images take the labels of their neighbours.

All use the run's balanced label split and pick their one setting (the SVM's C, the number of
neighbours) on the validation split, the same protocol as the models; the test split only reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.batches import to_inputs
from .data.labels import balanced_label_split, partial_labels

# Regularisation strengths tried, each scored on the validation split.
C_GRID = (0.1, 1.0, 10.0, 100.0)


@dataclass
class BaselineResult:
    name: str
    val_accuracy: float
    test_accuracy: float
    setting: str  # the value chosen on validation, e.g. "C=10"


def best_on_validation(candidates, features_val: np.ndarray, labels_val: np.ndarray):
    """(validation accuracy, setting, model) of the fitted (setting, model) pair best on validation."""
    scored = ((float(model.score(features_val, labels_val)), setting, model) for setting, model in candidates)
    return max(scored, key=lambda scored_one: scored_one[0])  # the first of equals, as the grid is ordered


def svm_on(features_train: np.ndarray, labels_train: np.ndarray, features_val: np.ndarray, labels_val: np.ndarray,
           features_test: np.ndarray, labels_test: np.ndarray, name: str) -> BaselineResult:
    """An RBF SVM for each C of the grid; the one best on validation is reported on test."""
    from sklearn.svm import SVC

    fits = ((f"C={c:g}", SVC(C=c, kernel="rbf", gamma="scale").fit(features_train, labels_train)) for c in C_GRID)
    val, setting, svm = best_on_validation(fits, features_val, labels_val)
    return BaselineResult(name, val, float(svm.score(features_test, labels_test)), setting)


def logistic_regression_on(features_train: np.ndarray, labels_train: np.ndarray, features_val: np.ndarray,
                           labels_val: np.ndarray, features_test: np.ndarray, labels_test: np.ndarray,
                           name: str) -> BaselineResult:
    """Multinomial logistic regression (L2) for each C of the grid; the one best on validation is reported."""
    from sklearn.linear_model import LogisticRegression

    fits = ((f"C={c:g}", LogisticRegression(C=c, max_iter=2000).fit(features_train, labels_train)) for c in C_GRID)
    val, setting, model = best_on_validation(fits, features_val, labels_val)
    return BaselineResult(name, val, float(model.score(features_test, labels_test)), setting)


# Neighbours in the label-spreading graph, each scored on the validation split.
NEIGHBOURS_GRID = (10, 20)


def label_spreading_on(features_all: np.ndarray, partial: np.ndarray, features_val: np.ndarray,
                       labels_val: np.ndarray, features_test: np.ndarray, labels_test: np.ndarray,
                       name: str) -> BaselineResult:
    """Labels spread over a kNN graph of every training point (-1: unlabelled), for each graph size."""
    from sklearn.semi_supervised import LabelSpreading

    fits = ((f"k={k}", LabelSpreading(kernel="knn", n_neighbors=k, alpha=0.2, max_iter=100).fit(features_all, partial))
            for k in NEIGHBOURS_GRID)
    val, setting, model = best_on_validation(fits, features_val, labels_val)
    return BaselineResult(name, val, float(model.score(features_test, labels_test)), setting)


@torch.no_grad()
def latent_means(m1, images: np.ndarray, device: torch.device, batch_size: int = 5000) -> np.ndarray:
    """q-means of M1's z for uint8 images, as a float64 array (batch, latent_dim)."""
    x_all = torch.as_tensor(images, device=device)
    means = [m1.encode(to_inputs(x_all[i:i + batch_size], binarize=False))[0]
             for i in range(0, len(x_all), batch_size)]
    return torch.cat(means).double().cpu().numpy()


def run_baselines(data, labels: int, seed: int, m1_run: Path | None, device: torch.device) -> list[BaselineResult]:
    """Pixels + logistic regression and + SVM, and with an M1 run M1 + SVM and M1 + label spreading, on the
    label split of ``seed``."""
    labelled = balanced_label_split(data.train_labels, labels, data.num_classes, seed)
    y = data.train_labels[labelled]
    scale = np.float64(1.0 / 255.0)
    pixels = (data.train_images[labelled] * scale, y, data.val_images * scale, data.val_labels,
              data.test_images * scale, data.test_labels)
    results = [logistic_regression_on(*pixels, "pixels + logistic regression"), svm_on(*pixels, "pixels + SVM")]
    if m1_run is not None:
        from .experiment import load_m1

        m1 = load_m1(m1_run, device)
        train, val, test = (latent_means(m1, images, device)
                            for images in (data.train_images, data.val_images, data.test_images))
        results.append(svm_on(train[labelled], y, val, data.val_labels, test, data.test_labels, "M1 + SVM"))
        results.append(label_spreading_on(train, partial_labels(data.train_labels, labelled), val, data.val_labels,
                                          test, data.test_labels, "M1 + label spreading"))
    return results
