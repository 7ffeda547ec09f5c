"""Calibration of logged predictions against their labels: mean prediction vs rate, and ECE."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Equal-width probability bins of the expected calibration error.
ECE_BINS = 10
#: ``mean prediction / label rate`` outside this range is reported as far off.
RATIO_RANGE = (0.5, 2.0)
#: Positive labels needed before a mean prediction is judged against the label rate.
MIN_POSITIVES = 10


@dataclass(frozen=True)
class Calibration:
    """Calibration of one objective's predictions.

    ``ratio`` is ``mean_pred / rate`` (inf when the rate is 0 and predictions are not; NaN when
    both are 0); ``ece`` is the expected calibration error over :data:`ECE_BINS` bins.
    """

    n: int
    mean_pred: float
    rate: float
    ratio: float
    ece: float

    @property
    def far_off(self) -> bool:
        """Whether the ratio is outside :data:`RATIO_RANGE`, judged only with at least
        :data:`MIN_POSITIVES` positive labels (a rarer label's rate is too noisy to judge)."""
        lo, hi = RATIO_RANGE
        enough = self.n * self.rate >= MIN_POSITIVES
        return enough and not math.isnan(self.ratio) and not lo <= self.ratio <= hi


def expected_calibration_error(pred: np.ndarray, label: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = sum_b (n_b / n) * |mean(pred in b) - mean(label in b)|.

    Args:
        pred: (n,) probabilities in [0, 1].
        label: (n,) outcomes in [0, 1] (0/1 or observed rates).
        bins: equal-width bins over [0, 1]; a prediction of exactly 1 falls in the last one.

    Returns:
        The ECE in [0, 1]; NaN for n = 0.
    """
    pred = np.asarray(pred, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    if pred.size == 0:
        return math.nan
    which = np.minimum((pred * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.bincount(which, weights=pred, minlength=bins) - np.bincount(
        which, weights=label, minlength=bins
    )
    # sum_b n_b/n * |sum_pred_b/n_b - sum_label_b/n_b| = sum_b |sum_pred_b - sum_label_b| / n
    return float(np.abs(gap[count > 0]).sum() / pred.size)


def calibration(pred: np.ndarray, label: np.ndarray, bins: int = ECE_BINS) -> Calibration:
    """Mean prediction, label rate, their ratio and the ECE of ``(n,)`` aligned arrays."""
    pred = np.asarray(pred, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    n = int(pred.size)
    mean_pred = float(pred.mean()) if n else math.nan
    rate = float(label.mean()) if n else math.nan
    if rate > 0:
        ratio = mean_pred / rate
    else:
        ratio = math.inf if mean_pred > 0 else math.nan
    return Calibration(n, mean_pred, rate, ratio, expected_calibration_error(pred, label, bins))
