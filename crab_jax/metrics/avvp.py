"""AVVP (LLP) metrics: the original ``utils/avvp_eval_metrics.py`` kernels and the benchmark summary.

Inputs are per-video ``[classes, segments]`` 0/1 label matrices (LLP: 25 × 10; the sizes are taken
from the arrays, where the original hard-codes 25 and 10 in ``event_level``): ``so_*`` predicted,
``gt_*`` annotated, ``*_av = *_a · *_v`` elementwise (the AVVP convention). Both levels return
``(f_a, f_v, f, f_av)`` in float64: per class ``F_c = 2TP / (2TP + FN + FP)`` averaged over the
classes with ``TP + FP ≠ 0`` or ``TP + FN ≠ 0``, 1.0 when no class qualifies (all true negatives);
``f`` ("Event@AV") pools the audio and visual TP / FP / FN per class before the formula.

* Segment level: TP / FN / FP count segments.
* Event level: each class row splits into events (maximal runs of ones); a predicted event is a TP
  when some annotated event of the class has ``|x ∩ y| >= 0.5·|x ∪ y|`` (annotated events are not
  consumed), else an FP; an annotated event matched by no prediction is an FN.

:class:`AvvpScores` gives the reported numbers (spec A.6.2; not in the Crab repository): the means
over videos of each value, Type@AV = (Audio + Visual + Audio-Visual) / 3 of those means, Event@AV =
the mean of ``f``. Values are fractions (the papers print them × 100).
"""

from __future__ import annotations

import math

import numpy as np

EVENT_IOU_THRESHOLD = 0.5
# The LLP benchmark's columns (AvvpScores summary key -> the paper's name), per level.
PAPER_COLUMNS = {"audio": "Audio", "visual": "Visual", "audio_visual": "Audio-Visual", "type_at_av": "Type@AV",
                 "event_at_av": "Event@AV"}


def _labels(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"avvp {name}: expected a [classes, segments] 0/1 matrix, got shape {arr.shape}")
    if not ((arr == 0) | (arr == 1)).all():
        raise ValueError(f"avvp {name}: expected 0/1 entries, got values {np.unique(arr)[:8].tolist()}")
    return arr.astype(np.int64)


def _six(so_a, so_v, so_av, gt_a, gt_v, gt_av) -> list[np.ndarray]:
    names = ("so_a", "so_v", "so_av", "gt_a", "gt_v", "gt_av")
    mats = [_labels(m, n) for m, n in zip((so_a, so_v, so_av, gt_a, gt_v, gt_av), names)]
    shapes = {m.shape for m in mats}
    if len(shapes) != 1:
        raise ValueError(f"avvp: the six label matrices must share one shape, got "
                         f"{dict(zip(names, (m.shape for m in mats)))}")
    return mats


