"""Prompts, chat template and tokenisation: released strings, the original's token ids."""

from __future__ import annotations

import re

import numpy as np
import pytest

from crab_jax.families.crab import prompts as P
from crab_jax.data.records.quick_start import quick_start_record
from crab_jax.data.records.record import Record
from crab_jax.data.errors import BadRecordError

# The free-text field of a quick-start request (the original's data/example.json), per task:
# the only text it carries besides media paths. Its value is read back from the fixture.
QUICK_START_FIELD = {"avqa": "question", "ref-avs": "exp"}
# Stands for that text while the template is rendered. It has no cased letters, so it comes
# out of the template as the request's words do (the Ref-AVS template writes ``exp.lower()``):
# the pattern around it is the template, and what it matches is the text the template wrote.
SENTINEL = "\x00#0#\x00"


def _tiny_tokenizer():
    """A word-level LLaMA-like tokenizer built here (no download): base words + Crab tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "[", "]", "INST", "/", "<", ">", "SYS", ":", ".", "This", "is", "a", "an",
             "video", "audio", "image", "The", "dog", "answer"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<s>", "</s>"]})
    return fast, len(words)


def _record(task, mode, **kw):
    return Record(family="crab", task=task, mode=mode, split=mode, source="t#0", **kw)


def test_released_strings_per_task():
    av, ia = P.H_AV, P.H_IA
    assert av == ("This is a video:\n<video_start><video><video_end>\n"
                  "This is an audio:\n<audio_start><audio><audio_end>\n")
    assert P.crab_instruction(_record("ave", "train")) == av + \
        "Please describe the events and time range that occurred in the video."
    assert P.crab_instruction(_record("avvp", "quick_start")).endswith(
        "information, as well as the start and end time of these events.")
    assert P.crab_instruction(_record("avcap", "test")) == av + "Please describe this video."
    assert P.crab_instruction(_record("arig", "test")) == ia + (
        "Please recognize the category of object that makes the sound and then output the location coordinates.")
    assert P.crab_instruction(_record("ms3", "test", frame_idx=4)).endswith("at the third second of the video.")
    assert P.crab_instruction(_record("avss", "train", frame_idx=9)).endswith("at the tenth second of the video.")
    ref = dict(fields={"exp": "The Dog"}, frame_idx=1)
    assert P.crab_instruction(_record("ref-avs", "train", **ref)) == av + \
        "Please segment out the dog at the second second in the video."
    assert P.crab_instruction(_record("ref-avs", "test", **ref)) == (
        av + "This is an image:\n<image_start><image><image_end>\nPlease segment out the corresponding object in "
        "the image based on the referential expression: The Dog")
    assert P.crab_instruction(_record("lvis_seg", "train", fields={"name": "cat", "def": "a feline"})) == (
        "This is an image:\n<image_start><image><image_end>\nPlease segment out the object that corresponding to "
        "the cat, a feline in the image.")
    with pytest.raises(BadRecordError, match="needs 'question'"):
        P.crab_instruction(_record("avqa", "train"))


def test_targets_and_chat_template():
    assert P.crab_target(_record("ave", "train"), "x .") == "x .</s>"
    assert P.crab_target(_record("audio_caption", "train"), "A dog.") == "A dog. </s>"  # pretraining: space
    assert P.llama2_chat("  hi\n") == "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nhi [/INST]"


def test_tokenize_pair_two_strings_and_labels():
    tok, base = _tiny_tokenizer()
    ids = P.add_multimodal_tokens(tok)
    assert list(ids.values()) == list(range(base, base + 17)) and ids["<mask_5>"] == base + 16
    out = P.tokenize_pair(tok, "<s>This is a video:<video_start><video><video_end>", "The dog.</s>")
    expected_prompt = [1, 12, 13, 14, 16, 10, ids["<video_start>"], ids["<video>"], ids["<video_end>"]]
    assert out.input_ids.tolist() == expected_prompt + [19, 20, 11, 2]
    assert out.labels.tolist() == [-100] * len(expected_prompt) + [19, 20, 11, 2]
    assert out.num_prompt_tokens == len(expected_prompt)
    assert P.tokenize_pair(tok, "<s>a", None).labels.tolist() == [-100, -100]


def test_add_multimodal_tokens_refuses_partial():
    tok, _ = _tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    with pytest.raises(ValueError, match="only some of Crab's added tokens"):
        P.add_multimodal_tokens(tok)


# ------------------------------------------------------------------------- parity


def _fixture_texts(manifest):
    cfg = manifest["fixtures"]["crab_full"]["config"]
    return cfg, cfg["texts"]


def _free_text(task: str, media: dict, instruction: str, where: str) -> dict:
    """``{field: text}`` of a quick-start request whose rendered instruction is ``instruction``:
    the text the template wrote where the request's own words go (empty for tasks without any)."""
    if task not in QUICK_START_FIELD:
        return {}
    field = QUICK_START_FIELD[task]
    probe = quick_start_record({"task": task, **media, field: SENTINEL}, where)
    rendered = P.llama2_chat(P.crab_instruction(probe))
    assert SENTINEL in rendered, f"{where} ({task}): the template rewrites its {field!r} beyond recognition"
    head, *rest = rendered.split(SENTINEL)  # the words may appear more than once: one group, back-references
    pattern = re.escape(head) + "".join(("(?P<free>.+)" if i == 0 else "(?P=free)") + re.escape(tail)
                                        for i, tail in enumerate(rest))
    match = re.fullmatch(pattern, instruction, flags=re.S)
    assert match, f"{where} ({task}): the fixture's instruction is not the {task} template"
    return {field: match.group("free")}


