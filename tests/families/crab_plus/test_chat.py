"""Crab+'s chat text (spec B.1) against the thinker_av fixture (the original processor's text,
input_ids and labels) and HF's chat template / placeholder expansion.

Every count comes from the fixture: per-item token counts from its grids and
``feature_attention_mask``, the merge size from the tiny model's preprocessor config.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.record import Record
from crab_jax.families.crab_plus import chat as C
from crab_jax.families.crab_plus.prompts import crab_plus_conversation
from crab_jax.families.crab_plus.tokens import ADDED_TOKENS
from tests.families.crab_plus.test_prompts import B3, TEST_TASKS, entry_for, read_one


@pytest.fixture(scope="module")
def av(crab_plus_fixtures_dir, crab_plus_manifest):
    """``(config, arrays, tokenizer, model dir)`` of thinker_av."""
    cfg = crab_plus_manifest["fixtures"]["thinker_av"]["config"]
    arrays = dict(np.load(crab_plus_fixtures_dir / "thinker_av" / "thinker_av.npz"))
    model_dir = crab_plus_fixtures_dir / "tiny_model" / "Qwen2.5-Omni-tiny"
    return cfg, arrays, C.load_tokenizer(model_dir), model_dir


def _merge_size(model_dir) -> int:
    return int(json.loads((model_dir / "preprocessor_config.json").read_text())["merge_size"])


def _items(conv, task, kind):
    """Media items of ``kind`` the processor receives (an a2v / v2a pair is one item)."""
    n = sum(1 for m in conv if not isinstance(m["content"], str) for it in m["content"] if it.get("type") == kind)
    paired = {"a2v": "video", "v2a": "audio"}.get(task)
    return min(n, 1) if kind == paired else n


def media_per_sample(cfg, arrays, merge_size) -> list[C.MediaTokens]:
    """Token counts per sample: the batch's grids / audio masks consumed in batch order."""
    grids = {k: iter(arrays.get(f"{k}_grid_thw", np.zeros((0, 3), np.int64))) for k in ("image", "video")}
    frames = iter(arrays["feature_attention_mask"].sum(-1))
    out = []
    for conv, task in zip(cfg["conversations"], cfg["tasks"]):
        out.append(C.MediaTokens(
            audio=[C.audio_tokens(next(frames)) for _ in range(_items(conv, task, "audio"))],
            image=[C.vision_tokens(next(grids["image"]), merge_size) for _ in range(_items(conv, task, "image"))],
            video=[C.vision_tokens(next(grids["video"]), merge_size) for _ in range(_items(conv, task, "video"))]))
    return out


def _check_sample(sample: C.ChatSample, cfg, arrays, i: int, tokenizer) -> None:
    n = int(arrays["sample_lengths"][i])
    assert sample.text == cfg["texts"][i]
    np.testing.assert_array_equal(sample.input_ids, arrays["input_ids"][i, :n])
    np.testing.assert_array_equal(sample.labels, arrays["labels"][i, :n])
    assert tokenizer.decode(sample.labels[sample.labels != -100]) == cfg["label_texts"][i]


def test_fixture_samples_from_conversations(av):
    cfg, arrays, tok, model_dir = av
    media = media_per_sample(cfg, arrays, _merge_size(model_dir))
    stats = C.LabelStats()
    samples = [C.tokenize_chat(tok, conv, media[i], task=cfg["tasks"][i], generation=False, stats=stats)
               for i, conv in enumerate(cfg["conversations"])]
    for i, sample in enumerate(samples):
        _check_sample(sample, cfg, arrays, i, tok)
    assert stats == C.LabelStats(samples=len(samples), unsupervised=0)
    batch = C.stack_samples(samples, cfg["pad_token_id"])
    for key in ("input_ids", "attention_mask", "labels"):
        np.testing.assert_array_equal(batch[key], arrays[key], err_msg=key)
    # negative control: one token too many for the first audio changes the ids
    wrong = C.MediaTokens(audio=[media[0].audio[0] + 1], image=media[0].image, video=media[0].video)
    assert len(C.tokenize_chat(tok, cfg["conversations"][0], wrong, task=cfg["tasks"][0],
                               generation=False).input_ids) != arrays["sample_lengths"][0]


def _entry_from_conversation(conv, task) -> dict:
    """The AV-UIE v2 train entry behind one of the fixture's conversations (B.3 fields; the
    media fields from its items, the target field from its assistant turn)."""
    root = f"AVUIE_2/{task}/"
    given = {B3[task].target: conv[2]["content"]}
    for item in conv[1]["content"]:
        kind = item["type"]
        if kind == "text":
            continue
        rel = item[kind][len(root):]
        assert item[kind].startswith(root), item
        if task in ("s4", "ms3", "ref_avs", "arig"):
            given[f"{kind}_path"] = rel
        else:
            assert rel.startswith(f"{kind}/"), rel
            given[f"{kind}_path"] = rel[len(kind) + 1:]
    return entry_for(task, "train", **given)


