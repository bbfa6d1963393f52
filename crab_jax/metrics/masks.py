"""Mask metrics of the original (``utils/avss_utils.py``, ``scripts/quick_start.py``), spec A.6.5 / A.6.6.

Binary masks (S4, MS3, Ref-AVS): every function takes **logits** and applies the sigmoid
itself, exactly like the original — a prediction the scripts saved as a 0/255 PNG is passed
as ``png / 255`` (a 0/1 map "as logits": sigmoid(1) = 0.73 > 0.5, so the IoU is unchanged;
the F curve of such a map differs from the one of the real logits, see the fixture's
``*_of_saved_png_over_255``). A probability map must not be passed (it would be thresholded at
``> 0``).

* J: :func:`mask_iou` — ``P = sigmoid(logit) > 0.5``; ``|P ∩ G| / (|P ∪ G| + 1e-7)``, and for an
  empty ground truth the true-negative ratio ``|¬P ∩ ¬G| / (H·W + 1e-7)``; batch mean.
* F: :func:`eval_fmeasure` — β² = 0.3 F over :data:`FMEASURE_THRESHOLDS` (``prob >= t``), the
  curves of the images **with an object** averaged, then the maximum; 0.0 when none has one.
* Ref-AVS null split: :func:`null_s` — ``sqrt(|P| / (H·W))`` (lower is better).
* Crab+'s SAM2 stage (spec B.6) scores **binary** masks instead of logits:
  :func:`binary_jf` (fixed-threshold J and F with its empty-mask conventions) and
  :func:`null_s_over_background` (``sqrt(|P| / |¬P|)``, infinite for a full-image mask), with the
  accumulators :class:`BinaryJFScores` and :class:`BackgroundNullScores`.
* The scripts call these once per frame (N = 1) and average the per-frame values:
  :class:`BinaryMaskScores` (a frame without an object adds its F of 0.0 to the mean) and
  :class:`NullScores`. Frames for which the model produced no mask are skipped by the scripts:
  the caller simply does not add them.

AVSS (``calc_color_miou_fscore`` with the ``inference_avss`` accumulation):
:func:`avss_pred_classes` (argmax of the softmax), :func:`avss_frame_stats` (per-class IoU, F and
presence of one frame) and :class:`AvssScores` (the running value the script prints and the
final mIoU / F over **all** classes, never-seen classes counting 0, with the "noBg" variants
that drop the **last** class, not the background).

Arithmetic is float32 where the original's is (counts are exact integers, ratios are float32),
so the scores match the original to a few float32 ulps.
"""

from __future__ import annotations

import math

import numpy as np

from crab_jax.data.media.decode import AVSS_NUM_CLASSES

MASK_IOU_EPS = 1e-7
FMEASURE_BETA2 = 0.3
FMEASURE_EPS = 1e-20
AVSS_IOU_EPS = 2.220446049250313e-16  # float64 machine epsilon, added in float32 (only matters for 0/0)

_F32 = np.float32


def _torch_linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32, bit for bit.

    torch's CPU kernel computes ``start + step * i`` for the first half and
    ``end - step * (steps - 1 - i)`` for the second, with ``step = (end - start) / (steps - 1)``
    in float32 and the multiply-add fused (one rounding). The float64 product of a float32 step and
    an index below 2**29 is exact, so rounding the float64 result once reproduces the fused value.
    """
    lo, hi = _F32(start), _F32(end)
    step = np.float64((hi - lo) / _F32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    first = np.float64(lo) + step * i
    second = np.float64(hi) - step * (steps - 1 - i)
    return np.where(i < steps // 2, first, second).astype(_F32)


# The Eval_Fmeasure thresholds: torch.linspace(0, 1 - 1e-10, 255) in float32 (i/254 up to one ulp,
# t[127] = 0.5, the last exactly 1.0). numpy's linspace differs from it by one ulp at ~10 of them.
FMEASURE_THRESHOLDS = _torch_linspace_float32(0.0, 1 - 1e-10, 255)
FMEASURE_THRESHOLDS.setflags(write=False)


def sigmoid(logits) -> np.ndarray:
    """Float32 ``1 / (1 + exp(-x))``, the formula of torch's CPU kernel (logit 0 -> exactly 0.5)."""
    x = np.asarray(logits, _F32)
    with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0 gives the right 0
        return (_F32(1) / (_F32(1) + np.exp(-x))).astype(_F32)