def test_free_text_is_found_through_a_template_that_rewrites_it():
    """Ref-AVS writes ``exp.lower()``: the expected text is derived as the template derives it."""
    media = {"image_path": "ref-avs/7.jpg", "audio_path": "ref-avs/audio.wav"}
    rendered = P.llama2_chat(P.crab_instruction(quick_start_record({"task": "ref-avs", **media, "exp": "The Red Car"},
                                                                   "r")))
    free = _free_text("ref-avs", media, rendered, "r")
    assert free == {"exp": "the red car"}
    rec = quick_start_record({"task": "ref-avs", **media, **free}, "r")
    assert P.llama2_chat(P.crab_instruction(rec)) == rendered


@pytest.mark.parity
def test_prompt_builder_reproduces_fixture_instructions(manifest):
    cfg, texts = _fixture_texts(manifest)
    for i, (task, media) in enumerate(zip(cfg["batch_tasks"], cfg["media"])):
        # the request's own words: read from the fixture, the template around them built
        free = _free_text(task, media, texts[i]["instruction"], f"media[{i}]")
        rec = quick_start_record({"task": task, **media, **free}, f"media[{i}]")
        assert P.llama2_chat(P.crab_instruction(rec)) == texts[i]["instruction"], f"sample {i} ({task})"


@pytest.mark.parity
@pytest.mark.parametrize("folder", ["tokenizer_mm", "tokenizer"])
def test_token_ids_and_labels_match_fixture(fixtures_dir, manifest, folder):
    """``tokenizer_mm`` has Crab's tokens; ``tokenizer`` is the base one, to which
    :func:`load_tokenizer` adds them in the original's order."""
    cfg, texts = _fixture_texts(manifest)
    tok = P.load_tokenizer(fixtures_dir / "crab_full" / folder)
    assert P.add_multimodal_tokens(tok) == cfg["special_token_ids"]
    assert tok.pad_token_id == cfg["pad_token_id"] and tok.padding_side == cfg["padding_side"]
    arrays = np.load(fixtures_dir / "crab_full" / "crab_full.npz")
    for i, text in enumerate(texts):
        out = P.tokenize_pair(tok, text["instruction"], text["output"])
        np.testing.assert_array_equal(out.input_ids, arrays[f"s{i}_input_ids"].reshape(-1), err_msg=f"s{i}")
        np.testing.assert_array_equal(out.labels, arrays[f"s{i}_labels"].reshape(-1), err_msg=f"s{i}")


@pytest.mark.parity
def test_chat_template_equals_tokenizer_template(fixtures_dir):
    tok = P.load_tokenizer(fixtures_dir / "crab_full" / "tokenizer_mm")
    instruction = P.H_IA + "Please segment out the object that makes the sound in the image.\n"
    messages = [{"role": "system", "content": P.SYSTEM_MESSAGE}, {"role": "user", "content": instruction}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == P.llama2_chat(instruction)
