"""Parsers of Crab+'s answer texts and of the GT strings its test loader stores (spec B.3, B.7).

Crab+ decodes with ``skip_special_tokens=True``, so a text is the plain answer; the label tasks
wrap it as ``<answer>...</answer>`` after their reasoning. Where a format is Crab's, Crab's parser
(:mod:`crab_jax.data.records.crab_answers`) is used as is. Every parser returns None when the
text does not hold its format (the scorer counts that unparsable).

* :func:`answer_label`: the text of the **last** ``<answer>...</answer>``, lower case, runs of
  whitespace as one space (B.7); :func:`reference_label` the same for a GT string, which may be
  the bare label (AVQA's ``answer``).
* :func:`parse_choice_index`: a2v / v2a, ``1`` / ``2`` / ``one`` / ``two`` (the GT string is
  ``<answer>1</answer>.``, B.3 quirk).
* :func:`parse_multiple_choice`: AVQA-THU, the chosen option text, or a letter ``a``-``d`` naming
  one of the options; :func:`multiple_choice_answers` the texts accepted for its ``answer``.
* :func:`parse_ave`: AVE, Crab's ``<event> E </event> ... <range> s,e </range>`` or the test-GT
  form ``event:E start_time:s end_time:e`` -> 10 slots; :func:`parse_ave_reference` the GT.
* :func:`parse_avvp`: AVVP event matrices (Crab's parser), from the last ``<answer>`` when that
  holds events, else from the whole text.
* :func:`parse_box` / :func:`valid_box`: ARIG, ``<obj>(x1,y1)(x2,y2)</obj>`` (the test GT, B.3
  quirk) or ``[x1,y1,x2,y2]``.
* :func:`parse_ref_avs_exists`: Ref-AVS ``<answer>true</answer>`` / ``<answer>false</answer>``.
* :func:`avqa_question_types`: MUSIC-AVQA's ``type`` field.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Sequence

from crab_jax.data.records import crab_answers as A

AVE_SLOTS = A.AVE_SLOTS
# a2v / v2a: the answer words of the two choices.
_CHOICE_WORDS = {"1": 1, "2": 2, "one": 1, "two": 2}
# The unanchored AVE test-GT form inside an answer ("event:Church bell start_time:2 end_time:7").
_AVE_FIELDS = re.compile(r"event:\s*(.*?)\s*start_time:\s*(\d+)\s*,?\s*end_time:\s*(\d+)", re.S | re.I)
# A bare option letter as an AVQA-THU answer: "b", "(b)", "b." or "b)".
_OPTION_LETTER = re.compile(r"^\(?([a-z])[\).]?$")
# The options list of the original's AVQA-THU instruction ("... options:['x', 'y']").
_INSTRUCTION_OPTIONS = re.compile(r"options:\s*(\[.*\])", re.S)
_TRAILING_PUNCTUATION = " .,;:!"


def answer_label(text: str) -> str | None:
    """The normalised text of the last ``<answer>...</answer>``, or None."""
    return A.parse_answer(text)


def reference_label(output: str) -> str:
    """The label of a GT string: its last ``<answer>`` when it has one (``<answer>joy</answer>.``,
    a training target), else the whole string normalised (AVQA's bare ``answer``)."""
    label = A.parse_answer(output)
    return label if label is not None else A.normalise_label(A.clean_output(output))


def parse_choice_index(text: str) -> int | None:
    """a2v / v2a: 1 or 2 from the last ``<answer>`` (``1``, ``2``, ``one``, ``two``), else None."""
    label = A.parse_answer(text)
    return None if label is None else _CHOICE_WORDS.get(label.strip(_TRAILING_PUNCTUATION))


# ----------------------------------------------------------------------------- AVQA-THU


def option_list(value: Any) -> list[str] | None:
    """AVQA-THU's ``multi_choice``: a list, or its JSON / Python-literal text; None otherwise."""
    if isinstance(value, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(value)
                break
            except (ValueError, SyntaxError):
                continue
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    return None


def instruction_options(instruction: str) -> list[str] | None:
    """The options of the original's AVQA-THU instruction text (``... options:[...]``), or None."""
    m = _INSTRUCTION_OPTIONS.search(str(instruction))
    return option_list(m.group(1)) if m else None


def multiple_choice_answers(answer: Any, options: Sequence[str] | None) -> tuple[str, ...]:
    """The normalised texts that count as AVQA-THU's ``answer``: that option's text first when the
    answer is an integer index into ``options`` (0-based, as AVQA stores it [verify against
    AVUIE_2]) or an option letter (``a`` = the first), then the answer itself."""
    label = reference_label(str(answer))
    if not options:
        return (label,)
    if isinstance(answer, int) or label.isdigit():
        index = int(answer) if isinstance(answer, int) else int(label)
    else:
        m = _OPTION_LETTER.match(label)
        index = ord(m.group(1)) - ord("a") if m else None
    if index is not None and 0 <= index < len(options):
        return tuple(dict.fromkeys((A.normalise_label(options[index]), label)))
    return (label,)


def parse_multiple_choice(text: str, options: Sequence[str] | None) -> str | None:
    """The chosen option of an AVQA-THU answer, normalised: the last ``<answer>``'s text; a bare
    letter ``a``, ``(b)``, ``c.`` becomes the text of that option when ``options`` has it."""
    label = A.parse_answer(text)
    if label is None:
        return None
    label = label.rstrip(_TRAILING_PUNCTUATION) or label
    m = _OPTION_LETTER.match(label)
    if m and options:
        k = ord(m.group(1)) - ord("a")
        if k < len(options):
            return A.normalise_label(options[k])
    return label


# ----------------------------------------------------------------------------- AVE / AVVP


def parse_ave(text: str) -> list[str | None] | None:
    """AVE's 10 slots (``[s, e)`` = the normalised event): Crab's ``<event>`` / ``<range>`` tags, else
    the first ``event:E start_time:s end_time:e``; None when the text has neither."""
    slots = A.parse_ave(text)
    if slots is not None:
        return slots
    m = _AVE_FIELDS.search(A.clean_output(text))
    if m is None:
        return None
    return A.ave_slots(A.normalise_label(m.group(1)), (int(m.group(2)), int(m.group(3))))


def parse_ave_reference(output: str) -> tuple[str, int, int] | None:
    """``(event, start_time, end_time)`` of the GT string ``event:E start_time:s end_time:e``."""
    return A.parse_ave_reference(output)


_ANSWER_BODY = re.compile(r"<answer>(.*?)</answer>", re.S)


def parse_avvp(text: str) -> A.AvvpParse:
    """AVVP audio / visual event matrices (:func:`crab_jax.data.records.crab_answers.parse_avvp`)
    of the last ``<answer>`` when it holds events, else of the whole text (``found`` False when
    neither does)."""
    bodies = _ANSWER_BODY.findall(A.clean_output(text))
    if bodies:
        inner = A.parse_avvp(bodies[-1])
        if inner.found:
            return inner
    return A.parse_avvp(text)


# ----------------------------------------------------------------------------- ARIG / Ref-AVS


def parse_box(text: str) -> tuple[int, int, int, int] | None:
    """The first box ``(x1, y1, x2, y2)``: Crab's parser (the first two ``(x,y)`` pairs, as in
    ``<obj>(x1,y1)(x2,y2)</obj>``, else the first ``[x1,y1,x2,y2]``)."""
    return A.parse_box(text)


def valid_box(box: Sequence[int]) -> bool:
    """A box with a positive area, corners in order (``x1 < x2``, ``y1 < y2``)."""
    x1, y1, x2, y2 = box
    return x1 < x2 and y1 < y2


def parse_ref_avs_exists(text: str) -> bool | None:
    """Ref-AVS's existence answer: False when any ``<answer>`` says ``false`` (the SAM2 script's
    rule: a negative wins), True when one says ``true``, else None. Case and spaces inside the
    tag are ignored (the script compares the exact strings)."""
    said = {A.normalise_label(x) for x in _ANSWER_BODY.findall(A.clean_output(text))}
    if "false" in said:
        return False
    return True if "true" in said else None


# ----------------------------------------------------------------------------- AVQA


def avqa_question_types(value: Any) -> tuple[str, ...] | None:
    """MUSIC-AVQA's ``type``: a list ``["Audio", "Counting"]`` or its JSON text; None otherwise."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None