def binarize(logits) -> np.ndarray:
    """The original's binary prediction ``sigmoid(logits) > 0.5`` as uint8 0/1 (same shape).

    ``binarize(logits) * 255`` is the PNG the S4 / MS3 / Ref-AVS scripts save.
    """
    return (sigmoid(logits) > _F32(0.5)).astype(np.uint8)


def _frames(x, name: str) -> np.ndarray:
    """``[H, W]`` or ``[N, H, W]`` -> ``[N, H, W]``."""
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"{name}: expected a mask [H, W] or masks [N, H, W], got shape {np.shape(x)}")
    return arr


def _binary_gt(gt, logits: np.ndarray) -> np.ndarray:
    """The 0/1 ground truth as bool ``[N, H, W]``, checked against the logits' shape."""
    g = _frames(gt, "gt")
    if g.shape != logits.shape:
        raise ValueError(f"gt shape {g.shape} != logits shape {logits.shape}")
    if not ((g == 0) | (g == 1)).all():
        raise ValueError(f"gt: expected a 0/1 mask (a 0/255 PNG must be divided by 255), "
                         f"got values {np.unique(g)[:8].tolist()}")
    return g.astype(bool)


def mask_iou(logits, gt) -> float:
    """The original ``mask_iou``: mean over the batch of the per-image IoU of ``sigmoid > 0.5``.

    Args:
      logits: ``[N, H, W]`` (or ``[H, W]``) float logits.
      gt: same shape, 0/1.
    Returns:
      ``Σ_n inter_n / (union_n + 1e-7) / N`` in float32 as a Python float; an image with an empty
      ground truth scores its true-negative ratio ``|¬P ∩ ¬G| / (H·W + 1e-7)`` instead.
    """
    x = _frames(logits, "logits")
    t = _binary_gt(gt, x)
    p = binarize(x).astype(bool)
    no_object = ~t.any(axis=(1, 2))
    inter = np.where(no_object, (~p & ~t).sum(axis=(1, 2)), (p & t).sum(axis=(1, 2)))
    union = np.where(no_object, t.shape[1] * t.shape[2], (p | t).sum(axis=(1, 2)))
    iou = inter.astype(_F32) / (union.astype(_F32) + _F32(MASK_IOU_EPS))
    return float(np.sum(iou, dtype=_F32) / _F32(x.shape[0]))


