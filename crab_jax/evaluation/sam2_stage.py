"""The SAM2 second stage (spec B.6): a predictions file's answers -> SAM 2.1 masks -> a new predictions file.

For every line whose task has a mask (``family.mask_prompts(task, predict)`` is not None) the
family parses the answer into a prompt (box and / or up to 3 points in the pixels of the
224x224 frame, or a negative); a valid prompt's frame (``image_path``, relative to the data
root or absolute) is read as RGB, resized to 224x224 with PIL LANCZOS and segmented by SAM 2.1
(``multimask_output=False``; the mask is ``logits > 0`` at 224x224); a negative's mask is all
zeros (SAM2 is not run; its frame is still read, as the original needs it). Every input line is
copied to the output in input order, flushed as it goes (:class:`OrderedJsonLines`); the lines
of mask tasks gain :data:`FIELDS`:

  sam2_valid, sam2_reason, sam2_negative, sam2_box ([x1, y1, x2, y2] or None),
  sam2_points ([[x, y], ...]), pred_mask_path (valid lines: a 224x224 PNG, 0 / 255, relative
  to the output file's folder; an input line's earlier ``pred_mask_path`` is dropped),
  sam2_image_error (a frame that could not be read).

One compiled predictor serves every prompt kind: a fixed batch of frames, a box slot with a
present flag and :data:`POINT_SLOTS` point slots with a validity mask (a partial batch is
completed with filler rows whose masks are dropped). ``bf16`` runs the matmuls and
convolutions in bfloat16 (the original's ``torch.autocast(bfloat16)``; norms and softmax
statistics stay float32).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
from typing import Any, Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image
from tqdm import tqdm

from crab_jax.evaluation.mask_files import binary_mask_image
from crab_jax.evaluation.prediction_lines import OrderedJsonLines
from crab_jax.families.base import Family
from crab_jax.models.layers import Conv2d, Linear
from crab_jax.models.sam2.model import Sam2ImageModel, predict_masks

FRAME_SIZE = 224  # B.6: frames are LANCZOS-resized to 224x224; prompts and masks are in its pixels
POINT_SLOTS = 3  # the most points a prompt has (B.6 keeps the last 3)
OUTPUT_FILE = "sam2_predictions.jsonl"
MASK_DIR = "sam2_masks"
SUMMARY_FILE = "sam2_summary.json"
FIELDS = ("sam2_valid", "sam2_reason", "sam2_negative", "sam2_box", "sam2_points", "pred_mask_path",
          "sam2_image_error")
IMAGE_UNREADABLE = "image not readable"
NO_PREDICTION = "no prediction"
MAX_PENDING = 4  # negatives wait with the prompts at most this many batches (their lines are written then)
LOADER_THREADS = 4  # frames are decoded and resized in threads (PIL releases the GIL)


# ----------------------------------------------------------------------------------- frames

def load_frame(path: str, size: int = FRAME_SIZE) -> np.ndarray:
    """``Image.open(path).convert('RGB').resize((size, size), LANCZOS)`` -> ``[size, size, 3]`` uint8."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), np.uint8)


def frame_path(line: Mapping[str, Any], data_root: str) -> str:
    path = line.get("image_path")
    if not path:
        raise ValueError("the line has no image_path")
    return path if os.path.isabs(path) else os.path.join(data_root, path)


# ----------------------------------------------------------------------------------- predictor

