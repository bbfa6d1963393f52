"""Parsers of Crab+ answer texts and GT strings, on texts written here."""

from __future__ import annotations

import pytest

from crab_jax.data.records.crab_answers import LLP_CLASSES
from crab_jax.families.crab_plus import answers as P


def test_answer_label_takes_the_last_answer_normalised():
    text = "First I thought <answer>Sad</answer>, but the voice rises. <answer>  Happy\n Surprise </answer>."
    assert P.answer_label(text) == "happy surprise"
    assert P.answer_label("no tag here") is None
    assert P.answer_label("<answer>unclosed") is None
    assert P.reference_label("<answer>Joy</answer>.") == "joy"
    assert P.reference_label(" Two ") == "two"  # AVQA's bare answer


@pytest.mark.parametrize("text, index", [("<answer>1</answer>.", 1), ("<answer>2</answer>", 2),
                                         ("so <answer> One </answer>", 1), ("<answer>two.</answer>", 2),
                                         ("<answer>3</answer>", None), ("the second video", None),
                                         ("<answer>first</answer>", None)])
def test_choice_index(text, index):
    assert P.parse_choice_index(text) == index


def test_multiple_choice_text_letter_and_index():
    options = ["Church bell", "Drum", "Dog", "Piano"]
    assert P.parse_multiple_choice("It is <answer>Drum</answer>", options) == "drum"
    assert P.parse_multiple_choice("<answer>(c)</answer>", options) == "dog"
    assert P.parse_multiple_choice("<answer>d.</answer>", options) == "piano"
    assert P.parse_multiple_choice("<answer>z</answer>", options) == "z"  # no 26th option: kept as said
    assert P.parse_multiple_choice("no answer", options) is None
    assert P.multiple_choice_answers(1, options) == ("drum", "1")
    assert P.multiple_choice_answers("3", options) == ("piano", "3")
    assert P.multiple_choice_answers("b", options) == ("drum", "b")
    assert P.multiple_choice_answers("Dog", options) == ("dog",)
    assert P.multiple_choice_answers(7, options) == ("7",) and P.multiple_choice_answers(1, None) == ("1",)
    assert P.option_list("['a', 'b']") == ["a", "b"] and P.option_list('["a"]') == ["a"]
    assert P.option_list("not a list") is None
    instruction = "Please answer the question based on the options: What sounds?, options:['Drum', 'Dog']"
    assert P.instruction_options(instruction) == ["Drum", "Dog"]


def test_ave_both_forms():
    crab = "The event is <event> Church bell </event> at <range> 2,5 </range>."
    assert P.parse_ave(crab) == [None, None] + ["church bell"] * 3 + [None] * 5
    gt_form = "Reasoning... <answer>event:Church bell start_time:7 end_time:10</answer>"
    assert P.parse_ave(gt_form) == [None] * 7 + ["church bell"] * 3
    assert P.parse_ave("<event>dog</event> without a range") is None
    assert P.parse_ave("nothing") is None
    assert P.parse_ave_reference("event:Dog barking start_time:0 end_time:10") == ("Dog barking", 0, 10)
    assert P.parse_ave_reference("Dog barking") is None


def test_avvp_prefers_the_answer_when_it_holds_events():
    speech, dog = LLP_CLASSES.index("Speech"), LLP_CLASSES.index("Dog")
    text = ("I hear <audio_event>Dog,(0 3)</audio_event> maybe. "
            "<answer><audio_event>Speech,(2 5)</audio_event><visual_event>Dog,(0 1)</visual_event></answer>")
    p = P.parse_avvp(text)
    assert p.found and p.audio[speech, 2:5].all() and p.audio.sum() == 3
    assert p.visual[dog, 0] == 1 and p.visual.sum() == 1
    # An answer without events: the whole text is parsed.
    whole = P.parse_avvp("<audio_event>Dog,(0 3)</audio_event> so <answer>done</answer>")
    assert whole.found and whole.audio[dog, :3].all() and whole.audio.sum() == 3
    assert not P.parse_avvp("<answer>no events</answer>").found


def test_boxes_both_forms_and_validity():
    assert P.parse_box("The sounding object is dog. Its coordinates are <obj>(10,20)(110,120)</obj>.") == (10, 20, 110, 120)
    assert P.parse_box("the box is [12,30,200,211]") == (12, 30, 200, 211)
    assert P.parse_box("no box") is None and P.parse_box("[1,2,3]") is None
    assert P.valid_box((0, 0, 1, 1)) and not P.valid_box((50, 10, 40, 60)) and not P.valid_box((5, 5, 5, 9))


def test_ref_avs_exists():
    assert P.parse_ref_avs_exists("<answer>true</answer> The dog at [1,2,30,40].") is True
    assert P.parse_ref_avs_exists("<answer> False </answer> it is absent") is False
    assert P.parse_ref_avs_exists("<answer>true</answer> ... <answer>false</answer>") is False  # a negative wins
    assert P.parse_ref_avs_exists("the dog is there") is None


def test_avqa_question_types():
    assert P.avqa_question_types('["Audio", "Counting"]') == ("Audio", "Counting")
    assert P.avqa_question_types(["Visual", "Location"]) == ("Visual", "Location")
    assert P.avqa_question_types("Audio Counting") is None and P.avqa_question_types([1, 2]) is None