def _f_beta(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """Float32 ``(1 + β²)·P·R / (β²·P + R)`` with NaN (0/0) -> 0, in the original's operation order."""
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (_F32(1 + FMEASURE_BETA2) * precision * recall) / (_F32(FMEASURE_BETA2) * precision + recall)
    return np.where(np.isnan(f), _F32(0), f).astype(_F32)


def fmeasure_curve(logits, gt) -> np.ndarray:
    """F (β² = 0.3) of one image at each of the 255 :data:`FMEASURE_THRESHOLDS` (``prob >= t``).

    Args:
      logits: ``[H, W]`` (or ``[1, H, W]``) logits; gt: same shape, 0/1.
    Returns:
      ``[255]`` float32; all zeros for an empty ground truth (``Eval_Fmeasure`` skips such images).
    """
    x = _frames(logits, "logits")
    if x.shape[0] != 1:
        raise ValueError(f"fmeasure_curve scores one image, got logits of shape {x.shape}")
    t = _binary_gt(gt, x).ravel()
    if not t.any():
        return np.zeros(FMEASURE_THRESHOLDS.shape, _F32)
    prob = sigmoid(x).ravel()
    prob_on_object = np.sort(prob[t])
    prob = np.sort(prob)
    # #(prob >= t_i) over all pixels and over the object's pixels: exact integer counts.
    selected = prob.size - np.searchsorted(prob, FMEASURE_THRESHOLDS, side="left")
    tp = prob_on_object.size - np.searchsorted(prob_on_object, FMEASURE_THRESHOLDS, side="left")
    tp = tp.astype(_F32)
    precision = tp / (selected.astype(_F32) + _F32(FMEASURE_EPS))
    recall = tp / (_F32(t.sum()) + _F32(FMEASURE_EPS))
    return _f_beta(precision, recall)


def eval_fmeasure(logits, gt) -> float:
    """The original ``Eval_Fmeasure`` on a batch: the per-image F curves of the images **with an
    object** averaged (float32), then the maximum over thresholds; 0.0 when no image has one.

    Args:
      logits: ``[N, H, W]`` (or ``[H, W]``) logits; gt: same shape, 0/1.
    """
    x = _frames(logits, "logits")
    t = _binary_gt(gt, x)
    total, counted = np.zeros(FMEASURE_THRESHOLDS.shape, _F32), 0
    for n in range(x.shape[0]):
        if t[n].any():
            total = total + fmeasure_curve(x[n], t[n])
            counted += 1
    if counted == 0:
        return 0.0
    return float((total / _F32(counted)).max())


def null_s(logits) -> float:
    """Ref-AVS null-split ``metric_s_for_null``: ``sqrt(#(sigmoid > 0.5) / #pixels)`` (float32).

    Args:
      logits: ``[H, W]`` or ``[1, H, W]`` (every pixel of the array counts).
    """
    x = _frames(logits, "logits")
    positives = int(binarize(x).sum())
    return float(np.sqrt(_F32(positives) / _F32(x.size)))


def _one_frame(logits, name: str) -> np.ndarray:
    x = _frames(logits, name)
    if x.shape[0] != 1:
        raise ValueError(f"{name}: the scripts score one frame per call ([H, W] or [1, H, W]), got {x.shape}")
    return x


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")


class BinaryMaskScores:
    """S4 / MS3 / Ref-AVS (seen, unseen) scores as the scripts accumulate them: one ``mask_iou`` and
    one ``eval_fmeasure`` call per frame (N = 1), plain means over the added frames (in float64 of
    the float32 per-frame values). A frame without an object adds F = 0.0 (the script's rule)."""

    def __init__(self):
        self.ious: list[float] = []
        self.fscores: list[float] = []

    def add(self, logits, gt) -> tuple[float, float]:
        """Scores one frame (``[H, W]`` or ``[1, H, W]`` logits and 0/1 gt); returns ``(J, F)``."""
        x = _one_frame(logits, "logits")
        iou, f = mask_iou(x, gt), eval_fmeasure(x, gt)
        self.ious.append(iou)
        self.fscores.append(f)
        return iou, f

    def summary(self) -> dict:
        """``{"J": mean IoU, "F": mean F, "frames": n}`` (NaN means when no frame was added)."""
        return {"J": _mean(self.ious), "F": _mean(self.fscores), "frames": len(self.ious)}


class NullScores:
    """Ref-AVS null split (test_n): the mean of :func:`null_s` over the added frames."""

    def __init__(self):
        self.values: list[float] = []

    def add(self, logits) -> float:
        """Scores one frame's logits (``[H, W]`` or ``[1, H, W]``); returns its S."""
        s = null_s(_one_frame(logits, "logits"))
        self.values.append(s)
        return s

    def summary(self) -> dict:
        """``{"S": mean S, "frames": n}`` (lower is better; NaN when no frame was added)."""
        return {"S": _mean(self.values), "frames": len(self.values)}


# ----------------------------------------------------------------------------------- Crab+ (SAM2 stage, B.6)


def _binary_pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """Two ``[H, W]`` masks as bool (nonzero = foreground, the scripts' ``astype(bool)``)."""
    p, g = np.asarray(pred), np.asarray(gt)
    if p.ndim != 2 or p.shape != g.shape:
        raise ValueError(f"binary masks: expected pred and gt [H, W] of one shape, got {p.shape} and {g.shape}")
    return p.astype(bool), g.astype(bool)


def binary_jf(pred, gt) -> tuple[float, float]:
    """``inference_3.py``'s ``calculate_metrics``: J and F (β² = 0.3, no threshold sweep) of one frame.

    Args:
      pred, gt: ``[H, W]`` binary masks (bool or 0/1 / 0/255; nonzero = foreground).
    Returns:
      ``(J, F)`` in float64: ``J = |P ∩ G| / |P ∪ G|``, 1 when the union is empty;
      precision ``TP / |P|`` (1 when ``|P| = 0``, then TP = 0 too), recall ``TP / |G|`` (1 when
      ``|G| = 0``); ``F = 1.3·P·R / (0.3·P + R)``, 0 when ``P + R = 0``. So an empty prediction on
      an empty ground truth scores (1, 1) and an empty prediction on an object (0, 0).
    """
    p, g = _binary_pair(pred, gt)
    tp, union = int((p & g).sum()), int((p | g).sum())
    n_pred, n_gt = int(p.sum()), int(g.sum())
    jaccard = tp / union if union else 1.0
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_gt if n_gt else 1.0
    if precision + recall == 0:
        return jaccard, 0.0
    f = (1 + FMEASURE_BETA2) * precision * recall / (FMEASURE_BETA2 * precision + recall)
    return jaccard, f


def null_s_over_background(pred) -> float:
    """``inference_ref_3.py``'s ``calculate_s_metric``: ``sqrt(|P| / |¬P|)`` of one ``[H, W]``
    binary mask (float64), ``inf`` when the mask covers the whole image. Differs from Crab's
    :func:`null_s` (``|P| / (H·W)``)."""
    p = np.asarray(pred)
    if p.ndim != 2 or p.size == 0:
        raise ValueError(f"null S: expected a mask [H, W], got shape {p.shape}")
    p = p.astype(bool)
    background = int((~p).sum())
    return math.inf if background == 0 else math.sqrt(int(p.sum()) / background)


class BinaryJFScores:
    """Crab+ S4 / MS3 / Ref-AVS (seen, unseen): :func:`binary_jf` per frame, plain means."""

    def __init__(self):
        self.jaccards: list[float] = []
        self.fscores: list[float] = []

    def add(self, pred, gt) -> tuple[float, float]:
        """Scores one frame (``[H, W]`` binary masks); returns ``(J, F)``."""
        j, f = binary_jf(pred, gt)
        self.add_scores(j, f)
        return j, f

    def add_scores(self, jaccard: float, fscore: float) -> None:
        """Adds a frame's already known ``(J, F)`` (e.g. 0, 0 for an unusable prediction)."""
        self.jaccards.append(float(jaccard))
        self.fscores.append(float(fscore))

    def summary(self) -> dict:
        """``{"J": mean J, "F": mean F, "frames": n}`` (NaN means when no frame was added)."""
        return {"J": _mean(self.jaccards), "F": _mean(self.fscores), "frames": len(self.jaccards)}


class BackgroundNullScores:
    """Crab+ Ref-AVS null split: the mean of the finite :func:`null_s_over_background` values (the
    script leaves infinite ones out of its mean and counts them)."""

    def __init__(self):
        self.values: list[float] = []
        self.infinite = 0

    def add(self, pred) -> float:
        """Scores one frame's ``[H, W]`` binary mask; returns its S (maybe ``inf``)."""
        s = null_s_over_background(pred)
        if math.isinf(s):
            self.infinite += 1
        else:
            self.values.append(s)
        return s

    def summary(self) -> dict:
        """``{"S": mean finite S, "frames": finite frames, "infinite": frames left out}``."""
        return {"S": _mean(self.values), "frames": len(self.values), "infinite": self.infinite}


# ----------------------------------------------------------------------------------- AVSS


def avss_pred_classes(logits) -> np.ndarray:
    """``argmax(softmax(logits))`` over classes, the first index on ties (``save_color_mask``'s and
    ``calc_color_miou_fscore``'s prediction). The float32 softmax is kept because two logits within
    rounding of each other tie after it, as in the original.

    Args:
      logits: ``[K, H, W]`` class logits (K = number of classes, background = 0).
    Returns:
      ``[H, W]`` int64 class ids in ``[0, K)``.
    """
    x = np.asarray(logits, _F32)
    if x.ndim != 3 or x.shape[0] == 0:
        raise ValueError(f"avss logits: expected [K, H, W], got shape {np.shape(logits)}")
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return np.argmax(e / e.sum(axis=0, dtype=_F32), axis=0).astype(np.int64)


def avss_frame_stats(pred_cls, gt, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One frame of ``calc_color_miou_fscore`` (``_batch_miou_fscore``), per class c in ``[0, K)``.

    The original histograms ``class + 1`` with ``torch.histc(bins=K, min=1, max=K)``: exactly the
    per-class pixel counts, with ground-truth ids outside ``[0, K)`` ignored (and, from its
    ``predict * (target > 0)``, prediction pixels under a negative ground-truth id dropped).

    Args:
      pred_cls: ``[H, W]`` int predicted class ids (:func:`avss_pred_classes`).
      gt: ``[H, W]`` int ground-truth class ids.
      num_classes: K.
    Returns:
      ``(iou [K], f [K], count [K], frame_miou)``: float32 ``inter / (2.22e-16 + union)``; float32
      F (β² = 0.3) of ``P = inter / area_pred``, ``R = inter / area_gt`` with NaN -> 0 (a class only
      predicted or only annotated gets 0 but counts); float32 ``[union != 0]``; and the frame's
      ``Σ iou / #(iou != 0)`` (NaN when every IoU is 0, as in the original).
    """
    k = int(num_classes)
    pred, target = np.asarray(pred_cls), np.asarray(gt)
    if pred.ndim != 2 or pred.shape != target.shape:
        raise ValueError(f"avss: expected pred_cls and gt [H, W] of one shape, got {pred.shape} and {target.shape}")
    if k < 1:
        raise ValueError(f"avss: num_classes must be >= 1, got {num_classes}")
    pred, target = pred.astype(np.int64), target.astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= k):
        raise ValueError(f"avss: predicted class ids must lie in [0, {k}), got [{pred.min()}, {pred.max()}]")
    kept = target >= 0
    area_pred = np.bincount(pred[kept], minlength=k)
    area_gt = np.bincount(target[kept & (target < k)], minlength=k)
    inter = np.bincount(pred[kept & (pred == target)], minlength=k)
    inter, area_pred, area_gt = inter.astype(_F32), area_pred.astype(_F32), area_gt.astype(_F32)
    union = area_pred + area_gt - inter
    iou = inter / (_F32(AVSS_IOU_EPS) + union)
    count = (union != 0).astype(_F32)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = _f_beta(inter / area_pred, inter / area_gt)
        frame_miou = np.sum(iou, dtype=_F32) / _F32(np.count_nonzero(iou))
    return iou, f, count, float(frame_miou)


def _per_class_mean(sums: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``sums / count`` with NaN (never seen) -> 0, float32."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sums / count
    return np.where(np.isnan(r), _F32(0), r).astype(_F32)


class AvssScores:
    """``inference_avss``'s accumulation: per-class sums of IoU and F and the presence counts over
    frames (float32), one :func:`avss_frame_stats` per frame.

    Args:
      num_classes: K (AVSBench-semantic: 71, background = 0).
    """

    def __init__(self, num_classes: int = AVSS_NUM_CLASSES):
        self.num_classes = int(num_classes)
        self.iou_sum = np.zeros(self.num_classes, _F32)
        self.f_sum = np.zeros(self.num_classes, _F32)
        self.count = np.zeros(self.num_classes, _F32)
        self.frames = 0

    def add(self, pred_cls, gt) -> float:
        """Adds one frame (``[H, W]`` predicted and ground-truth class ids); returns its frame mIoU."""
        iou, f, count, frame_miou = avss_frame_stats(pred_cls, gt, self.num_classes)
        self.iou_sum += iou
        self.f_sum += f
        self.count += count
        self.frames += 1
        return frame_miou

    def _running(self, sums: np.ndarray) -> float:
        return float(np.sum(_per_class_mean(sums, self.count), dtype=_F32) / _F32(np.count_nonzero(self.count)))

    def running(self) -> dict:
        """What the script prints after each frame: the per-class means averaged over the classes
        seen so far, ``{"mIoU", "F"}``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"mIoU": self._running(self.iou_sum), "F": self._running(self.f_sum)}

    def summary(self) -> dict:
        """The script's final numbers: per-class means (NaN -> 0) averaged over **all** K classes
        (never-seen classes count 0); ``*_noBg`` over the first K - 1, i.e. without the **last**
        class (the AVSBench ``[:-1]`` quirk; the background is class 0 and stays)."""
        miou = _per_class_mean(self.iou_sum, self.count)
        fscore = _per_class_mean(self.f_sum, self.count)
        return {"mIoU": float(np.mean(miou, dtype=_F32)), "F": float(np.mean(fscore, dtype=_F32)),
                "mIoU_noBg": float(np.mean(miou[:-1], dtype=_F32)),
                "F_noBg": float(np.mean(fscore[:-1], dtype=_F32)), "frames": self.frames}
