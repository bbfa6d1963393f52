"""How many frame / audio-segment slots Crab's prompts need, per task and mode, and the run's
``data.frame_slots`` / ``data.audio_slots`` resolved from them.

Every Crab prompt's media is fixed by its task and mode (spec A.3 / A.4, the readers in
:mod:`crab_jax.data.records.crab`, ``pretrain``, ``quick_start``): e.g. a Ref-AVS test
prompt shows the 10-frame video *and* the target frame as an ``<image>`` (11 frames), an AVSS
test prompt one image and one 1-s segment. A slot count below a task's need would reject
every record of that task, whatever its content, so it is a configuration error found at
start-up (:func:`resolve_slots`), not a bad-record count. ``0`` sizes the slots from the run's
tasks. Records of tasks not listed here are checked one by one when decoded.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

from crab_jax.data.records.crab import AVQA_FORMAT_TASKS

# Modes a run's records come in: training, held-out evaluation (the test prompts).
RUN_MODES = ("train", "test")
FROM_TASKS = 0  # data.frame_slots / data.audio_slots value: sized from data.tasks
# Slots when no task shows that medium (visual / audio pretraining): the model's media buffers
# keep one unused slot (static shapes; the branch's output reaches no loss).
MIN_SLOTS = 1


class SlotNeed(NamedTuple):
    frames: int
    audio_segments: int


_AV_CLIP = SlotNeed(10, 10)  # 10 video frames + ten 1-s (AVQA: 2-s) segments (spec A.2.1, A.2.3)
_SINGLE = SlotNeed(1, 1)     # an image + its one 1-s segment (QS prompts, AVSS test)
_AVS = SlotNeed(5, 5)        # AVSBench v1s / v1m: 5 frames, tot = 5
# (task, mode) -> need. Quick start (``quick_start``) is the original's sample-JSON requests.
SLOT_NEEDS: dict[tuple[str, str], SlotNeed] = {
    **{(t, m): _AV_CLIP for t in AVQA_FORMAT_TASKS + ("ave", "avvp", "avcap")
       for m in ("train", "test", "quick_start")},
    ("arig", "train"): SlotNeed(1, 5), ("arig", "test"): SlotNeed(1, 5), ("arig", "quick_start"): _SINGLE,
    **{(t, m): _AVS for t in ("s4", "ms3") for m in ("train", "test")},
    ("s4", "quick_start"): _SINGLE, ("ms3", "quick_start"): _SINGLE,
    ("avss", "train"): _AV_CLIP, ("avss", "test"): _SINGLE, ("avss", "quick_start"): _SINGLE,
    ("ref-avs", "train"): _AV_CLIP, ("ref-avs", "test"): SlotNeed(11, 10),
    ("ref-avs", "quick_start"): SlotNeed(1, 10),
    # Pretraining (spec A.4): audio captions are 1-s windows over 10-s AudioCaps clips.
    ("image_caption", "train"): SlotNeed(1, 0), ("video_caption", "train"): SlotNeed(8, 0),
    ("audio_caption", "train"): SlotNeed(0, 10), ("audio_caption", "test"): SlotNeed(0, 10),
    ("lvis_seg", "train"): SlotNeed(1, 0),
}


def task_needs(tasks: Iterable[str], modes: Sequence[str] = RUN_MODES) -> dict[tuple[str, str], SlotNeed]:
    """The known needs of ``tasks`` in ``modes`` (pairs not in :data:`SLOT_NEEDS` are left out)."""
    return {(t, m): SLOT_NEEDS[(t, m)] for t in tasks for m in modes if (t, m) in SLOT_NEEDS}


def _resolve(configured: int, key: str, needs: dict[tuple[str, str], int], check: bool) -> int:
    largest = max(needs.values(), default=0)
    if int(configured) == FROM_TASKS:
        if not needs:
            raise ValueError(f"config {key}=0 sizes the slots from data.tasks, but none of the tasks has a known "
                             f"media need: set {key} explicitly")
        return max(largest, MIN_SLOTS)
    if int(configured) < 0:
        raise ValueError(f"config {key}={configured}: expected 0 (from data.tasks) or a positive slot count")
    short = {tm: n for tm, n in needs.items() if n > int(configured)} if check else {}
    if short:
        listed = ", ".join(f"{t} ({m} prompts) needs {n}" for (t, m), n in sorted(short.items()))
        raise ValueError(f"config {key}={configured} is too small for the run's tasks: {listed}; every such record "
                         f"would be rejected. Set {key} >= {largest} (or 0: sized from data.tasks)")
    return int(configured)


def resolve_slots(tasks: Iterable[str], frame_slots: int, audio_slots: int, *,
                  modes: Sequence[str] = RUN_MODES, check: bool = True) -> SlotNeed:
    """``(frame slots, audio slots)`` of a run: a configured value, checked (``check``) against
    every need of ``tasks`` in ``modes`` (ValueError naming the task, the need and the config
    key), or for ``0`` the largest need. The ``random`` source has no prompts: it passes
    ``check=False``."""
    needs = task_needs(tuple(tasks), modes)
    return SlotNeed(_resolve(frame_slots, "data.frame_slots", {k: n.frames for k, n in needs.items()}, check),
                    _resolve(audio_slots, "data.audio_slots", {k: n.audio_segments for k, n in needs.items()},
                             check))