def _f_over_classes(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """Mean of ``2TP / (2TP + FN + FP)`` over the classes with a prediction or an annotation; 1.0
    when there is none. ``[classes]`` counts in, float64 out (summed in class order, as the original)."""
    per_class = [2 * tp[c] / (2 * tp[c] + (fn[c] + fp[c])) for c in range(len(tp))
                 if tp[c] + fp[c] != 0 or tp[c] + fn[c] != 0]
    return float(sum(per_class) / len(per_class)) if per_class else 1.0


def _four(counts_a, counts_v, counts_av) -> tuple[float, float, float, float]:
    """``(f_a, f_v, f, f_av)`` from per-modality ``(TP, FP, FN)`` arrays."""
    pooled = tuple(a + v for a, v in zip(counts_a, counts_v))
    return (_f_over_classes(*counts_a), _f_over_classes(*counts_v), _f_over_classes(*pooled),
            _f_over_classes(*counts_av))


def _segment_counts(so: np.ndarray, gt: np.ndarray):
    """Per-class ``(TP, FP, FN)`` segment counts, float64 ``[classes]``."""
    tp = np.sum(so * gt, axis=1)
    fp = np.sum(so * (1 - gt), axis=1)
    fn = np.sum((1 - so) * gt, axis=1)
    return tp.astype(np.float64), fp.astype(np.float64), fn.astype(np.float64)


def segment_level(so_a, so_v, so_av, gt_a, gt_v, gt_av) -> tuple[float, float, float, float]:
    """The original ``segment_level``: ``(f_a, f_v, f, f_av)`` of one video (float64)."""
    a_p, v_p, av_p, a_g, v_g, av_g = _six(so_a, so_v, so_av, gt_a, gt_v, gt_av)
    return _four(_segment_counts(a_p, a_g), _segment_counts(v_p, v_g), _segment_counts(av_p, av_g))


def extract_events(row: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of ones of a ``[segments]`` 0/1 row as half-open ``(start, end)`` intervals."""
    padded = np.concatenate([[0], np.asarray(row, np.int64), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2])]


def _matches(x: tuple[int, int], y: tuple[int, int]) -> bool:
    inter = max(0, min(x[1], y[1]) - max(x[0], y[0]))
    union = (x[1] - x[0]) + (y[1] - y[0]) - inter
    return inter >= EVENT_IOU_THRESHOLD * union


def _event_counts(so: np.ndarray, gt: np.ndarray):
    """Per-class ``(TP, FP, FN)`` event counts (the original ``event_wise_metric``), float64 ``[classes]``."""
    tp, fp, fn = (np.zeros(so.shape[0]) for _ in range(3))
    for c in range(so.shape[0]):
        predicted, annotated = extract_events(so[c]), extract_events(gt[c])
        hits = sum(any(_matches(x, y) for y in annotated) for x in predicted)
        tp[c], fp[c] = hits, len(predicted) - hits
        fn[c] = sum(not any(_matches(y, x) for x in predicted) for y in annotated)
    return tp, fp, fn


def event_level(so_a, so_v, so_av, gt_a, gt_v, gt_av) -> tuple[float, float, float, float]:
    """The original ``event_level``: ``(f_a, f_v, f, f_av)`` of one video (float64)."""
    a_p, v_p, av_p, a_g, v_g, av_g = _six(so_a, so_v, so_av, gt_a, gt_v, gt_av)
    return _four(_event_counts(a_p, a_g), _event_counts(v_p, v_g), _event_counts(av_p, av_g))


_LEVELS = {"segment_level": segment_level, "event_level": event_level}


class AvvpScores:
    """Per-video AVVP F-scores at both levels and their benchmark summary (means over videos)."""

    def __init__(self):
        self.per_video: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in _LEVELS}

    def add(self, pred_audio, pred_visual, gt_audio, gt_visual) -> dict[str, tuple[float, float, float, float]]:
        """Scores one video from its ``[classes, segments]`` 0/1 matrices (the audio-visual ones are
        the elementwise products); returns ``{"segment_level": (f_a, f_v, f, f_av), "event_level": ...}``."""
        so_a, so_v = _labels(pred_audio, "pred_audio"), _labels(pred_visual, "pred_visual")
        gt_a, gt_v = _labels(gt_audio, "gt_audio"), _labels(gt_visual, "gt_visual")
        out = {}
        for level, fn in _LEVELS.items():
            out[level] = fn(so_a, so_v, so_a * so_v, gt_a, gt_v, gt_a * gt_v)
            self.per_video[level].append(out[level])
        return out

    def summary(self) -> dict:
        """``{"segment_level": {...}, "event_level": {...}, "videos": n}``, each level with ``audio``,
        ``visual``, ``audio_visual`` (means over videos), ``type_at_av`` (their mean) and
        ``event_at_av`` (mean of the pooled ``f``); NaN when no video was added."""
        out: dict = {"videos": len(self.per_video["segment_level"])}
        for level, rows in self.per_video.items():
            means = [math.fsum(col) / len(rows) for col in zip(*rows)] if rows else [float("nan")] * 4
            f_a, f_v, f, f_av = means
            out[level] = {"audio": f_a, "visual": f_v, "audio_visual": f_av,
                          "type_at_av": (f_a + f_v + f_av) / 3, "event_at_av": f}
        return out

    def paper_rows(self) -> list[tuple[str, float, int]]:
        """The benchmark table: ``[("segment Audio", value, videos), ..., ("event Event@AV", ...)]``,
        the :data:`PAPER_COLUMNS` at segment level, then at event level."""
        s = self.summary()
        return [(f"{level.replace('_level', '')} {name}", float(s[level][key]), int(s["videos"]))
                for level in ("segment_level", "event_level") for key, name in PAPER_COLUMNS.items()]