def test_fixture_samples_from_records(av, tmp_path):
    cfg, arrays, tok, model_dir = av
    media = media_per_sample(cfg, arrays, _merge_size(model_dir))
    for i, (conv, task) in enumerate(zip(cfg["conversations"], cfg["tasks"])):
        record = read_one(tmp_path / str(i), task, "train", _entry_from_conversation(conv, task))
        built = crab_plus_conversation(record)
        assert built == conv
        _check_sample(C.tokenize_chat(tok, built, media[i], task=task, generation=False, source=record.source),
                      cfg, arrays, i, tok)


def test_generation_prompt_is_the_training_prefix(av):
    cfg, arrays, tok, model_dir = av
    media = media_per_sample(cfg, arrays, _merge_size(model_dir))
    for i, conv in enumerate(cfg["conversations"]):
        gen = C.tokenize_chat(tok, conv[:2], media[i], task=cfg["tasks"][i], generation=True)
        assert gen.text.endswith("<|im_end|>\n<|im_start|>assistant\n") and gen.labels is None
        n = len(gen.input_ids)
        np.testing.assert_array_equal(gen.input_ids, arrays["input_ids"][i, :n])
        # B.1: supervision starts at the "\n" after "<|im_start|>assistant", the last token here
        labels = arrays["labels"][i]
        assert (labels[:n - 1] == -100).all() and labels[n - 1] == gen.input_ids[-1] == tok.encode("\n")[0]
        # ... through <|im_end|>; the trailing "\n" (and the padding) stays -100
        end = int(np.flatnonzero(labels != -100)[-1])
        assert arrays["input_ids"][i, end] == tok.convert_tokens_to_ids("<|im_end|>")
        assert arrays["input_ids"][i, end + 1] == tok.encode("\n")[0] and (labels[end + 1:] == -100).all()


def _task_conversations(tmp_path) -> list[tuple[str, list]]:
    out = []
    for task in B3:
        for mode in ("train",) + (("test",) if task in TEST_TASKS else ()):
            record = read_one(tmp_path / f"{task}_{mode}", task, mode, entry_for(task, mode))
            out.append((task, crab_plus_conversation(record)))
    return out


def test_template_matches_hf_jinja(av, tmp_path):
    cfg, _, tok, model_dir = av
    template = json.loads((model_dir / "chat_template.json").read_text())["chat_template"]
    convs = [c for c in cfg["conversations"]] + [c for _, c in _task_conversations(tmp_path)]
    convs.append(cfg["conversations"][0][1:])  # no system turn: the template's default one
    for conv in convs:
        for gen in (False, True):
            want = tok.apply_chat_template(conv, chat_template=template, tokenize=False, add_generation_prompt=gen)
            assert C.render_chat(conv, add_generation_prompt=gen) == want
    assert C.render_chat(convs[-1], add_generation_prompt=False).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")


