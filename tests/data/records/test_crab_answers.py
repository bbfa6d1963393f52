"""Parsers of Crab's AV-UIE answer texts: every format of spec A.3 / A.6, the README's examples."""

from __future__ import annotations

import numpy as np

from crab_jax.data.records import crab_answers as A

# The original README's example predictions (spec A.3.1-A.3.3).
README_AVQA = ("In the video, four men are playing musical instruments. ... So the instrument on the left of the "
               "first sounding instrument is the saxophone. So the answer is <answer> saxophone </answer>.")
README_AVE = ("A man is giving a speech from a podium in a classroom. The man speaks from the beginning of the video "
              "until the 8th second. So the audible and visible event in the video is <event> Male speech, man "
              "speaking </event>, and the time range is <range> 0,8 </range>.")
README_AVVP = ("The video shows a man using a chainsaw to cut a tree. ... Therefore, visual and audio events are: "
               "<visual>Chainsaw,(0 10)</visual> and <audio>Chainsaw,(0 10)</audio>")
README_AVVP_LABEL = "Audio: Chainsaw, [0,10]  Visual: Chainsaw, [0,1],[3,6],[9,10]"


def row_of(cls: str) -> int:
    return A.LLP_CLASSES.index(cls)


def test_markers_are_stripped_and_avqa_takes_the_last_answer():
    assert A.clean_output("<s> text </s><unk> more") == "text"
    assert A.parse_answer("<s>" + README_AVQA + "</s>") == "saxophone"
    assert A.parse_answer("<answer> one </answer> no, <answer>  Two  Three </answer>") == "two three"
    assert A.parse_answer("the answer is saxophone") is None
    assert A.parse_answer("<answer> x </answer> after the end</s> <answer> y </answer>") == "x"


def test_ave_answers_to_ten_slots_and_the_original_gt_string():
    slots = A.parse_ave(README_AVE)
    assert slots == ["male speech, man speaking"] * 8 + [None, None]
    assert A.parse_ave("<event> Dog </event> and no range") is None
    assert A.parse_ave("<range> 1,2 </range> only") is None
    assert A.ave_slots("dog", (8, 14)) == [None] * 8 + ["dog", "dog"]  # clipped to 10 slots
    assert A.parse_ave_reference("event:Male speech, man speaking start_time:0 end_time:8</s>") == (
        "Male speech, man speaking", 0, 8)
    assert A.parse_ave_reference("Male speech 0 8") is None


def test_avvp_readme_tags_and_label_text():
    p = A.parse_avvp(README_AVVP)
    assert p.found and p.unknown == ()
    assert p.audio.shape == (len(A.LLP_CLASSES), A.AVVP_SEGMENTS)
    assert p.audio[row_of("Chainsaw")].tolist() == [1] * 10 and p.audio.sum() == 10
    assert p.visual[row_of("Chainsaw")].tolist() == [1] * 10 and p.visual.sum() == 10
    label = A.parse_avvp(README_AVVP_LABEL)
    assert label.audio[row_of("Chainsaw")].tolist() == [1] * 10
    assert label.visual[row_of("Chainsaw")].tolist() == [1, 0, 0, 1, 1, 1, 0, 0, 0, 1]


def test_avvp_renamed_tags_several_events_and_insensitive_class_names():
    text = ("<s><audio_event>Speech,(0 3),(5 7); baby cry, infant cry,(2 4)</audio_event>"
            "<visual_event>FRYING (food),(1 2) and Lawn mower,(3 4) and Space ship,(0 1)</visual_event></s>")
    p = A.parse_avvp(text)
    assert p.found
    assert p.audio[row_of("Speech")].tolist() == [1, 1, 1, 0, 0, 1, 1, 0, 0, 0]
    assert p.audio[row_of("Baby_cry_infant_cry")].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert p.visual[row_of("Frying_(food)")].tolist() == [0, 1] + [0] * 8
    assert p.visual[row_of("Lawn_mower")].tolist() == [0, 0, 0, 1] + [0] * 6
    assert p.unknown == ("Space ship",)  # reported, left out, no crash
    assert p.audio.sum() + p.visual.sum() == 5 + 2 + 1 + 1
    empty = A.parse_avvp("<s>no events here</s>")
    assert not empty.found and empty.audio.sum() == 0 and empty.visual.sum() == 0


def test_arig_boxes_and_objects():
    gt = "The sounding object is Dog. Its coordinates are <obj>(10,20)(100,200)</obj>.</s>"
    assert A.parse_box(gt) == (10, 20, 100, 200)
    assert A.parse_arig_object(gt) == "dog"
    train = ("The sounding object is male. Its coordinate of top left corner is (3,4) and coordinate of "
             "bottom right corner is (50,60)")
    assert A.parse_box(train) == (3, 4, 50, 60)
    assert A.parse_box("box [1,2,3,4]") == (1, 2, 3, 4)
    assert A.parse_box("only (1,2)") is None
    assert A.parse_arig_object("no object named") is None


def test_s4_category_sentence():
    text = ("<s>The object making the sound in the video is Female Singer. The mask of the object that makes the "
            "sound at the first second is <mask_start><mask_0><mask_end></s>")
    assert A.parse_s4_object(text) == "female singer"
    assert A.parse_s4_object("<mask_start><mask_0>") is None


def test_class_keys_are_case_space_underscore_insensitive():
    keys = {A.class_key(c) for c in A.LLP_CLASSES}
    assert len(keys) == len(A.LLP_CLASSES)
    assert A.class_key("Violin fiddle") == A.class_key("violin_FIDDLE") == A.class_key("Violin_fiddle")
    assert np.all([A.class_key(c) in keys for c in ("telephone bell ringing", "Acoustic guitar")])
