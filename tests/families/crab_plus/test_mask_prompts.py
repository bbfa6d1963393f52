"""Crab+'s SAM2 prompt rules (spec B.6; the original's inference_3.py / inference_ref_3.py)."""

import pytest

from crab_jax.families.crab_plus.mask_prompts import (IMAGE_SIZE, MaskPrompt, avs_prompt, mask_prompt,
                                                      parse_coordinates, ref_avs_prompt)
from crab_jax.families import get


def valid(box=None, points=()):
    return MaskPrompt(True, None, False, box, tuple(points))


# ------------------------------------------------------------------------------------ parsing

def test_parse_splits_boxes_and_points_in_order():
    boxes, points = parse_coordinates("a [1,2] b [3,4,50,60] c [5,6] [7,8,90,100] [9,10]")
    assert boxes == [(3, 4, 50, 60), (7, 8, 90, 100)]
    assert points == [(1, 2), (5, 6), (9, 10)]


@pytest.mark.parametrize("text", ["[1, 2]", "(1,2)", "[1,2,3]", "[-1,2]", "[1.5,2]", "no numbers"])
def test_parse_ignores_what_the_regex_does_not_match(text):
    assert parse_coordinates(text) == ([], [])


# ------------------------------------------------------------------------------------ S4 / MS3

@pytest.mark.parametrize("task", ["s4", "ms3"])
def test_avs_box_and_points_use_the_first_box_and_last_three_points(task):
    text = "[10,20,100,120] [1,1] [2,2] [3,3] [4,4] [5,6,70,80]"
    assert mask_prompt(task, text) == valid((10, 20, 100, 120), [(2, 2), (3, 3), (4, 4)])


@pytest.mark.parametrize("n", [1, 2])
def test_avs_box_with_fewer_points_keeps_them_all(n):
    pts = [(i * 10, i * 10 + 1) for i in range(1, n + 1)]
    text = "box [0,0,223,223] " + " ".join(f"[{x},{y}]" for x, y in pts)
    assert avs_prompt(text) == valid((0, 0, 223, 223), pts)


def test_avs_points_only_needs_three_and_takes_the_last_three():
    assert avs_prompt("[1,1] [2,2] [3,3] [4,4]") == valid(None, [(2, 2), (3, 3), (4, 4)])
    got = avs_prompt("[1,1] [2,2]")
    assert (got.valid, got.reason, got.points) == (False, "insufficient coordinates", ((1, 1), (2, 2)))


def test_avs_box_without_points_is_insufficient():
    got = avs_prompt("The sounding object is at [10,20,100,120].")
    assert (got.valid, got.reason, got.box) == (False, "insufficient coordinates", (10, 20, 100, 120))


def test_avs_no_match():
    assert avs_prompt("a dog barking") == MaskPrompt(False, "no coordinates", False, None, ())


def test_avs_cuts_at_the_end_of_text_marker():
    assert avs_prompt("[1,1] [2,2] </s> [3,3]").reason == "insufficient coordinates"
    assert avs_prompt("[1,1] [2,2] [3,3] </s> [4,4]") == valid(None, [(1, 1), (2, 2), (3, 3)])
    assert avs_prompt("</s> [1,1] [2,2] [3,3]").reason == "no coordinates"


@pytest.mark.parametrize("box, reason", [
    ((0, 0, IMAGE_SIZE, 100), "box out of range"),  # x2 == 224
    ((0, 0, 100, IMAGE_SIZE), "box out of range"),
    ((50, 0, 50, 100), "box out of range"),  # x1 == x2
    ((0, 60, 100, 50), "box out of range"),  # y1 > y2
    ((0, 0, 223, 223), None),
])
def test_avs_box_validation(box, reason):
    got = avs_prompt("[{},{},{},{}] [5,5]".format(*box))
    assert got.valid == (reason is None) and got.reason == reason


@pytest.mark.parametrize("point, ok", [((223, 0), True), ((224, 0), False), ((0, 224), False), ((0, 0), True)])
def test_avs_point_validation(point, ok):
    got = avs_prompt("[1,1] [2,2] [{},{}]".format(*point))
    assert got.valid == ok and got.reason == (None if ok else "point out of range")


def test_avs_out_of_range_point_before_the_last_three_is_ignored():
    assert avs_prompt("[999,1] [1,1] [2,2] [3,3]").valid


# ------------------------------------------------------------------------------------ Ref-AVS

def test_ref_avs_true_with_box_or_points():
    assert ref_avs_prompt("<answer>true</answer> [10,20,100,120]") == valid((10, 20, 100, 120))
    assert ref_avs_prompt("<answer>true</answer> [10,20]") == valid(None, [(10, 20)])
    got = ref_avs_prompt("<answer>true</answer> [1,1] [9,9,99,99] [2,2] [3,3] [4,4] [5,5,50,50]")
    assert got == valid((9, 9, 99, 99), [(2, 2), (3, 3), (4, 4)])


def test_ref_avs_false_is_a_valid_negative():
    assert ref_avs_prompt("<answer>false</answer>") == MaskPrompt(True, None, True, None, ())
    # false wins over true and coordinates in the same (cut) text
    assert ref_avs_prompt("<answer>true</answer> [1,2] <answer>false</answer>").negative
    # after </s>: the original still tests the whole text for false when the cut part fails
    assert ref_avs_prompt("<answer>true</answer></s><answer>false</answer>").negative
    # ... but a usable true answer before </s> is kept
    assert ref_avs_prompt("<answer>true</answer> [1,2]</s><answer>false</answer>") == valid(None, [(1, 2)])


def test_ref_avs_invalid_cases():
    assert ref_avs_prompt("<answer>true</answer> no coordinates") == MaskPrompt(False, "no coordinates", False,
                                                                                None, ())
    assert ref_avs_prompt("[10,20,100,120]").reason == "no <answer>true</answer>"
    assert ref_avs_prompt("[1,2] </s> <answer>true</answer>").reason == "no <answer>true</answer>"
    got = ref_avs_prompt("<answer>true</answer> [10,20,300,120]")
    assert (got.valid, got.reason, got.negative) == (False, "box out of range", False)


def test_tasks_without_masks_and_the_family_hook():
    assert mask_prompt("arig", "[1,1] [2,2] [3,3]") is None
    assert mask_prompt("avqa", "<answer>true</answer>") is None
    assert get("crab_plus").mask_prompts is mask_prompt