def test_expansion_matches_hf_processor(av):
    # HF's Qwen2_5OmniProcessor.replace_multimodal_special_tokens (use_audio_in_video=False) on
    # the fixture's grids and audio lengths; the processor itself needs torchvision for its
    # video processor, so its method runs on the attributes it reads.
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor

    cfg, arrays, tok, model_dir = av
    merge = _merge_size(model_dir)
    owner = types.SimpleNamespace(image_processor=types.SimpleNamespace(merge_size=merge),
                                  video_processor=types.SimpleNamespace(merge_size=merge),
                                  audio_token=tok.audio_token, image_token=tok.image_token,
                                  video_token=tok.video_token)
    texts = [C.render_task_chat(c, t, add_generation_prompt=False)
             for c, t in zip(cfg["conversations"], cfg["tasks"])]
    mel = arrays["feature_attention_mask"].sum(-1)
    hf = Qwen2_5OmniProcessor.replace_multimodal_special_tokens(
        owner, texts, iter(((mel - 1) // 2 + 1 - 2) // 2 + 1), iter(arrays["image_grid_thw"]),
        iter(arrays["video_grid_thw"]), video_second_per_grid=iter(arrays["video_second_per_grid"]),
        use_audio_in_video=False, position_id_per_seconds=25, seconds_per_chunk=2)
    media = media_per_sample(cfg, arrays, merge)
    assert [C.expand_media(t, m) for t, m in zip(texts, media)] == hf == cfg["texts"]


def test_placeholder_strings_are_qwen_tokens():
    for token in (C.AUDIO, C.IMAGE, C.VIDEO, "<|audio_bos|>", "<|audio_eos|>", "<|vision_bos|>", "<|vision_eos|>",
                  "<|im_start|>", "<|im_end|>"):
        assert token in ADDED_TOKENS


@pytest.mark.parametrize("task", ["a2v", "v2a"])
def test_pair_keeps_only_the_last_placeholder(tmp_path, task):
    record = read_one(tmp_path, task, "test", entry_for(task, "test"))
    conv = crab_plus_conversation(record)
    text = C.render_task_chat(conv, task, add_generation_prompt=True)
    lead, instr = conv[1]["content"][0]["text"], conv[1]["content"][-1]["text"]
    media = {"a2v": "<|audio_bos|><|AUDIO|><|audio_eos|><|vision_bos|><|VIDEO|><|vision_eos|>",
             "v2a": "<|vision_bos|><|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>"}[task]
    assert f"<|im_start|>user\n{lead}{media}{instr}<|im_end|>\n<|im_start|>assistant\n" in text
    # negative control: the plain template keeps both placeholders
    both = C.render_chat(conv, add_generation_prompt=True)
    assert both.count(C.PAIRED_PLACEHOLDER[task]) == 2 and text.count(C.PAIRED_PLACEHOLDER[task]) == 1


def test_keep_last_placeholder_and_other_tasks():
    assert C.keep_last_placeholder("aXbXcXd", "X") == "abcXd"
    assert C.keep_last_placeholder("aXb", "X") == "aXb" and C.keep_last_placeholder("ab", "X") == "ab"
    conv = [{"role": "user", "content": [{"type": "video", "video": "1"}, {"type": "video", "video": "2"}]}]
    assert C.render_task_chat(conv, "ave", add_generation_prompt=False).count(C.VIDEO_PLACEHOLDER) == 2


def test_expand_media_refuses_mismatch():
    text = "x<|AUDIO|>y<|IMAGE|><|AUDIO|>"
    assert C.expand_media(text, C.MediaTokens(audio=[2, 1], image=[3])) == \
        "x<|AUDIO|><|AUDIO|>y<|IMAGE|><|IMAGE|><|IMAGE|><|AUDIO|>"
    with pytest.raises(ValueError, match="more <\\|AUDIO\\|> placeholders"):
        C.expand_media(text, C.MediaTokens(audio=[2], image=[3]))
    with pytest.raises(ValueError, match="without a placeholder"):
        C.expand_media(text, C.MediaTokens(audio=[2, 1], image=[3], video=[5]))


def test_label_rule_edge_cases(av):
    _, _, tok, _ = av
    header = tok.encode("<|im_start|>assistant", add_special_tokens=False)
    end = tok.encode("<|im_end|>", add_special_tokens=False)
    # no assistant header: a clear error naming the record, not a crash
    no_header = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    with pytest.raises(BadRecordError, match="ks/train.json#3.*<\\|im_start\\|>assistant"):
        C.tokenize_chat(tok, no_header, C.MediaTokens(), task="ks", generation=False, source="ks/train.json#3")
    # no <|im_end|> after the header: all -100, and counted
    ids = np.asarray(tok("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nan answer")["input_ids"])
    labels, supervised = C.assistant_labels(ids, header, end, source="s")
    assert not supervised and (labels == -100).all()
    # ... and through tokenize_chat, counted (a tokenizer whose <|im_end|> never occurs)
    class NoEnd:
        def __call__(self, text):
            return tok(text)

        def encode(self, text, add_special_tokens):
            return [-1] if text == "<|im_end|>" else tok.encode(text, add_special_tokens=add_special_tokens)

    record = Record(family="crab_plus", task="ks", mode="train", split="train", source="s", videos=("v",),
                    num_frames=10, audios=("a",), answer="ok")
    stats = C.LabelStats()
    for t in (tok, NoEnd()):
        out = C.tokenize_chat(t, crab_plus_conversation(record), C.MediaTokens(audio=[1], video=[1]), task="ks",
                              generation=False, stats=stats)
    assert not out.supervised and (out.labels == -100).all()
    assert stats == C.LabelStats(samples=2, unsupervised=1)
    # the first <|im_end|> at or after the header ends the span, a later turn is not supervised
    two = np.asarray(tok("<|im_start|>assistant\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n")["input_ids"])
    labels, _ = C.assistant_labels(two, header, end, source="s")
    stop = int(np.flatnonzero(two == end[0])[0]) + 1
    np.testing.assert_array_equal(labels[len(header):stop], two[len(header):stop])
    assert (labels[:len(header)] == -100).all() and (labels[stop:] == -100).all()


def test_load_tokenizer_refuses_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.load_tokenizer(tmp_path / "none")


def test_load_tokenizer_adds_the_tokens_to_a_word_tokenizer(tmp_path):
    """The synthetic data's word tokenizer has none of the added tokens: they are appended in
    the release's order right after its words; a folder with only some of them is refused."""
    from crab_jax.data.text.word_tokenizer import build_word_tokenizer

    build_word_tokenizer(["hello there assistant", "user system"], tmp_path / "w", ADDED_TOKENS)
    tok = C.load_tokenizer(tmp_path / "w")
    words = len(tok.get_vocab()) - len(ADDED_TOKENS)
    assert [tok.convert_tokens_to_ids(t) for t in ADDED_TOKENS] == list(range(words, words + len(ADDED_TOKENS)))
    ids = tok("<|im_start|>assistant\nhello<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<|im_start|>", "assistant", "hello", "<|im_end|>"]
    assert tok.eos_token_id == ids[-1]  # generation stops where the answer's labels end, as Qwen2.5-Omni's
    partial = tok.__class__.from_pretrained(tmp_path / "w")
    partial.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    partial.save_pretrained(tmp_path / "partial")
    with pytest.raises(ValueError, match="missing or out of order"):
        C.load_tokenizer(tmp_path / "partial")
