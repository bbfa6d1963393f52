"""Parsers of Crab's AV-UIE answer texts (spec A.6.0-A.6.4, target formats of A.3).

Every parser takes a decoded generation as it comes out of the model or out of the original's
``infer_results.jsonl`` (``<s>`` in front, ``</s>`` at the end, or neither: AVVP decodes with
``skip_special_tokens=True``) and returns None (or an empty parse) when the text does not hold
the answer format; a scorer counts that as wrong and reports it as unparsable.

* AVQA: the text of the **last** ``<answer> x </answer>``.
* AVE: ``<event> E </event>`` and ``<range> s,e </range>`` -> 10 slots, ``[s, e)`` = E.
* AVVP: ``<audio_event>`` / ``<visual_event>`` (or README-style ``<audio>`` / ``<visual>``,
  or a label text ``Audio: C, [s,e] Visual: ...``) holding ``Class,(s e)[,(s e)...]`` ->
  ``[25, 10]`` 0/1 matrices over :data:`LLP_CLASSES`, slots ``s..e-1``.
* ARIG: the first two ``(x,y)`` pairs (``<obj>(x1,y1)(x2,y2)</obj>`` or the train-style
  sentence), else a ``[x1,y1,x2,y2]`` list.
* S4 / MS3 category: the ``X`` of "... making the sound in the video is X."
"""

from __future__ import annotations

import dataclasses
import re
import numpy as np

AVE_SLOTS = 10
AVVP_SEGMENTS = 10

# The 25 LLP event classes (spec A.6.2). Order only has to be the same for prediction and GT.
LLP_CLASSES = ("Speech", "Car", "Cheering", "Dog", "Cat", "Frying_(food)", "Basketball_bounce", "Fire_alarm",
               "Chainsaw", "Cello", "Banjo", "Singing", "Chicken_rooster", "Violin_fiddle", "Vacuum_cleaner",
               "Baby_laughter", "Accordion", "Lawn_mower", "Motorcycle", "Helicopter", "Acoustic_guitar",
               "Telephone_bell_ringing", "Baby_cry_infant_cry", "Blender", "Clapping")

_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
_EVENT = re.compile(r"<event>\s*(.*?)\s*</event>", re.S)
_RANGE = re.compile(r"<range>\s*(\d+)\s*,\s*(\d+)\s*</range>")
_AVE_GT = re.compile(r"^\s*event:(.*?)\s+start_time:\s*(-?\d+)\s+end_time:\s*(-?\d+)\s*$", re.S)
_POINT = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_BOX_LIST = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")
_S4_OBJECT = re.compile(r"making the sound in the video is\s*(.*?)\s*(?:\.|<|$)", re.S)
_ARIG_OBJECT = re.compile(r"sounding object is\s*(.*?)\s*(?:\.\s|\.$|<|$)", re.S)
_AVVP_TAGS = {"audio": re.compile(r"<audio(?:_event)?>(.*?)</audio(?:_event)?>", re.S),
              "visual": re.compile(r"<visual(?:_event)?>(.*?)</visual(?:_event)?>", re.S)}
# Label-text sections ("Audio: Chainsaw, [0,10]  Visual: Chainsaw, [0,1],[3,6]").
_AVVP_SECTION = re.compile(r"\b(audio|visual)\s*:", re.I)
# One time range of an AVVP event: "(s e)", "(s,e)", "[s,e]" or "[s e]".
_SPAN = re.compile(r"[\(\[]\s*(\d+)\s*[\s,]\s*(\d+)\s*[\)\]]")
_SPAN_RUN = re.compile(r"(?:[\(\[]\s*\d+\s*[\s,]\s*\d+\s*[\)\]]\s*,?\s*)+")


# ----------------------------------------------------------------------------- text


def clean_output(text: str) -> str:
    """Drops the ``<s>`` / ``</s>`` markers of a decoded generation (cut at the first ``</s>``)."""
    text = str(text).split("</s>", 1)[0]
    return text.replace("<s>", "").strip()


def normalise_label(text: str) -> str:
    """Lower case, runs of whitespace as one space (labels are compared this way)."""
    return " ".join(str(text).lower().split())


# ----------------------------------------------------------------------------- AVQA


def parse_answer(text: str) -> str | None:
    """Normalised text of the LAST ``<answer>...</answer>``, or None."""
    found = _ANSWER.findall(clean_output(text))
    return normalise_label(found[-1]) if found else None


# ----------------------------------------------------------------------------- AVE


def parse_event(text: str) -> tuple[str | None, tuple[int, int] | None]:
    """``(label, (start, end))`` from ``<event>`` / ``<range>``; None where absent."""
    text = clean_output(text)
    ev, rg = _EVENT.search(text), _RANGE.search(text)
    return (normalise_label(ev.group(1)) if ev else None, (int(rg.group(1)), int(rg.group(2))) if rg else None)


