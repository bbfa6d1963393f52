"""ARIG box metrics (spec A.6.4): the repository's kernels (``utils/ciou.py``) and the benchmark summary.

Boxes are ``[xmin, ymin, xmax, ymax]`` in pixels of the 224 × 224 image (continuous corner
coordinates: area = (xmax − xmin)(ymax − ymin)).

The repository's kernels, reproduced as they are (neither is called anywhere in the original):

* :func:`intersection_over_union`: ``inter / (area_a + area_b − inter + 1e-6)``, overlaps clamped at 0
  (the original's Python arithmetic on the numbers as given).
* :func:`c_iou`: Complete-IoU ``iou − d_c / d_e − α·v`` with the original's **``+``** in the enclosing
  box's diagonal ``d_e = (xmin_e − xmax_e)² + (ymin_e + ymax_e)²``; a zero-height box raises
  ``ZeroDivisionError`` exactly when the original does (Python float division in the aspect term).
* :func:`bbox_overlaps_ciou`: the float32 torch kernel for aligned pairs, a CIoU *loss-gradient*
  formula, not a similarity (``iou − (u + α·ar)`` clamped to [−1, 1]; NaN for identical boxes).

The reported numbers (:class:`BoxScores`, Meerkat / sound-localisation convention; the Crab
repository has no scoring for ARIG) use the plain box IoU of :func:`intersection_over_union`: it is
the only box IoU of the original code, it reads the corner format the model is trained to emit, and
its ``+ 1e-6`` turns degenerate (zero-area) pairs into 0 instead of a division error. The CIoU
variants are penalised regression targets, not overlap measures, so they are not used for scores.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

IOU_EPS = 1e-6
SUCCESS_IOU = 0.5  # "cIoU": the fraction of samples with IoU >= 0.5
AUC_THRESHOLD_STEP = 0.05
AUC_THRESHOLD_COUNT = 21  # thresholds 0, 0.05, ..., 1.0

_F32 = np.float32


def _corners(box, name: str) -> tuple:
    """The four numbers as given: the original's arithmetic on them (Python ints / floats raise
    ZeroDivisionError where NumPy scalars would give inf / NaN, in the original too)."""
    values = tuple(box)
    if len(values) != 4:
        raise ValueError(f"{name}: expected [xmin, ymin, xmax, ymax], got {box!r}")
    return values


def intersection_over_union(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """The original ``intersection_over_union``: ``inter / (area_a + area_b − inter + 1e-6)``."""
    xmin1, ymin1, xmax1, ymax1 = _corners(box_a, "box_a")
    xmin2, ymin2, xmax2, ymax2 = _corners(box_b, "box_b")
    area1 = (xmax1 - xmin1) * (ymax1 - ymin1)
    area2 = (xmax2 - xmin2) * (ymax2 - ymin2)
    inter = max(0, min(xmax1, xmax2) - max(xmin1, xmin2)) * max(0, min(ymax1, ymax2) - max(ymin1, ymin2))
    return inter / (area1 + area2 - inter + IOU_EPS)


def c_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """The original ``c_iou`` (float64), its ``+`` in the enclosing diagonal included.

    Raises:
      ZeroDivisionError: a box of zero height given as Python numbers (``w / h`` in the aspect-ratio
      term), exactly as the original.
    """
    xmin1, ymin1, xmax1, ymax1 = _corners(box_a, "box_a")
    xmin2, ymin2, xmax2, ymax2 = _corners(box_b, "box_b")
    iou = intersection_over_union(box_a, box_b)
    d_center = ((xmin1 + xmax1) / 2 - (xmin2 + xmax2) / 2) ** 2 + ((ymin1 + ymax1) / 2 - (ymin2 + ymax2) / 2) ** 2
    xs, ys = (xmin1, xmax1, xmin2, xmax2), (ymin1, ymax1, ymin2, ymax2)
    d_corner = (min(xs) - max(xs)) ** 2 + (min(ys) + max(ys)) ** 2  # [quirk] '+' where the diagonal needs '-'
    w1, h1, w2, h2 = xmax1 - xmin1, ymax1 - ymin1, xmax2 - xmin2, ymax2 - ymin2
    v = 4 * (np.arctan(w1 / h1) - np.arctan(w2 / h2)) ** 2 / (np.pi ** 2)
    alpha = v / (1 - iou + v)
    return float(iou - d_center / d_corner - alpha * v)


def _pairs(boxes, name: str) -> np.ndarray:
    arr = np.asarray(boxes, _F32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected boxes [n, 4] (xmin, ymin, xmax, ymax), got shape {arr.shape}")
    return arr


def bbox_overlaps_ciou(boxes1, boxes2) -> np.ndarray:
    """The original torch ``bbox_overlaps_ciou`` on aligned pairs, float32.

    Args:
      boxes1, boxes2: ``[n, 4]`` boxes (pair i = ``boxes1[i]``, ``boxes2[i]``).
    Returns:
      ``[n]`` float32 ``clamp(iou − (u + α·ar), −1, 1)`` with ``iou = inter / union`` (no eps),
      ``u = d_c / (enclosing diagonal²)``, ``v = 4/π²·(atan(w2/h2) − atan(w1/h1))²``,
      ``α = v / (1 − iou + v)`` and ``ar = 8/π²·(atan(w2/h2) − atan(w1/h1))·(−w1·h1)``; NaN where the
      original gives NaN (identical boxes: α = 0/0).
    """
    b1, b2 = _pairs(boxes1, "boxes1"), _pairs(boxes2, "boxes2")
    if b1.shape != b2.shape:
        raise ValueError(f"bbox_overlaps_ciou scores aligned pairs: {b1.shape} != {b2.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        w1, h1 = b1[:, 2] - b1[:, 0], b1[:, 3] - b1[:, 1]
        w2, h2 = b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
        cx1, cy1 = (b1[:, 2] + b1[:, 0]) / _F32(2), (b1[:, 3] + b1[:, 1]) / _F32(2)
        cx2, cy2 = (b2[:, 2] + b2[:, 0]) / _F32(2), (b2[:, 3] + b2[:, 1]) / _F32(2)
        inter = np.maximum(np.minimum(b1[:, 2:], b2[:, 2:]) - np.maximum(b1[:, :2], b2[:, :2]), _F32(0))
        outer = np.maximum(np.maximum(b1[:, 2:], b2[:, 2:]) - np.minimum(b1[:, :2], b2[:, :2]), _F32(0))
        inter_area = inter[:, 0] * inter[:, 1]
        u = ((cx2 - cx1) ** 2 + (cy2 - cy1) ** 2) / (outer[:, 0] ** 2 + outer[:, 1] ** 2)
        iou = inter_area / (w1 * h1 + w2 * h2 - inter_area)
        arctan = np.arctan(w2 / h2) - np.arctan(w1 / h1)
        v = _F32(4 / math.pi ** 2) * arctan ** 2
        alpha = v / ((_F32(1) - iou) + v)
        ar = _F32(8 / math.pi ** 2) * arctan * ((w1 - _F32(2) * w1) * h1)
        return np.clip(iou - (u + alpha * ar), _F32(-1), _F32(1)).astype(_F32)


def auc_thresholds() -> np.ndarray:
    """The success-rate thresholds ``0.05 * i``, i = 0..20 (float64, as the reference code builds them)."""
    return np.array([AUC_THRESHOLD_STEP * i for i in range(AUC_THRESHOLD_COUNT)])


class BoxScores:
    """ARIG scores over samples: the plain box IoU (:func:`intersection_over_union`) of each
    predicted box with its ground truth, an unparsable prediction (``None``) scoring 0."""

    def __init__(self):
        self.ious: list[float] = []

    def add(self, pred_box: Sequence[float] | None, gt_box: Sequence[float]) -> float:
        """Scores one sample; returns its IoU."""
        iou = 0.0 if pred_box is None else intersection_over_union(pred_box, gt_box)
        self.ious.append(iou)
        return iou

    def summary(self) -> dict:
        """``{"mIoU", "cIoU", "AUC", "n"}`` (NaN scores when no sample was added).

        * mIoU: the mean IoU.
        * cIoU: the fraction of samples with IoU >= 0.5.
        * AUC: the area under the success-rate curve ``s(t) = fraction of IoU >= t`` over the 21
          thresholds ``t = 0, 0.05, ..., 1.0`` by the trapezoidal rule,
          ``Σ_i 0.05 · (s(t_i) + s(t_{i+1})) / 2`` (what ``sklearn.metrics.auc`` computes in the
          sound-localisation evaluation code Meerkat follows); its maximum is 1.0 only when every
          IoU is >= 1.0, so identical boxes (IoU 1 − 5e-11 from the 1e-6) reach 0.975.
        """
        n = len(self.ious)
        if n == 0:
            return {"mIoU": float("nan"), "cIoU": float("nan"), "AUC": float("nan"), "n": 0}
        ious = np.asarray(self.ious, np.float64)
        t = auc_thresholds()
        success = np.array([np.sum(ious >= ti) / n for ti in t])
        auc = float(np.sum(np.diff(t) * (success[1:] + success[:-1]) / 2))
        return {"mIoU": float(ious.mean()), "cIoU": float(np.mean(ious >= SUCCESS_IOU)), "AUC": auc, "n": n}