def autocast_bf16(model: Sam2ImageModel) -> None:
    """Runs ``model``'s Linear and Conv2d layers in bfloat16 (weights stay float32, cast per call)."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, (Linear, Conv2d)):
            module.dtype = jnp.bfloat16


@nnx.jit  # one compile per model structure and batch shape, shared by every predictor
def _segment(model, images, boxes, box_valid, points, point_valid):
    logits, _ = predict_masks(model, images, boxes, points, None, point_valid, box_valid=box_valid)
    return logits > 0


class Sam2Predictor:
    """A compiled SAM2 predictor over a fixed batch (see the module docstring); ``bf16`` switches
    ``model``'s layers to bfloat16 in place (:func:`autocast_bf16`)."""

    def __init__(self, model: Sam2ImageModel, batch_size: int, *, bf16: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if bf16:
            autocast_bf16(model)
        self.model, self.batch_size = model, batch_size

    def __call__(self, frames: list[np.ndarray], prompts: list) -> np.ndarray:
        """``frames`` (``[S, S, 3]`` uint8) with their prompts (``box`` / ``points``) -> ``[n, S, S]`` bool."""
        n, b = len(frames), self.batch_size
        if not 0 < n <= b:
            raise ValueError(f"{n} frames for a batch of {b}")
        images = np.zeros((b,) + frames[0].shape, np.uint8)
        boxes, box_valid = np.zeros((b, 4), np.float32), np.zeros((b,), bool)
        points, point_valid = np.zeros((b, POINT_SLOTS, 2), np.float32), np.zeros((b, POINT_SLOTS), bool)
        point_valid[n:, 0] = True  # filler rows: one point at (0, 0), their masks are dropped
        for i, (frame, prompt) in enumerate(zip(frames, prompts)):
            images[i] = frame
            if prompt.box is not None:
                boxes[i], box_valid[i] = prompt.box, True
            if len(prompt.points) > POINT_SLOTS:
                raise ValueError(f"a prompt has {len(prompt.points)} points, the predictor {POINT_SLOTS} slots")
            for j, point in enumerate(prompt.points):
                points[i, j], point_valid[i, j] = point, True
        masks = _segment(self.model, images, boxes, box_valid, points, point_valid)
        return np.asarray(masks)[:n]


# ----------------------------------------------------------------------------------- summary

@dataclasses.dataclass
class StageSummary:
    """What the stage did: ``counts[task][outcome]`` with outcome ``'valid'``, ``'negative'`` or
    ``'invalid: <reason>'``; ``lines`` input lines, ``passed`` of tasks without a mask."""

    counts: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    lines: int = 0
    passed: int = 0

    def add(self, task: str, outcome: str) -> None:
        self.counts.setdefault(task, collections.Counter())[outcome] += 1

    def as_json(self) -> dict:
        return {"lines": self.lines, "passed_through": self.passed,
                "tasks": {t: dict(sorted(c.items())) for t, c in sorted(self.counts.items())}}

    def format(self) -> str:
        out = [f"{self.lines} lines: {self.lines - self.passed} with a mask task, {self.passed} passed through"]
        for task, counts in sorted(self.counts.items()):
            valid = counts["valid"] + counts["negative"]
            out.append(f"  {task}: {valid} valid ({counts['negative']} negative), {sum(counts.values()) - valid} "
                       "invalid")
            out += [f"    {k[len('invalid: '):]}: {v}" for k, v in sorted(counts.items()) if k.startswith("invalid: ")]
        return "\n".join(out)


# ----------------------------------------------------------------------------------- the stage

def prompt_fields(prompt) -> dict[str, Any]:
    return {"sam2_valid": bool(prompt.valid), "sam2_reason": prompt.reason, "sam2_negative": bool(prompt.negative),
            "sam2_box": None if prompt.box is None else [int(v) for v in prompt.box],
            "sam2_points": [[int(x), int(y)] for x, y in prompt.points]}


def read_lines(path: str) -> list[dict]:
    lines = []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if text.strip():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not a JSON line ({e})") from e
    return lines


@dataclasses.dataclass
class _Pending:
    index: int
    line: dict
    prompt: Any
    frame: np.ndarray | None = None


class _Stage:
    """One run: lines in, lines / masks / counts out (see :func:`run_stage`)."""

    def __init__(self, predictor: Sam2Predictor, writer: OrderedJsonLines, out_dir: str, data_root: str,
                 summary: StageSummary, bar: tqdm):
        self.predictor, self.writer, self.out_dir, self.data_root = predictor, writer, out_dir, data_root
        self.summary, self.bar = summary, bar
        self.pool = concurrent.futures.ThreadPoolExecutor(LOADER_THREADS)
        os.makedirs(os.path.join(out_dir, MASK_DIR), exist_ok=True)

    def emit(self, index: int, line: dict, task: str | None, outcome: str | None) -> None:
        if outcome is not None:
            self.summary.add(task, outcome)
        self.writer.add(index, line)
        self.bar.update(1)

    def invalid(self, item: _Pending, reason: str, **extra) -> None:
        line = dict(item.line, **prompt_fields(item.prompt), **extra)
        line.update(sam2_valid=False, sam2_reason=reason, sam2_negative=False)
        self.emit(item.index, line, item.line.get("task"), f"invalid: {reason}")

    def write_mask(self, item: _Pending, mask: np.ndarray) -> None:
        relative = os.path.join(MASK_DIR, f"{item.index:06d}_pred.png")
        # as ±1 logits through mask_files' encoder: the same 0 / 255 'P' PNG as every binary mask file
        binary_mask_image(np.where(mask, 1.0, -1.0)).save(os.path.join(self.out_dir, relative), format="PNG")
        line = dict(item.line, **prompt_fields(item.prompt), pred_mask_path=relative)
        self.emit(item.index, line, item.line.get("task"), "negative" if item.prompt.negative else "valid")

    def flush(self, pending: list[_Pending]) -> None:
        """Reads the frames of ``pending``, segments those with a prompt, writes every line."""
        def read(item):
            try:
                path = frame_path(item.line, self.data_root)
            except ValueError as e:
                return None, str(e)
            try:
                return load_frame(path), None
            except Exception as e:  # missing or undecodable: this line fails alone
                return None, f"{path}: {e}"

        ready = []
        for item, (frame, error) in zip(pending, self.pool.map(read, pending)):
            if error is not None:
                self.invalid(item, IMAGE_UNREADABLE, sam2_image_error=error)
            elif item.prompt.negative:
                self.write_mask(item, np.zeros((FRAME_SIZE, FRAME_SIZE), bool))
            else:
                item.frame = frame
                ready.append(item)
        if ready:
            masks = self.predictor([it.frame for it in ready], [it.prompt for it in ready])
            for item, mask in zip(ready, masks):
                self.write_mask(item, mask)

    def close(self) -> None:
        self.pool.shutdown()


def run_stage(family: Family, predictions: str, model: Sam2ImageModel, out_dir: str, *,
              data_root: str | None = None, batch_size: int = 8, bf16: bool = False,
              progress: bool = True) -> StageSummary:
    """Runs the stage over ``predictions`` (a ``.jsonl``) into ``out_dir`` (:data:`OUTPUT_FILE`,
    :data:`MASK_DIR`/, :data:`SUMMARY_FILE`); relative image paths are read under ``data_root``
    (default: the predictions file's folder)."""
    if family.mask_prompts is None:
        raise ValueError(f"model family {family.name!r} has no SAM2 stage (its Family has no mask_prompts hook)")
    out_dir = os.fspath(out_dir)
    output = os.path.join(out_dir, OUTPUT_FILE)
    if os.path.abspath(output) == os.path.abspath(predictions):
        raise ValueError(f"{output}: the output would overwrite the predictions file; choose another --out")
    data_root = data_root if data_root is not None else os.path.dirname(os.path.abspath(predictions))
    lines = read_lines(predictions)
    summary = StageSummary(lines=len(lines))
    predictor = Sam2Predictor(model, batch_size, bf16=bf16)
    bar = tqdm(total=len(lines), desc="sam2", unit="line", disable=not progress, dynamic_ncols=True)
    with OrderedJsonLines(output) as writer:
        stage = _Stage(predictor, writer, out_dir, data_root, summary, bar)
        try:
            _run(stage, family, lines, batch_size)
        finally:
            stage.close()
            bar.close()
    with open(os.path.join(out_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary.as_json(), f, indent=2)
    return summary


def _run(stage: _Stage, family: Family, lines: Iterable[dict], batch_size: int) -> None:
    pending: list[_Pending] = []
    to_segment = 0
    for index, line in enumerate(lines):
        task = line.get("task")
        prompt = family.mask_prompts(task, line.get("predict") or "") if task else None
        if prompt is None:
            stage.summary.passed += 1
            stage.emit(index, line, None, None)
            continue
        item = _Pending(index, line, prompt)
        line.pop("pred_mask_path", None)  # the stage's mask replaces any earlier one
        if "predict" not in line:
            stage.invalid(item, NO_PREDICTION)
        elif not prompt.valid:
            stage.invalid(item, prompt.reason)
        else:
            pending.append(item)
            to_segment += not prompt.negative
            if to_segment == batch_size or len(pending) == MAX_PENDING * batch_size:
                stage.flush(pending)
                pending, to_segment = [], 0
    if pending:
        stage.flush(pending)
