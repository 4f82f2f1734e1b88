"""How sure an accuracy is: the count of images it rests on and a 95% Wilson score interval.

An accuracy from 10 images says little (8 of 10 is anything from 0.49 to 0.94); a user should see
that beside the figure, never the figure alone. The Wilson interval (Wilson, 1927) stays inside
[0, 1] and keeps its coverage near 95% even for small counts and accuracies near 0 or 1, where the
textbook p ± 1.96 sqrt(p(1-p)/n) does not.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
# A test set smaller than this is called small wherever its accuracy is printed: its 95% interval
# is then wider than about ±0.07 at accuracies near 0.5.
SMALL_TEST_SET = 200


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for ``correct`` successes in ``total`` trials; (0, 1) for none."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # At 0 or all correct the bound is exactly 0 or 1; rounding would leave it a hair inside.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def accuracy_figures(prefix: str, correct: int, total: int) -> dict:
    """``{prefix}_accuracy``, ``{prefix}_images`` and ``{prefix}_interval`` (95%, Wilson) for a result file."""
    low, high = wilson_interval(correct, total)
    return {f"{prefix}_accuracy": correct / total if total else float("nan"), f"{prefix}_images": total,
            f"{prefix}_interval": [low, high]}


def describe_accuracy(result: dict, prefix: str) -> str:
    """'0.8000 (8 of 10 images; 95% interval 0.490-0.943; a small test set)', or the bare figure
    for results written before counts were kept."""
    value = result[f"{prefix}_accuracy"]
    total = result.get(f"{prefix}_images")
    if total is None:
        return f"{value:.4f}"
    low, high = result[f"{prefix}_interval"]
    small = f"; a small {'test' if prefix == 'test' else 'validation'} set" if total < SMALL_TEST_SET else ""
    return f"{value:.4f} ({round(value * total)} of {total} images; 95% interval {low:.3f}-{high:.3f}{small})"