def ave_slots(label: str | None, span: tuple[int, int] | None, slots: int = AVE_SLOTS) -> list[str | None]:
    """Slot ``t`` in ``[s, e)`` holds the label, the others background (None)."""
    out: list[str | None] = [None] * slots
    if label is None or span is None:
        return out
    for t in range(max(0, span[0]), min(slots, span[1])):
        out[t] = label
    return out


def parse_ave(text: str, slots: int = AVE_SLOTS) -> list[str | None] | None:
    """The 10 slots of an AVE answer, or None when it lacks ``<event>`` or ``<range>``."""
    label, span = parse_event(text)
    return None if label is None or span is None else ave_slots(label, span, slots)


def parse_ave_reference(output: str) -> tuple[str, int, int] | None:
    """``(event, start_time, end_time)`` of the original's AVE GT string
    ``"event:{event} start_time:{start} end_time:{end}"`` (``</s>`` tolerated), or None."""
    m = _AVE_GT.match(clean_output(output))
    return (m.group(1).strip(), int(m.group(2)), int(m.group(3))) if m else None


# ----------------------------------------------------------------------------- AVVP


def class_key(name: str) -> str:
    """Case / space / underscore / punctuation-insensitive key of an event class name."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_LLP_INDEX = {class_key(c): i for i, c in enumerate(LLP_CLASSES)}


@dataclasses.dataclass(frozen=True)
class AvvpParse:
    """An AVVP answer as 0/1 matrices ``[len(LLP_CLASSES), AVVP_SEGMENTS]`` (int64).

    found: the text held at least one audio or visual section (else it is unparsable).
    unknown: class names that are not LLP classes (their events are left out).
    """

    audio: np.ndarray
    visual: np.ndarray
    found: bool
    unknown: tuple[str, ...]


def _events(body: str) -> list[tuple[str, list[tuple[int, int]]]]:
    """``[(class name, [(s, e), ...])]`` of one section ``Class,(s e)[,(s e)...][; Class2,(s e)...]``:
    a name is the text between the previous range run and its own."""
    out, pos = [], 0
    for run in _SPAN_RUN.finditer(body):
        name = body[pos:run.start()].strip(" \t\n,;.")
        name = re.sub(r"^(?:and|&)\s+", "", name, flags=re.I).strip(" \t\n,;.")
        spans = [(int(s), int(e)) for s, e in _SPAN.findall(run.group(0))]
        if name:
            out.append((name, spans))
        pos = run.end()
    return out


def _sections(text: str) -> dict[str, list[str]]:
    """Section bodies per modality: the tags, else the ``Audio:`` / ``Visual:`` label text."""
    found = {m: pat.findall(text) for m, pat in _AVVP_TAGS.items()}
    if any(found.values()):
        return found
    heads = list(_AVVP_SECTION.finditer(text))
    out: dict[str, list[str]] = {"audio": [], "visual": []}
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(text)
        out[head.group(1).lower()].append(text[head.end():end])
    return out


def parse_avvp(text: str, segments: int = AVVP_SEGMENTS) -> AvvpParse:
    """Audio and visual event matrices of an AVVP answer or label text (see :class:`AvvpParse`)."""
    sections = _sections(clean_output(text))
    mats = {m: np.zeros((len(LLP_CLASSES), segments), np.int64) for m in ("audio", "visual")}
    unknown = []
    for modality, bodies in sections.items():
        for body in bodies:
            for name, spans in _events(body):
                row = _LLP_INDEX.get(class_key(name))
                if row is None:
                    unknown.append(name)
                    continue
                for s, e in spans:
                    mats[modality][row, max(0, s):min(segments, e)] = 1
    return AvvpParse(mats["audio"], mats["visual"], any(sections.values()), tuple(unknown))


# ----------------------------------------------------------------------------- ARIG


def parse_box(text: str) -> tuple[int, int, int, int] | None:
    """First box ``(x1, y1, x2, y2)``: the first two ``(x,y)`` pairs, else the first ``[x1,y1,x2,y2]``."""
    text = clean_output(text)
    points = _POINT.findall(text)
    if len(points) >= 2:
        (x1, y1), (x2, y2) = points[:2]
        return int(x1), int(y1), int(x2), int(y2)
    m = _BOX_LIST.search(text)
    return tuple(int(v) for v in m.groups()) if m else None


def parse_arig_object(text: str) -> str | None:
    """The ``X`` of "The sounding object is X." (normalised), or None."""
    m = _ARIG_OBJECT.search(clean_output(text))
    return normalise_label(m.group(1)) if m else None


# ----------------------------------------------------------------------------- S4 / MS3 category


def parse_s4_object(text: str) -> str | None:
    """The ``X`` of "... making the sound in the video is X." (normalised), or None."""
    m = _S4_OBJECT.search(clean_output(text))
    return normalise_label(m.group(1)) if m else None

